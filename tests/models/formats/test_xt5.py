"""xt5 checkpoints: config files that reload (json and gin), orbax save/load across layer
layouts and shardings, errors naming the checkpoint and tensors."""

from __future__ import annotations

import json
import os

import jax
import pytest

from models.config import T5Config
from models.formats import tree, xt5
from tests.models.formats.conftest import GATED, RELU_TIED, assert_trees_equal, random_params


def test_checkpoint_config_files_reload(tmp_path):
  gin = pytest.importorskip("gin")
  cfg = GATED.replace(scan_layers=True, dtype="bfloat16", mlp_activations=("silu", "linear"))
  xt5.save_checkpoint(str(tmp_path), cfg, random_params(cfg))
  assert sorted(os.listdir(tmp_path)) == ["config.json", "model.gin", "params"]
  assert T5Config.from_dict(json.loads((tmp_path / "config.json").read_text())) == cfg
  text = (tmp_path / "model.gin").read_text()
  assert "from __gin__ import dynamic_registration" in text
  assert "MODEL_CONFIG = @model_config.T5Config()" in text
  assert "model_config.T5Config.mlp_activations = ('silu', 'linear')" in text
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([str(tmp_path / "model.gin")], [])
    parsed = gin.query_parameter("MODEL_CONFIG/gin.macro.value").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert parsed == cfg


def test_save_load_params_layouts_and_shardings(tmp_path):
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  params = random_params(GATED)
  xt5.save_checkpoint(str(tmp_path / "ck"), GATED, params)
  cfg, got = xt5.load_checkpoint(str(tmp_path / "ck"))
  assert cfg == GATED
  assert_trees_equal(got, params)
  assert isinstance(got["token_embedder"]["embedding"], jax.Array)
  # the other layer layout is converted on load
  scanned = xt5.load_params(str(tmp_path / "ck" / "params"), GATED.replace(scan_layers=True))
  assert_trees_equal(scanned, tree.stack_layers(params))
  xt5.save_params(scanned, str(tmp_path / "scanned"))
  assert_trees_equal(xt5.load_params(str(tmp_path / "scanned"), GATED), params)
  # restored straight onto shardings
  mesh = jax.make_mesh((len(jax.devices()),), ("model",), axis_types=(AxisType.Auto,))
  shardings = jax.tree_util.tree_map(lambda _: NamedSharding(mesh, P()), params)
  shardings["token_embedder"]["embedding"] = NamedSharding(mesh, P("model", None))
  got = xt5.load_params(str(tmp_path / "ck"), GATED, shardings)
  assert got["token_embedder"]["embedding"].sharding == shardings["token_embedder"]["embedding"]
  assert_trees_equal(got, params)


def test_an_mrt5_checkpoint_loads_in_either_layer_layout(tmp_path):
  cfg = GATED.replace(delete_gate_layer=1)
  params = random_params(cfg)
  xt5.save_params(params, str(tmp_path / "unrolled"))
  scanned = xt5.load_params(str(tmp_path / "unrolled"), cfg.replace(scan_layers=True))
  assert_trees_equal(scanned, tree.stack_layers(params, 1))
  xt5.save_params(scanned, str(tmp_path / "scanned"))
  assert_trees_equal(xt5.load_params(str(tmp_path / "scanned"), cfg), params)


def test_load_params_errors(tmp_path):
  xt5.save_checkpoint(str(tmp_path / "ck"), GATED, random_params(GATED))
  with pytest.raises(tree.CheckpointMismatchError) as e:
    xt5.load_params(str(tmp_path / "ck"), GATED.replace(d_ff=48))
  msg = str(e.value)
  assert "xt5 checkpoint" in msg and str(tmp_path / "ck" / "params") in msg
  assert "encoder/layers_0/mlp/wi_0: expected shape (24, 48), found (24, 40)" in msg
  with pytest.raises(tree.CheckpointMismatchError, match="params to save"):
    xt5.save_checkpoint(str(tmp_path / "bad"), RELU_TIED, random_params(GATED))
  with pytest.raises(FileNotFoundError):
    xt5.load_params(str(tmp_path / "nothing"), GATED)
  (tmp_path / "ck" / "params" / "_METADATA").write_text("{corrupt")
  with pytest.raises(ValueError, match=f"cannot read xt5 checkpoint {tmp_path / 'ck' / 'params'}"):
    xt5.load_params(str(tmp_path / "ck"), GATED)
