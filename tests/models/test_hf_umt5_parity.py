"""xt5 with `relative_attention_per_layer` reproduces Hugging Face's UMT5 in float32.

Tiny HF `UMT5ForConditionalGeneration` models with seeded random weights (every layer's
position bias its own, layer norms and the untied head randomised too) go through the real
from-hf path (`save_pretrained` directory -> `python -m models.formats from-hf`) and must match
HF's encoder output, logits and loss on padded batches whose encoder rows are longer than
max_distance (every bidirectional bucket), greedy-decode HF `generate`'s tokens, and come back
through to-hf bit for bit.

transformers 5.x's UMT5Config forces `tie_word_embeddings=True`, and its model then rescales the
decoder output by d_model**-0.5 even when the head is untied (models/formats/hf.py); real umT5
does not. The untied reference models set `config.tie_word_embeddings = False` after building
or loading, which makes HF compute real umT5 (T5X's `logits_dense`, no rescale).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from models import decoding, layers  # noqa: E402
from models.formats import __main__ as cli  # noqa: E402
from models.formats import hf, tree, xt5  # noqa: E402
from models.network import Transformer  # noqa: E402
from tests.models.test_hf_parity import RTOL, hf_forward, rel_err, xt5_forward  # noqa: E402

# name -> (HF UMT5Config kwargs, encoder length, decoder length)
FAMILIES = {
  # umT5 as published: GEGLU, untied head; 3:2 layers so a stack mix-up shows; encoder rows of
  # 140 tokens reach past max_distance 128 in both directions.
  "umt5": (
    dict(
      vocab_size=200,
      d_model=48,
      d_kv=12,
      num_heads=3,
      d_ff=96,
      num_layers=3,
      num_decoder_layers=2,
      feed_forward_proj="gated-gelu",
      tie_word_embeddings=False,
    ),
    140,
    44,
  ),
  # per-layer biases with T5.1.0's ReLU MLP and tied, rescaled head.
  "umt5_tied_relu": (
    dict(
      vocab_size=128,
      d_model=32,
      d_kv=8,
      num_heads=4,
      d_ff=64,
      num_layers=2,
      num_decoder_layers=2,
      feed_forward_proj="relu",
      tie_word_embeddings=True,
    ),
    48,
    41,
  ),
}


def build_hf(family: str, seed: int = 0):
  """A seeded random HF UMT5ForConditionalGeneration in eval mode (untied where the family is)."""
  kwargs, _, _ = FAMILIES[family]
  tied = kwargs["tie_word_embeddings"]
  hf_cfg = transformers.UMT5Config(
    **kwargs, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1
  )
  torch.manual_seed(seed)
  model = transformers.UMT5ForConditionalGeneration(hf_cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:  # HF initialises these to 1.0
        p.copy_(torch.empty_like(p).uniform_(0.5, 1.5))
    if not tied:  # its own head, as real umT5 has (see the module docstring)
      d = kwargs["d_model"]
      model.lm_head.weight = torch.nn.Parameter(torch.randn(kwargs["vocab_size"], d) * 0.6)
      model.config.tie_word_embeddings = False
  assert (model.lm_head.weight is model.shared.weight) == tied
  biases = [
    p
    for n, p in model.named_parameters()
    if n.endswith("SelfAttention.relative_attention_bias.weight")
  ]
  assert len(biases) == kwargs["num_layers"] + kwargs["num_decoder_layers"]
  assert not torch.equal(biases[0], biases[1])  # each layer its own
  return model


def make_batch(family: str, seed: int = 0):
  """Encoder tokens and targets [B, len] of three rows of different lengths, 0-padded, EOS last."""
  kwargs, enc_len, dec_len = FAMILIES[family]
  rng = np.random.RandomState(seed)

  def rows(length, lengths):
    x = rng.randint(2, kwargs["vocab_size"], size=(len(lengths), length))
    for i, n in enumerate(lengths):
      x[i, n - 1] = 1  # EOS
      x[i, n:] = 0
    return x.astype(np.int32)

  return rows(enc_len, [enc_len, enc_len - 17, 9]), rows(dec_len, [dec_len - 5, dec_len, 3])


@functools.cache
def reference(family: str):
  """(model, inputs, targets, HF encoder output, logits, loss), once per family."""
  model = build_hf(family)
  inputs, targets = make_batch(family)
  return (model, inputs, targets) + hf_forward(model, inputs, targets)


def assert_matches(family, params, cfg):
  _, inputs, targets, enc_ref, logits_ref, loss_ref = reference(family)
  enc, logits, loss = xt5_forward(params, cfg, inputs, targets)
  enc_mask, dec_mask = inputs != 0, targets != 0
  errs = (
    rel_err(enc[enc_mask], enc_ref[enc_mask]),
    rel_err(logits[dec_mask], logits_ref[dec_mask]),
    abs(loss - loss_ref) / abs(loss_ref),
  )
  assert errs[0] <= RTOL, f"{family} encoder output rel err {errs[0]:.2e}"
  assert errs[1] <= RTOL, f"{family} logits rel err {errs[1]:.2e}"
  assert errs[2] <= RTOL, f"{family} loss {loss} vs HF {loss_ref} (rel {errs[2]:.2e})"


def load_back(hf_dir: str, family: str):
  back = transformers.UMT5ForConditionalGeneration.from_pretrained(hf_dir).eval()
  if not FAMILIES[family][0]["tie_word_embeddings"]:
    back.config.tie_word_embeddings = False  # transformers 5 forces it (module docstring)
  return back


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_decoder", [False, True])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64)])
def test_relative_position_bucket_matches_umt5(is_decoder, num_buckets, max_distance):
  """UMT5 buckets bidirectionally in the encoder, causally in the decoder, as xt5's stacks do."""
  hf_cfg = transformers.UMT5Config(
    relative_attention_num_buckets=num_buckets,
    relative_attention_max_distance=max_distance,
    is_decoder=is_decoder,
  )
  attn = transformers.models.umt5.modeling_umt5.UMT5Attention(hf_cfg, True, layer_idx=0)
  rel = np.arange(-300, 301)
  theirs = attn._relative_position_bucket(torch.tensor(rel)).numpy()
  ours = layers.relative_position_bucket(
    jax.numpy.asarray(rel), not is_decoder, num_buckets, max_distance
  )
  np.testing.assert_array_equal(np.asarray(ours), theirs)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("scan_layers", [False, True])
