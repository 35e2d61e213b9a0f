"""Hugging Face T5 state dicts, configs and files: error messages name every tensor, configs
round trip, corrupt files are named. (Numerical parity with Hugging Face lives in
tests/models/test_hf_parity.py.)"""

from __future__ import annotations

import os

import numpy as np
import pytest

from models.formats import __main__ as cli
from models.formats import hf, tree
from tests.models.formats.conftest import (
  DECODER_ONLY,
  GATED,
  RELU_TIED,
  UMT5,
  assert_trees_equal,
  random_params,
)

# ----------------------------------------------------------------------------------------------
# HF state dicts: mismatches are named with their shapes


def test_hf_state_dict_errors_name_tensors_and_shapes():
  sd = hf.params_to_hf_state_dict(random_params(GATED), GATED)
  assert "lm_head.weight" in sd and "encoder.block.0.layer.1.DenseReluDense.wi_1.weight" in sd
  del sd["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
  sd["decoder.block.0.layer.1.EncDecAttention.q.weight"] = np.zeros((7, 24), np.float32)
  sd["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = np.zeros((32, 3))
  with pytest.raises(tree.CheckpointMismatchError) as e:
    hf.params_from_hf_state_dict(sd, GATED)
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
  sd = hf.params_to_hf_state_dict(random_params(GATED), GATED)
  with pytest.raises(tree.CheckpointMismatchError) as e:  # ReLU, tied, 2 encoder layers
    hf.params_from_hf_state_dict(sd, GATED.replace(mlp_activations=("relu",)))
  msg = str(e.value)
  assert "encoder.block.0.layer.1.DenseReluDense.wi.weight: expected shape (40, 24)" in msg
  assert "encoder.block.0.layer.1.DenseReluDense.wi_0.weight: shape (40, 24)" in msg


def test_hf_state_dict_round_trip_and_aliases():
  params = random_params(RELU_TIED)
  sd = hf.params_to_hf_state_dict(params, RELU_TIED)
  assert "lm_head.weight" not in sd
  assert_trees_equal(hf.params_from_hf_state_dict(sd, RELU_TIED), params)
  # HF files may carry the embedding under its tied aliases, and lm_head equal to shared
  shared = sd.pop("shared.weight")
  sd["encoder.embed_tokens.weight"] = sd["decoder.embed_tokens.weight"] = shared
  sd["lm_head.weight"] = shared.copy()
  # original T5 checkpoints carry a cross-attention bias HF ignores
  sd["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = np.ones((32, 3))
  assert_trees_equal(hf.params_from_hf_state_dict(sd, RELU_TIED), params)
  sd["lm_head.weight"] = shared + 1  # a real untied head under a tied config: refuse
  with pytest.raises(tree.CheckpointMismatchError, match="lm_head.weight differs"):
    hf.params_from_hf_state_dict(sd, RELU_TIED)


def test_hf_config_round_trip():
  for cfg in (GATED, RELU_TIED, GATED.replace(mlp_activations=("silu", "linear"))):
    d = hf.hf_config_dict(cfg)
    assert (d["decoder_start_token_id"], d["pad_token_id"], d["eos_token_id"]) == (0, 0, 1)
    assert hf.config_from_hf(d) == cfg
  assert hf.hf_config_dict(GATED)["feed_forward_proj"] == "gated-gelu"
  assert hf.hf_config_dict(RELU_TIED)["tie_word_embeddings"] is True
  base = {
    k: v
    for k, v in hf.hf_config_dict(GATED).items()
    if k not in ("tie_word_embeddings", "scale_decoder_outputs")
  }
  # transformers 4.x configs say tie_word_embeddings (default True); 5.x scale_decoder_outputs.
  assert hf.config_from_hf(base).logits_via_embedding
  assert not hf.config_from_hf({**base, "tie_word_embeddings": False}).logits_via_embedding
  assert not hf.config_from_hf(
    {**base, "tie_word_embeddings": True, "scale_decoder_outputs": False}
  ).logits_via_embedding
  assert hf.config_from_hf(base, scan_layers=True).scan_layers
  with pytest.raises(ValueError, match="feed_forward_proj='gelu'"):
    hf.config_from_hf({**base, "feed_forward_proj": "gelu"})
  with pytest.raises(ValueError, match="encoder_decoder"):
    hf.hf_config_dict(DECODER_ONLY)


def test_hf_config_object():
  transformers = pytest.importorskip("transformers")
  for cfg in (GATED, RELU_TIED):
    hf_cfg = transformers.T5Config(**hf.hf_config_dict(cfg))
    assert hf.config_from_hf(hf_cfg) == cfg


def test_umt5_state_dict_has_a_bias_per_layer():
  params = random_params(UMT5)
  sd = hf.params_to_hf_state_dict(params, UMT5)
  bias = "SelfAttention.relative_attention_bias.weight"
  want = {f"encoder.block.{i}.layer.0.{bias}" for i in range(3)}
  want |= {f"decoder.block.{i}.layer.0.{bias}" for i in range(2)}
  assert {k for k in sd if "relative_attention_bias" in k} == want
  np.testing.assert_array_equal(
    sd[f"encoder.block.2.layer.0.{bias}"],  # [buckets, heads]
    params["encoder"]["layers_2"]["relpos_bias"]["rel_embedding"].T,
  )
  assert_trees_equal(hf.params_from_hf_state_dict(sd, UMT5), params)
  # a T5 checkpoint (one bias per stack) is not a umT5 one, and the other way round
  with pytest.raises(tree.CheckpointMismatchError) as e:
    hf.params_from_hf_state_dict(hf.params_to_hf_state_dict(random_params(GATED), GATED), UMT5)
  assert f"encoder.block.1.layer.0.{bias}: expected shape (32, 3)" in str(e.value)
  with pytest.raises(tree.CheckpointMismatchError) as e:
    hf.params_from_hf_state_dict(sd, GATED)
  assert f"decoder.block.1.layer.0.{bias}: shape (32, 3)" in str(e.value)


def test_umt5_config_round_trip():
  d = hf.hf_config_dict(UMT5)
  assert (d["model_type"], d["architectures"]) == ("umt5", ["UMT5ForConditionalGeneration"])
  assert d["tie_word_embeddings"] is False and "scale_decoder_outputs" not in d
  assert hf.config_from_hf(d) == UMT5
  assert hf.hf_config_dict(GATED)["model_type"] == "t5"
  # early umT5 uploads: model_type 'mt5' or none, but scalable_attention / a UMT5 architecture
  t5 = {k: v for k, v in hf.hf_config_dict(GATED).items() if k not in ("architectures",)}
  assert hf.config_from_hf(
    {**t5, "model_type": "mt5", "scalable_attention": True}
  ) == GATED.replace(relative_attention_per_layer=True)
  no_type = {k: v for k, v in d.items() if k != "model_type"}
  assert hf.config_from_hf(no_type).relative_attention_per_layer
  assert not hf.config_from_hf({**t5, "model_type": "mt5"}).relative_attention_per_layer
  with pytest.raises(ValueError, match="model_type='longt5' is not supported"):
    hf.config_from_hf({**t5, "model_type": "longt5"})
  transformers = pytest.importorskip("transformers")
  hf_cfg = transformers.UMT5Config(**d)  # transformers accepts what we write
  # (transformers 5 forces tie_word_embeddings=True on the object; see models/formats/hf.py)
  assert hf.config_from_hf(hf_cfg).replace(logits_via_embedding=False) == UMT5


# ----------------------------------------------------------------------------------------------
# HF files


def _write_hf_dir(directory, cfg, params):
  os.makedirs(directory, exist_ok=True)
  hf.save_hf(params, cfg, str(directory))


def test_corrupt_or_missing_hf_files_are_named(tmp_path, capsys):
  hf_dir = tmp_path / "hf"
  _write_hf_dir(hf_dir, GATED, random_params(GATED))
  weights = hf_dir / hf.HF_WEIGHTS_SAFETENSORS
  weights.write_bytes(b"\x00garbage" * 10)
  with pytest.raises(ValueError, match=f"cannot read safetensors file {weights}"):
    hf.load_hf(str(hf_dir))
  assert cli.main(["from-hf", str(hf_dir), str(tmp_path / "out")]) == 1
  assert str(weights) in capsys.readouterr().err
  assert not (tmp_path / "out").exists()

  weights.unlink()
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf.load_hf(str(hf_dir))
  pytest.importorskip("torch")
  (hf_dir / hf.HF_WEIGHTS_BIN).write_bytes(b"not a torch file")
  with pytest.raises(
    ValueError, match=f"cannot read torch checkpoint file {hf_dir / hf.HF_WEIGHTS_BIN}"
  ):
    hf.load_hf(str(hf_dir))
  (hf_dir / "config.json").write_text("{oops")
  with pytest.raises(ValueError, match="cannot read HF config"):
    hf.load_hf(str(hf_dir))


def test_bf16_safetensors(tmp_path):
  torch = pytest.importorskip("torch")
  from safetensors.torch import save_file

  params = random_params(GATED)
  sd = hf.params_to_hf_state_dict(params, GATED)
  bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in sd.items()}
  _write_hf_dir(tmp_path, GATED, params)
  save_file(bf16, str(tmp_path / hf.HF_WEIGHTS_SAFETENSORS))
  cfg, got = hf.load_hf(str(tmp_path))
  assert cfg == GATED
  want = hf.params_from_hf_state_dict({k: v.float().numpy() for k, v in bf16.items()}, cfg)
  assert_trees_equal(got, want)
  assert got["decoder"]["logits_dense"].dtype == np.float32
