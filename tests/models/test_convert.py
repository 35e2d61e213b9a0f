"""Checkpoint conversion plumbing: error messages, T5X mapping and loaders, config files, orbax
save/load. (Numerical parity with Hugging Face lives in test_hf_parity.py.)"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from models import checkpoint, convert
from models.config import T5Config

GATED = T5Config(
  vocab_size=64,
  d_model=24,
  num_heads=3,
  head_dim=4,
  d_ff=40,
  num_encoder_layers=3,
  num_decoder_layers=2,
  dropout_rate=0.0,
  dtype="float32",
)
RELU_TIED = GATED.replace(
  mlp_activations=("relu",), logits_via_embedding=True, num_encoder_layers=2
)
DECODER_ONLY = GATED.replace(architecture="decoder_only", num_encoder_layers=0)


def random_params(cfg: T5Config, seed: int = 0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
    lambda s: rng.standard_normal(s.shape).astype(np.float32), convert.param_shapes(cfg)
  )


def assert_trees_equal(a, b):
  fa, fb = convert._flatten(a), convert._flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


# ----------------------------------------------------------------------------------------------
# HF state dicts: mismatches are named with their shapes


def test_hf_state_dict_errors_name_tensors_and_shapes():
  sd = convert.params_to_hf_state_dict(random_params(GATED), GATED)
  assert "lm_head.weight" in sd and "encoder.block.0.layer.1.DenseReluDense.wi_1.weight" in sd
  del sd["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
  sd["decoder.block.0.layer.1.EncDecAttention.q.weight"] = np.zeros((7, 24), np.float32)
  sd["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = np.zeros((32, 3))
  with pytest.raises(convert.CheckpointMismatchError) as e:
    convert.params_from_hf_state_dict(sd, GATED)
  msg = str(e.value)
  assert "missing tensors (1)" in msg
  assert "encoder.block.1.layer.1.DenseReluDense.wo.weight: expected shape (24, 40)" in msg
  assert (
    "decoder.block.0.layer.1.EncDecAttention.q.weight: expected shape (12, 24), found (7, 24)"
  ) in msg
  assert (
    "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight: shape (32, 3)" in msg
  )


def test_hf_state_dict_for_another_config_is_rejected():
  sd = convert.params_to_hf_state_dict(random_params(GATED), GATED)
  with pytest.raises(convert.CheckpointMismatchError) as e:  # ReLU, tied, 2 encoder layers
    convert.params_from_hf_state_dict(sd, GATED.replace(mlp_activations=("relu",)))
  msg = str(e.value)
  assert "encoder.block.0.layer.1.DenseReluDense.wi.weight: expected shape (40, 24)" in msg
  assert "encoder.block.0.layer.1.DenseReluDense.wi_0.weight: shape (40, 24)" in msg


def test_hf_state_dict_round_trip_and_aliases():
  params = random_params(RELU_TIED)
  sd = convert.params_to_hf_state_dict(params, RELU_TIED)
  assert "lm_head.weight" not in sd
  assert_trees_equal(convert.params_from_hf_state_dict(sd, RELU_TIED), params)
  # HF files may carry the embedding under its tied aliases, and lm_head equal to shared
  shared = sd.pop("shared.weight")
  sd["encoder.embed_tokens.weight"] = sd["decoder.embed_tokens.weight"] = shared
  sd["lm_head.weight"] = shared.copy()
  # original T5 checkpoints carry a cross-attention bias HF ignores
  sd["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = np.ones((32, 3))
  assert_trees_equal(convert.params_from_hf_state_dict(sd, RELU_TIED), params)
  sd["lm_head.weight"] = shared + 1  # a real untied head under a tied config: refuse
  with pytest.raises(convert.CheckpointMismatchError, match="lm_head.weight differs"):
    convert.params_from_hf_state_dict(sd, RELU_TIED)


def test_hf_config_round_trip():
  for cfg in (GATED, RELU_TIED, GATED.replace(mlp_activations=("silu", "linear"))):
    d = convert.hf_config_dict(cfg)
    assert (d["decoder_start_token_id"], d["pad_token_id"], d["eos_token_id"]) == (0, 0, 1)
    assert convert.config_from_hf(d) == cfg
  assert convert.hf_config_dict(GATED)["feed_forward_proj"] == "gated-gelu"
  assert convert.hf_config_dict(RELU_TIED)["tie_word_embeddings"] is True
  base = {
    k: v
    for k, v in convert.hf_config_dict(GATED).items()
    if k not in ("tie_word_embeddings", "scale_decoder_outputs")
  }
  # transformers 4.x configs say tie_word_embeddings (default True); 5.x scale_decoder_outputs.
  assert convert.config_from_hf(base).logits_via_embedding
  assert not convert.config_from_hf({**base, "tie_word_embeddings": False}).logits_via_embedding
  assert not convert.config_from_hf(
    {**base, "tie_word_embeddings": True, "scale_decoder_outputs": False}
  ).logits_via_embedding
  assert convert.config_from_hf(base, scan_layers=True).scan_layers
  with pytest.raises(ValueError, match="feed_forward_proj='gelu'"):
    convert.config_from_hf({**base, "feed_forward_proj": "gelu"})
  with pytest.raises(ValueError, match="encoder_decoder"):
    convert.hf_config_dict(DECODER_ONLY)


def test_hf_config_object():
  transformers = pytest.importorskip("transformers")
  for cfg in (GATED, RELU_TIED):
    hf = transformers.T5Config(**convert.hf_config_dict(cfg))
    assert convert.config_from_hf(hf) == cfg


# ----------------------------------------------------------------------------------------------
# HF files


def _write_hf_dir(directory, cfg, params):
  os.makedirs(directory, exist_ok=True)
  convert.save_hf(params, cfg, str(directory))


def test_corrupt_or_missing_hf_files_are_named(tmp_path, capsys):
  hf_dir = tmp_path / "hf"
  _write_hf_dir(hf_dir, GATED, random_params(GATED))
  weights = hf_dir / convert.HF_WEIGHTS_SAFETENSORS
  weights.write_bytes(b"\x00garbage" * 10)
  with pytest.raises(ValueError, match=f"cannot read safetensors file {weights}"):
    convert.load_hf(str(hf_dir))
  assert convert.main(["from-hf", str(hf_dir), str(tmp_path / "out")]) == 1
  assert str(weights) in capsys.readouterr().err
  assert not (tmp_path / "out").exists()

  weights.unlink()
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    convert.load_hf(str(hf_dir))
  pytest.importorskip("torch")
  (hf_dir / convert.HF_WEIGHTS_BIN).write_bytes(b"not a torch file")
  with pytest.raises(
    ValueError, match=f"cannot read torch checkpoint file {hf_dir / convert.HF_WEIGHTS_BIN}"
  ):
    convert.load_hf(str(hf_dir))
  (hf_dir / "config.json").write_text("{oops")
  with pytest.raises(ValueError, match="cannot read HF config"):
    convert.load_hf(str(hf_dir))


def test_bf16_safetensors(tmp_path):
  torch = pytest.importorskip("torch")
  from safetensors.torch import save_file

  params = random_params(GATED)
  sd = convert.params_to_hf_state_dict(params, GATED)
  bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in sd.items()}
  _write_hf_dir(tmp_path, GATED, params)
  save_file(bf16, str(tmp_path / convert.HF_WEIGHTS_SAFETENSORS))
  cfg, got = convert.load_hf(str(tmp_path))
  assert cfg == GATED
  want = convert.params_from_hf_state_dict({k: v.float().numpy() for k, v in bf16.items()}, cfg)
  assert_trees_equal(got, want)
  assert got["decoder"]["logits_dense"].dtype == np.float32


# ----------------------------------------------------------------------------------------------
# T5X


@pytest.mark.parametrize("cfg", [GATED, RELU_TIED, DECODER_ONLY], ids=["gated", "tied", "lm"])
def test_t5x_mapping_round_trip(cfg):
  params = random_params(cfg)
  H, K, D = cfg.num_heads, cfg.head_dim, cfg.d_model
  for scanned in (False, True):
    t5x = convert.params_to_t5x(params, cfg, scanned=scanned)
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
    assert_trees_equal(convert.params_from_t5x(t5x, cfg), params)
    scanned_cfg = cfg.replace(scan_layers=True)
    wrapped = {"target": t5x, "state": {"step": np.int32(3)}}
    assert_trees_equal(convert.params_from_t5x(wrapped, scanned_cfg), convert.stack_layers(params))
    assert convert.config_from_t5x(wrapped) == cfg


def test_t5x_mismatch_is_named():
  t5x = convert.params_to_t5x(random_params(GATED), GATED, scanned=True)
  del t5x["encoder"]["layers"]["mlp"]["wo"]
  t5x["decoder"]["layers"]["attention"] = {"query": {"kernel": np.zeros((24, 2, 12))}}
  with pytest.raises(convert.CheckpointMismatchError) as e:
    convert.params_from_t5x({"target": t5x}, GATED)
  msg = str(e.value)
  assert "encoder/layers/mlp/wo/kernel: expected shape (40, 3, 24)" in msg
  assert "decoder/layers/attention/query/kernel: shape (24, 2, 12)" in msg
  with pytest.raises(convert.CheckpointMismatchError) as e:
    convert.params_from_t5x(t5x, GATED.replace(num_decoder_layers=3))
  assert (
    "decoder/layers/self_attention/query/kernel: expected shape (24, 3, 12), found "
    "(24, 2, 12)" in str(e.value)
  )


def test_load_t5x_orbax_checkpoint(tmp_path):
  import orbax.checkpoint as ocp

  params = random_params(GATED)
  t5x = convert.params_to_t5x(params, GATED, scanned=True)
  ckpt = tmp_path / "checkpoint_7"
  # saved as device arrays, one of them sharded over all devices (as a TPU-pod run writes it)
  saved = jax.tree_util.tree_map(jax.numpy.asarray, t5x)
  mesh = jax.make_mesh((len(jax.devices()),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  saved["token_embedder"]["embedding"] = jax.device_put(
    t5x["token_embedder"]["embedding"],
    jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None)),
  )
  ocp.PyTreeCheckpointer().save(str(ckpt), {"target": saved, "state": {"step": np.int32(7)}})
  tree = convert.load_t5x_checkpoint(str(ckpt))
  assert int(tree["state"]["step"]) == 7
  assert isinstance(tree["target"]["token_embedder"]["embedding"], np.ndarray)
  assert_trees_equal(convert.params_from_t5x(tree, GATED), params)
  # the command line: shapes read off the checkpoint, or a config file (json or gin)
  assert convert.main(["from-t5x", str(ckpt), str(tmp_path / "a")]) == 0
  cfg_a, got = checkpoint.load_checkpoint(str(tmp_path / "a"))
  assert cfg_a == GATED
  assert_trees_equal(got, params)
  checkpoint.write_config_files(GATED, str(tmp_path / "cfg"))
  for name in ("config.json", "model.gin"):
    out = tmp_path / f"b_{name}"
    assert (
      convert.main(
        ["from-t5x", str(ckpt), str(out), "--config", str(tmp_path / "cfg" / name), "--scan_layers"]
      )
      == 0
    )
    cfg_b, got = checkpoint.load_checkpoint(str(out))
    assert cfg_b == GATED.replace(scan_layers=True)
    assert_trees_equal(got, convert.stack_layers(params))


def test_load_t5x_msgpack_checkpoint(tmp_path):
  """The pre-orbax T5X format: msgpack `checkpoint` file, big leaves as tensorstore specs."""
  import tensorstore as ts
  from flax import serialization

  params = random_params(RELU_TIED)
  t5x = convert.params_to_t5x(params, RELU_TIED)
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
  tree = convert.load_t5x_checkpoint(str(tmp_path))
  assert tree["optimizer"]["state"]["step"] == 11
  assert_trees_equal(convert.params_from_t5x(tree, RELU_TIED), params)
  assert convert.config_from_t5x(tree) == RELU_TIED

  (tmp_path / "checkpoint").write_bytes(b"\xc1 not msgpack")
  with pytest.raises(
    ValueError, match=f"cannot read T5X msgpack checkpoint file {tmp_path / 'checkpoint'}"
  ):
    convert.load_t5x_checkpoint(str(tmp_path))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="not a T5X checkpoint"):
    convert.load_t5x_checkpoint(str(tmp_path / "empty"))


# ----------------------------------------------------------------------------------------------
# xt5 checkpoints


def test_checkpoint_config_files_reload(tmp_path):
  gin = pytest.importorskip("gin")
  cfg = GATED.replace(scan_layers=True, dtype="bfloat16", mlp_activations=("silu", "linear"))
  checkpoint.save_checkpoint(str(tmp_path), cfg, random_params(cfg))
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
  checkpoint.save_checkpoint(str(tmp_path / "ck"), GATED, params)
  cfg, got = checkpoint.load_checkpoint(str(tmp_path / "ck"))
  assert cfg == GATED
  assert_trees_equal(got, params)
  assert isinstance(got["token_embedder"]["embedding"], jax.Array)
  # the other layer layout is converted on load
  scanned = checkpoint.load_params(str(tmp_path / "ck" / "params"), GATED.replace(scan_layers=True))
  assert_trees_equal(scanned, convert.stack_layers(params))
  checkpoint.save_params(scanned, str(tmp_path / "scanned"))
  assert_trees_equal(checkpoint.load_params(str(tmp_path / "scanned"), GATED), params)
  # restored straight onto shardings
  mesh = jax.make_mesh((len(jax.devices()),), ("model",), axis_types=(AxisType.Auto,))
  shardings = jax.tree_util.tree_map(lambda _: NamedSharding(mesh, P()), params)
  shardings["token_embedder"]["embedding"] = NamedSharding(mesh, P("model", None))
  got = checkpoint.load_params(str(tmp_path / "ck"), GATED, shardings)
  assert got["token_embedder"]["embedding"].sharding == shardings["token_embedder"]["embedding"]
  assert_trees_equal(got, params)


def test_load_params_errors(tmp_path):
  checkpoint.save_checkpoint(str(tmp_path / "ck"), GATED, random_params(GATED))
  with pytest.raises(convert.CheckpointMismatchError) as e:
    checkpoint.load_params(str(tmp_path / "ck"), GATED.replace(d_ff=48))
  msg = str(e.value)
  assert "xt5 checkpoint" in msg and str(tmp_path / "ck" / "params") in msg
  assert "encoder/layers_0/mlp/wi_0: expected shape (24, 48), found (24, 40)" in msg
  with pytest.raises(convert.CheckpointMismatchError, match="params to save"):
    checkpoint.save_checkpoint(str(tmp_path / "bad"), RELU_TIED, random_params(GATED))
  with pytest.raises(FileNotFoundError):
    checkpoint.load_params(str(tmp_path / "nothing"), GATED)
  (tmp_path / "ck" / "params" / "_METADATA").write_text("{corrupt")
  with pytest.raises(ValueError, match=f"cannot read xt5 checkpoint {tmp_path / 'ck' / 'params'}"):
    checkpoint.load_params(str(tmp_path / "ck"), GATED)
