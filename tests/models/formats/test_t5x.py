"""T5X checkpoints: the name and layout mapping (both layer layouts), mismatches named, the orbax
and msgpack readers, and the from-t5x command."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from models.formats import __main__ as cli
from models.formats import xt5
from models.formats.t5x import (
  config_from_t5x,
  load_t5x_checkpoint,
  params_from_t5x,
  params_to_t5x,
)
from models.formats.tree import CheckpointMismatchError, stack_layers
from tests.models.formats.conftest import (
  DECODER_ONLY,
  GATED,
  RELU_TIED,
  assert_trees_equal,
  random_params,
)


@pytest.mark.parametrize("cfg", [GATED, RELU_TIED, DECODER_ONLY], ids=["gated", "tied", "lm"])
def test_t5x_mapping_round_trip(cfg):
  params = random_params(cfg)
  H, K, D = cfg.num_heads, cfg.head_dim, cfg.d_model
  for scanned in (False, True):
    t5x = params_to_t5x(params, cfg, scanned=scanned)
    # T5X's own layout, checked by hand on a few leaves
    layer = "layers" if scanned else "layers_1"
    q = t5x["decoder"][layer]["self_attention"]["query"]["kernel"]
    o = t5x["decoder"][layer]["self_attention"]["out"]["kernel"]
    norm = t5x["decoder"][layer]["pre_mlp_layer_norm"]["scale"]
    if scanned:  # layer axis at position 1
      assert q.shape == (D, cfg.num_decoder_layers, H * K) and norm.shape == (D, 2)
      q, o, norm = q[:, 1], o[:, 1], norm[:, 1]
    ours = params["decoder"]["layers_1"]["self_attention"]
    assert q.shape == (D, H * K) and o.shape == (H * K, D)
    np.testing.assert_array_equal(q[:, 2 * K + 1], ours["query"][:, 2, 1])
    np.testing.assert_array_equal(o[1 * K + 3, :], ours["out"][1, 3, :])
    np.testing.assert_array_equal(
      norm, params["decoder"]["layers_1"]["pre_mlp_layer_norm"]["scale"]
    )
    mlp = t5x["decoder"][layer]["mlp"]
    assert ("wi" in mlp) == (cfg.mlp_activations == ("relu",))
    assert ("logits_dense" in t5x["decoder"]) == (not cfg.logits_via_embedding)
    assert ("encoder" in t5x) == (cfg.architecture == "encoder_decoder")
    # back, into both xt5 layouts, wrapped as a whole T5X checkpoint or not
    assert_trees_equal(params_from_t5x(t5x, cfg), params)
    scanned_cfg = cfg.replace(scan_layers=True)
    wrapped = {"target": t5x, "state": {"step": np.int32(3)}}
    assert_trees_equal(params_from_t5x(wrapped, scanned_cfg), stack_layers(params))
    assert config_from_t5x(wrapped) == cfg


def test_t5x_mismatch_is_named():
  t5x = params_to_t5x(random_params(GATED), GATED, scanned=True)
  del t5x["encoder"]["layers"]["mlp"]["wo"]
  t5x["decoder"]["layers"]["attention"] = {"query": {"kernel": np.zeros((24, 2, 12))}}
  with pytest.raises(CheckpointMismatchError) as e:
    params_from_t5x({"target": t5x}, GATED)
  msg = str(e.value)
  assert "encoder/layers/mlp/wo/kernel: expected shape (40, 3, 24)" in msg
  assert "decoder/layers/attention/query/kernel: shape (24, 2, 12)" in msg
  with pytest.raises(CheckpointMismatchError) as e:
    params_from_t5x(t5x, GATED.replace(num_decoder_layers=3))
  assert (
    "decoder/layers/self_attention/query/kernel: expected shape (24, 3, 12), found "
    "(24, 2, 12)" in str(e.value)
  )


def test_load_t5x_orbax_checkpoint(tmp_path):
  import orbax.checkpoint as ocp

  params = random_params(GATED)
  t5x = params_to_t5x(params, GATED, scanned=True)
  ckpt = tmp_path / "checkpoint_7"
  # saved as device arrays, one of them sharded over all devices (as a TPU-pod run writes it)
  saved = jax.tree_util.tree_map(jax.numpy.asarray, t5x)
  mesh = jax.make_mesh((len(jax.devices()),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  saved["token_embedder"]["embedding"] = jax.device_put(
    t5x["token_embedder"]["embedding"],
    jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None)),
  )
  ocp.PyTreeCheckpointer().save(str(ckpt), {"target": saved, "state": {"step": np.int32(7)}})
  tree = load_t5x_checkpoint(str(ckpt))
  assert int(tree["state"]["step"]) == 7
  assert isinstance(tree["target"]["token_embedder"]["embedding"], np.ndarray)
  assert_trees_equal(params_from_t5x(tree, GATED), params)
  # the command line: shapes read off the checkpoint, or a config file (json or gin)
  assert cli.main(["from-t5x", str(ckpt), str(tmp_path / "a")]) == 0
  cfg_a, got = xt5.load_checkpoint(str(tmp_path / "a"))
  assert cfg_a == GATED
  assert_trees_equal(got, params)
  xt5.write_config_files(GATED, str(tmp_path / "cfg"))
  for name in ("config.json", "model.gin"):
    out = tmp_path / f"b_{name}"
    assert (
      cli.main(
        ["from-t5x", str(ckpt), str(out), "--config", str(tmp_path / "cfg" / name), "--scan_layers"]
      )
      == 0
    )
    cfg_b, got = xt5.load_checkpoint(str(out))
    assert cfg_b == GATED.replace(scan_layers=True)
    assert_trees_equal(got, stack_layers(params))


def test_load_t5x_msgpack_checkpoint(tmp_path):
  """The pre-orbax T5X format: msgpack `checkpoint` file, big leaves as tensorstore specs."""
  import tensorstore as ts
  from flax import serialization

  params = random_params(RELU_TIED)
  t5x = params_to_t5x(params, RELU_TIED)
  emb = t5x["token_embedder"]["embedding"]
  name = "target.token_embedder.embedding"
  spec = {
    "driver": "zarr",
    "kvstore": {"driver": "file", "path": name},
    "metadata": {
      "shape": list(emb.shape),
      "chunks": [16, 24],
      "dtype": "<f4",
      "compressor": {"id": "gzip"},
    },
  }
  written = dict(spec, kvstore={"driver": "file", "path": str(tmp_path / name)})
  ts.open(written, create=True).result().write(emb).result()
  t5x["token_embedder"]["embedding"] = spec
  blob = serialization.msgpack_serialize(
    {"version": 3, "optimizer": {"target": t5x, "state": {"step": 11}}}
  )
  (tmp_path / "checkpoint").write_bytes(blob)
  tree = load_t5x_checkpoint(str(tmp_path))
  assert tree["optimizer"]["state"]["step"] == 11
  assert_trees_equal(params_from_t5x(tree, RELU_TIED), params)
  assert config_from_t5x(tree) == RELU_TIED

  (tmp_path / "checkpoint").write_bytes(b"\xc1 not msgpack")
  with pytest.raises(
    ValueError, match=f"cannot read T5X msgpack checkpoint file {tmp_path / 'checkpoint'}"
  ):
    load_t5x_checkpoint(str(tmp_path))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="not a T5X checkpoint"):
    load_t5x_checkpoint(str(tmp_path / "empty"))
