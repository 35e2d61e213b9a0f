"""bench.scale: per-device param bytes match the rules' expectation, no param the rules shard
stays replicated, and the CLI compiles a tiny config and ends with its JSON line."""

import json

import flax.linen as nn
import jax
import pytest
from jax.sharding import PartitionSpec as P

from bench import scale
from models import partitioning
from models.config import T5Config
from models.network import Transformer
from trainer import loop, optimizers
from trainer import state as state_lib

# Dims divisible by 8 and by 4 x 2, so every rule applies as written (no shape fallback).
TINY = T5Config(
  vocab_size=128,
  d_model=32,
  num_heads=8,
  head_dim=4,
  d_ff=64,
  num_encoder_layers=2,
  num_decoder_layers=2,
  scan_layers=True,
)
MESHES = {"fsdp": {"data": 8, "model": 1}, "2d": {"data": 4, "model": 2}}


def _placed(rules):
  placement = partitioning.Placement(partitioning.make_mesh(MESHES[rules]), rules)
  module = Transformer(TINY)
  opt = loop.OptimizerConfig()
  tx = optimizers.make_optimizer(opt.optimizer, opt.learning_rate, opt.clip_grad_norm)
  example = scale.model_features(TINY, (16, 8), placement.data_parallel_size)
  shardings = state_lib.state_shardings(module, tx, example, placement)
  return placement, partitioning.abstract_params(module, example), shardings


@pytest.mark.parametrize("rules", ["fsdp", "2d"])
def test_per_device_param_bytes_match_expectation(rules):
  placement, boxed, shardings = _placed(rules)
  report = scale.param_report(boxed, shardings["params"], placement)
  # every param of this model has a dim over all 8 devices (fsdp: embed or heads over data;
  # 2d: embed over data and heads/mlp/vocab over model, layer norms and relpos partly)
  if rules == "fsdp":
    assert report["expected"] == pytest.approx(report["total"] / 8)
  assert report["per_device"] == pytest.approx(report["expected"], rel=0.05)
  assert report["per_device"] < report["total"] / 3
  assert report["fallback"] == 0


@pytest.mark.parametrize("rules", ["fsdp", "2d"])
def test_no_param_left_replicated_where_a_rule_shards_it(rules):
  placement, boxed, shardings = _placed(rules)
  is_spec = lambda x: isinstance(x, P)  # noqa: E731
  by_name = jax.tree.leaves(scale.by_name_specs(boxed, placement), is_leaf=is_spec)
  boxes = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  actual = jax.tree.leaves(shardings["params"])
  assert len(by_name) == len(boxes) == len(actual) > 0
  for box, want, got in zip(boxes, by_name, actual, strict=True):
    want = tuple(want) + (None,) * (len(box.value.shape) - len(want))
    got_spec = tuple(got.spec) + (None,) * (len(box.value.shape) - len(got.spec))
    assert got_spec == want, (box.names, box.value.shape)
    if any(a is not None for a in want):
      assert not got.is_fully_replicated, box.names


def test_cli_compiles_a_tiny_config_and_ends_with_json(capsys):
  rows = scale.main(
    ["--devices", "8", "--families", "t5_1_1", "--sizes", "tiny", "--rules", "fsdp"]
    + ["--lengths", "8,4"]
  )
  lines = capsys.readouterr().out.strip().splitlines()
  result = json.loads(lines[-1])
  assert result["bench"] == "scale" and len(result["rows"]) == len(rows) == 1
  row = rows[0]
  assert row["mesh"] == "data8" and row["batch"] == 8
  assert row["param_bytes"] == pytest.approx(row["total_param_bytes"] / 8, rel=0.05)
  assert row["temp_bytes"] > 0 and row["fits_gib"] == list(scale.CHIPS_GIB)
  # FSDP gathers params for the forward pass and reduces gradients
  assert row["collectives"]["all-gather"]["count"] > 0
  assert result["rows"][0]["collectives"]["all-gather"] > 0