def test_forward_and_loss_match_hf(family, scan_layers):
  model = reference(family)[0]
  cfg = hf.config_from_hf(model.config, scan_layers=scan_layers)
  kwargs = FAMILIES[family][0]
  assert cfg.relative_attention_per_layer
  assert cfg.logits_via_embedding == kwargs["tie_word_embeddings"]
  params = hf.params_from_hf_state_dict(model.state_dict(), cfg)
  want = jax.tree_util.tree_map(lambda s: s.shape, tree.param_shapes(cfg))
  assert jax.tree_util.tree_map(np.shape, params) == want
  assert_matches(family, params, cfg)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cli_round_trip(family, tmp_path):
  """save_pretrained -> from-hf -> xt5 checkpoint (logits == HF) -> to-hf -> from_pretrained:
  the same tensors and the same logits, bit for bit."""
  model, inputs, targets, _, logits_ref, _ = reference(family)
  hf_dir, xt5_dir, back_dir = (str(tmp_path / n) for n in ("hf", "xt5", "back"))
  model.save_pretrained(hf_dir)
  assert cli.main(["from-hf", hf_dir, xt5_dir, "--scan_layers"]) == 0
  cfg, params = xt5.load_checkpoint(xt5_dir)
  assert cfg == hf.config_from_hf(model.config, scan_layers=True)
  assert cfg.relative_attention_per_layer and cfg.scan_layers
  assert_matches(family, params, cfg)

  assert cli.main(["to-hf", xt5_dir, back_dir]) == 0
  written = json.loads(open(os.path.join(back_dir, "config.json")).read())
  assert written["model_type"] == "umt5"
  assert written["architectures"] == ["UMT5ForConditionalGeneration"]
  assert written["tie_word_embeddings"] == FAMILIES[family][0]["tie_word_embeddings"]
  back = load_back(back_dir, family)
  theirs, ours = model.state_dict(), back.state_dict()
  assert set(theirs) == set(ours)
  for k in theirs:
    assert torch.equal(theirs[k], ours[k]), k
  _, logits, _ = hf_forward(back, inputs, targets)
  np.testing.assert_array_equal(logits, logits_ref)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_greedy_matches_hf_generate(scan_layers):
  """The cached decoder (each layer's bias at the current position) == HF `generate`."""
  model = reference("umt5")[0]
  L = 12
  cfg = hf.config_from_hf(model.config, scan_layers=scan_layers)
  if scan_layers:
    cfg = cfg.replace(remat_policy="full")
  params = hf.params_from_hf_state_dict(model.state_dict(), cfg)
  rng = np.random.RandomState(3)
  enc = rng.randint(2, 200, size=(3, 20)).astype(np.int32)
  for b in range(3):
    enc[b, 20 - 4 * b :] = 0  # rows of different lengths
  with torch.no_grad():
    x = torch.tensor(enc, dtype=torch.long)
    want = model.generate(
      input_ids=x, attention_mask=(x > 0).long(), do_sample=False, num_beams=1, max_new_tokens=L
    ).numpy()[:, 1:]  # drop the start token
  want = np.pad(want, ((0, 0), (0, L - want.shape[1])))  # HF stops when every row is done
  tokens, _ = decoding.decode(
    Transformer(cfg), params, {"encoder_input_tokens": enc}, max_decode_length=L
  )
  np.testing.assert_array_equal(np.asarray(tokens), want)
  assert len(set(want.ravel().tolist()) - {0}) >= 8, want  # a non-trivial chain
