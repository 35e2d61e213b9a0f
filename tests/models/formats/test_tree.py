"""The params tree every format targets: shapes from the model, restore targets, flat views, layer
layouts, leaf transforms and the mismatch errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from models import partitioning
from models.formats import tree
from models.network import Transformer
from tests.models.formats.conftest import (
  DECODER_ONLY,
  GATED,
  RELU_TIED,
  UMT5,
  assert_trees_equal,
  random_params,
)


@pytest.mark.parametrize("cfg", [GATED, RELU_TIED, DECODER_ONLY], ids=["gated", "tied", "lm"])
def test_param_shapes_are_the_models_abstract_params(cfg):
  batch = {
    "encoder_input_tokens": np.ones((2, 5), np.int32),
    "decoder_input_tokens": np.ones((2, 3), np.int32),
  }
  boxed = partitioning.abstract_params(Transformer(cfg), batch)
  want = jax.tree.map(lambda s: (s.shape, s.dtype), partitioning.unbox(boxed))
  assert jax.tree.map(lambda s: (s.shape, s.dtype), tree.param_shapes(cfg)) == want
  assert tree.is_scanned(tree.param_shapes(cfg.replace(scan_layers=True)))
  assert not tree.is_scanned(tree.param_shapes(cfg))


def test_abstract_target_is_float32_on_the_shardings():
  first = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  for shardings in (None, first, jax.tree.map(lambda _: first, tree.param_shapes(GATED))):
    target = tree.abstract_target(GATED, shardings)
    leaves = jax.tree.leaves(target)
    assert len(leaves) == len(jax.tree.leaves(tree.param_shapes(GATED)))
    assert all(x.dtype == np.float32 and x.sharding == first for x in leaves)
  tree.check_params(target, GATED)


def test_flatten_unflatten_and_layer_layouts():
  params = random_params(GATED)
  flat = tree.flatten(params)
  assert ("decoder", "layers_1", "mlp", "wo") in flat
  assert_trees_equal(tree.unflatten(flat), params)
  assert tree.path_str(("decoder", "layers_1", "mlp", "wo")) == "decoder/layers_1/mlp/wo"
  scanned = tree.stack_layers(params)
  assert tree.is_scanned(scanned) and not tree.is_scanned(params)
  assert scanned["encoder"]["layers"]["mlp"]["wo"].shape == (3, 40, 24)
  tree.check_params(scanned, GATED.replace(scan_layers=True))
  assert_trees_equal(tree.unstack_layers(scanned), params)
  with pytest.raises(tree.CheckpointMismatchError, match=r"not numbered 0..n-1: \[0, 2\]"):
    tree.stack_layers({"layers_0": {"w": np.ones(2)}, "layers_2": {"w": np.ones(2)}})
  with pytest.raises(tree.CheckpointMismatchError, match="disagree on the layer count"):
    tree.unstack_layers({"layers": {"a": np.ones((2, 3)), "b": np.ones((3, 3))}})


@pytest.mark.parametrize("gate_layer", [0, 1, 2])
@pytest.mark.parametrize("base", [GATED, UMT5], ids=["t5", "umt5"])
def test_an_mrt5_encoder_stacks_in_two_scans_around_its_gate(base, gate_layer):
  """A gated encoder's scanned layout is `layers` (before the gate) + `layers_after_gate`,
  exactly what the scanned model initialises; the decoder stays one `layers`."""
  cfg = base.replace(delete_gate_layer=gate_layer)
  params = random_params(cfg)
  scanned = tree.stack_layers(params, gate_layer)
  tree.check_params(scanned, cfg.replace(scan_layers=True))
  enc = scanned["encoder"]
  assert ("layers" in enc) == (gate_layer > 0)
  assert enc["layers_after_gate"]["mlp"]["wo"].shape == (3 - gate_layer, 40, 24)
  assert scanned["decoder"]["layers"]["mlp"]["wo"].shape == (2, 40, 24)
  np.testing.assert_array_equal(
    enc["layers_after_gate"]["mlp"]["wo"][0], params["encoder"][f"layers_{gate_layer}"]["mlp"]["wo"]
  )
  assert tree.is_scanned(scanned)
  assert_trees_equal(tree.unstack_layers(scanned), params)
  # a gateless tree ignores gate_layer
  plain = random_params(base)
  assert_trees_equal(tree.stack_layers(plain, gate_layer), tree.stack_layers(plain))


@pytest.mark.parametrize("kind", ["id", "T", "qkv", "out", "hf_qkv", "hf_out"])
def test_leaf_transforms_invert(kind):
  shape = {"qkv": (5, 3, 4), "hf_qkv": (5, 3, 4), "out": (3, 4, 5), "hf_out": (3, 4, 5)}.get(
    kind, (6, 5)
  )
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  foreign = tree.from_xt5(kind, x)
  assert foreign.shape == tree.foreign_shape(kind, shape)
  np.testing.assert_array_equal(tree.to_xt5(kind, foreign, shape), x)
  assert tree.f32(x.astype(np.float16)).dtype == np.float32


def test_check_params_names_every_mismatch():
  params = random_params(GATED)
  tree.check_params(params, GATED)
  del params["decoder"]["layers_0"]["mlp"]["wo"]
  params["encoder"]["layers_2"]["mlp"]["wi_0"] = np.zeros((24, 7))
  params["extra"] = np.zeros(3)
  with pytest.raises(tree.CheckpointMismatchError) as e:
    tree.check_params(params, GATED, "my params")
  msg = str(e.value)
  assert msg.startswith("my params does not match the config:")
  assert "missing tensors (1):\n    decoder/layers_0/mlp/wo: expected shape (40, 24)" in msg
  assert "encoder/layers_2/mlp/wi_0: expected shape (24, 40), found (24, 7)" in msg
  assert "unexpected tensors (1):\n    extra: shape (3,)" in msg
  many = tree.mismatch_message("x", [(f"t{i}", (1,)) for i in range(45)], [], [])
  assert "... and 5 more" in many
