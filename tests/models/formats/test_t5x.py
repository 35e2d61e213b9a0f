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
  UMT5,
  assert_trees_equal,
  random_params,
)


@pytest.mark.parametrize(
  "cfg", [GATED, RELU_TIED, DECODER_ONLY, UMT5], ids=["gated", "tied", "lm", "umt5"]
)
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


def test_t5x_has_no_mrt5_gate_and_says_so():
  gated = GATED.replace(delete_gate_layer=1)
  t5x = params_to_t5x(random_params(GATED), GATED)
  with pytest.raises(ValueError, match="T5X has no MrT5 delete gate.*add_delete_gate"):
    params_from_t5x(t5x, gated)
  with pytest.raises(ValueError, match="T5X has no MrT5 delete gate"):
    params_to_t5x(random_params(gated), gated)


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


# ----------------------------------------------------------------------------------------------
# T5X's scalable T5 (umT5): 3-D attention kernels, a relpos_bias in every layer, scanned stacks
# named after the stack.


def _names(tree, prefix=""):
  return {
    n
    for k, v in tree.items()
    for n in (_names(v, f"{prefix}{k}/") if isinstance(v, dict) else [f"{prefix}{k}"])
  }


def test_scalable_t5_names_and_layout():
  params = random_params(UMT5)
  H, K, D, B = UMT5.num_heads, UMT5.head_dim, UMT5.d_model, 32
  enc_layer = {
    "attention/query/kernel",
    "attention/key/kernel",
    "attention/value/kernel",
    "attention/out/kernel",
    "mlp/wi_0/kernel",
    "mlp/wi_1/kernel",
    "mlp/wo/kernel",
    "pre_attention_layer_norm/scale",
    "pre_mlp_layer_norm/scale",
    "relpos_bias/rel_embedding",
  }
  ours = params["encoder"]["layers_1"]
  for scanned in (False, True):
    t5x = params_to_t5x(params, UMT5, scanned=scanned, scalable=True)
    layer = "encoder" if scanned else "layers_1"  # scanned: encoder/encoder/..., layer axis 1
    names = _names(t5x)
    assert {n.split("/", 2)[2] for n in names if n.startswith(f"encoder/{layer}/")} == enc_layer
    assert "encoder/relpos_bias/rel_embedding" not in names
    rel = t5x["encoder"][layer]["relpos_bias"]["rel_embedding"]
    q = t5x["encoder"][layer]["attention"]["query"]["kernel"]
    o = t5x["encoder"][layer]["attention"]["out"]["kernel"]
    if scanned:
      assert rel.shape == (H, 3, B) and q.shape == (D, 3, H, K) and o.shape == (H, 3, K, D)
      rel, q, o = rel[:, 1], q[:, 1], o[:, 1]
    assert rel.shape == (H, B) and q.shape == (D, H, K) and o.shape == (H, K, D)
    np.testing.assert_array_equal(rel, ours["relpos_bias"]["rel_embedding"])
    np.testing.assert_array_equal(q, ours["attention"]["query"])
    np.testing.assert_array_equal(o, ours["attention"]["out"])
    # read back into both xt5 layouts; the config is read off the names and shapes
    wrapped = {"target": t5x, "state": {"step": np.int32(1)}}
    assert_trees_equal(params_from_t5x(wrapped, UMT5), params)
    assert_trees_equal(params_from_t5x(t5x, UMT5.replace(scan_layers=True)), stack_layers(params))
    assert config_from_t5x(wrapped) == UMT5
  # 3-D kernels and one bias per stack: head_dim and the bias are each read as they are
  assert config_from_t5x(params_to_t5x(random_params(GATED), GATED, True, True)) == GATED


def test_per_layer_mismatch_is_named():
  t5 = params_to_t5x(random_params(GATED), GATED, scanned=True)
  with pytest.raises(CheckpointMismatchError) as e:  # a T5 checkpoint under a umT5 config
    params_from_t5x(t5, UMT5)
  msg = str(e.value)
  assert "encoder/layers/relpos_bias/rel_embedding: expected shape (3, 3, 32)" in msg
  assert "encoder/relpos_bias/rel_embedding: shape (3, 32)" in msg
  umt5 = params_to_t5x(random_params(UMT5), UMT5, scanned=True, scalable=True)
  del umt5["decoder"]["decoder"]["relpos_bias"]
  with pytest.raises(CheckpointMismatchError) as e:
    params_from_t5x(umt5, UMT5)
  assert "decoder/decoder/relpos_bias/rel_embedding: expected shape (3, 2, 32)" in str(e.value)


def test_from_t5x_reads_a_umt5_checkpoint(tmp_path):
  import orbax.checkpoint as ocp

  params = random_params(UMT5)
  ckpt = tmp_path / "checkpoint_1000000"
  target = params_to_t5x(params, UMT5, scanned=True, scalable=True)
  ocp.PyTreeCheckpointer().save(str(ckpt), {"target": target, "state": {"step": np.int32(1)}})
  assert cli.main(["from-t5x", str(ckpt), str(tmp_path / "out")]) == 0
  cfg, got = xt5.load_checkpoint(str(tmp_path / "out"))
  assert cfg == UMT5
  assert_trees_equal(got, params)
