"""xt5 reproduces Hugging Face's T5 (T5.1.0, T5.1.1/mT5, ByT5 shapes) in float32.

Tiny HF models with seeded random weights (layer norms and untied heads randomised too, so a
swapped tensor cannot hide behind an initial value) are converted with
`params_from_hf_state_dict`; encoder outputs, logits and the loss must match on padded batches
long enough for every relative-position bucket, including the max-distance one. Conversions
back to HF (`to-hf`) must reproduce HF's own logits bit for bit.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from models import layers, losses  # noqa: E402
from models.formats import __main__ as cli  # noqa: E402
from models.formats import hf, tree, xt5  # noqa: E402
from models.network import Transformer  # noqa: E402

RTOL = 1e-5

# name -> (HF T5Config kwargs, encoder length, decoder length)
FAMILIES = {
  # T5.1.0: ReLU, tied embedding/head with the d_model**-0.5 rescale; heads*d_kv == d_model.
  "t5_1_0": (
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
  # T5.1.1 / mT5: GEGLU, untied head; heads*d_kv (36) != d_model (48).
  "t5_1_1": (
    dict(
      vocab_size=200,
      d_model=48,
      d_kv=12,
      num_heads=3,
      d_ff=96,
      num_layers=2,
      num_decoder_layers=2,
      feed_forward_proj="gated-gelu",
      tie_word_embeddings=False,
    ),
    64,
    44,
  ),
  # ByT5 shape: GEGLU, untied, 3:1 encoder:decoder; byte-long inputs cross max_distance 128.
  "byt5": (
    dict(
      vocab_size=300,
      d_model=32,
      d_kv=16,
      num_heads=2,
      d_ff=64,
      num_layers=3,
      num_decoder_layers=1,
      feed_forward_proj="gated-gelu",
      tie_word_embeddings=False,
    ),
    130,
    48,
  ),
}


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def build_hf(family: str, seed: int = 0):
  """A seeded random HF T5ForConditionalGeneration in eval mode, untied where the family is."""
  kwargs, _, _ = FAMILIES[family]
  hf_cfg = transformers.T5Config(
    **kwargs, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1
  )
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(hf_cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:  # HF initialises these to 1.0
        p.copy_(torch.empty_like(p).uniform_(0.5, 1.5))
    if not kwargs["tie_word_embeddings"]:
      # transformers 5 ties lm_head to `shared` even with tie_word_embeddings=False; give the
      # model its own head, as real T5.1.1/mT5/ByT5 checkpoints have.
      d = kwargs["d_model"]
      model.lm_head.weight = torch.nn.Parameter(torch.randn(kwargs["vocab_size"], d) * d**-0.5)
      model.config.tie_word_embeddings = False
  if kwargs["tie_word_embeddings"]:
    assert model.lm_head.weight is model.shared.weight and model.config.scale_decoder_outputs
  else:
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    assert not torch.equal(model.lm_head.weight, model.shared.weight)
    assert not model.config.scale_decoder_outputs
  return model


def make_batch(family: str, seed: int = 0):
  """Encoder tokens and targets [B, len] of three rows of different lengths, 0-padded, EOS last."""
  kwargs, enc_len, dec_len = FAMILIES[family]
  rng = np.random.RandomState(seed)
  vocab = kwargs["vocab_size"]

  def rows(length, lengths):
    x = rng.randint(2, vocab, size=(len(lengths), length))
    for i, n in enumerate(lengths):
      x[i, n - 1] = 1  # EOS
      x[i, n:] = 0
    return x.astype(np.int32)

  inputs = rows(enc_len, [enc_len, enc_len - 17, 9])
  targets = rows(dec_len, [dec_len - 5, dec_len, 3])
  return inputs, targets


def hf_forward(model, inputs, targets):
  """HF shifts `labels` right itself (start token 0, -100 -> pad 0), as xt5's run() does."""
  labels = np.where(targets == 0, -100, targets)
  with torch.no_grad():
    out = model(
      input_ids=torch.tensor(inputs, dtype=torch.long),
      attention_mask=torch.tensor(inputs != 0, dtype=torch.long),
      labels=torch.tensor(labels, dtype=torch.long),
    )
  return (out.encoder_last_hidden_state.numpy(), out.logits.numpy(), float(out.loss))


@functools.cache
def reference(family: str):
  """(model, inputs, targets, HF encoder output, logits, loss) — computed once per family."""
  model = build_hf(family)
  inputs, targets = make_batch(family)
  return (model, inputs, targets) + hf_forward(model, inputs, targets)


def _encode_decode(module, inputs, decoder_inputs):
  encoded = module.encode(inputs)
  return encoded, module.decode(encoded, inputs, decoder_inputs)


@functools.cache
def _xt5_fn(cfg):
  """One jitted program per config (encoder traced once, loss inside): compiles dominate this
  file's run time."""

  def run(params, inputs, targets):
    decoder_inputs = jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
    enc, logits = Transformer(cfg).apply(
      {"params": params}, inputs, decoder_inputs, method=_encode_decode
    )
    loss, _ = losses.compute_loss(logits, targets, z_loss=0.0)  # per-token normalisation
    return enc, logits, loss

  return jax.jit(run)


def xt5_forward(params, cfg, inputs, targets):
  # host arrays: params restored onto a device would otherwise trigger a recompile.
  params = jax.tree_util.tree_map(np.asarray, params)
  enc, logits, loss = _xt5_fn(cfg)(params, jnp.asarray(inputs), jnp.asarray(targets))
  return np.asarray(enc), np.asarray(logits), float(loss)


def assert_matches(family, params, cfg, model=None):
  """xt5(params) vs the family's HF reference: encoder out, logits (valid positions), loss."""
  ref_model, inputs, targets, enc_ref, logits_ref, loss_ref = reference(family)
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
  return errs


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64), (32, 40)])
def test_relative_position_bucket_matches_hf(bidirectional, num_buckets, max_distance):
  rel = np.arange(-300, 301)
  ours = np.asarray(
    layers.relative_position_bucket(jnp.asarray(rel), bidirectional, num_buckets, max_distance)
  )
  theirs = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
    torch.tensor(rel),
    bidirectional=bidirectional,
    num_buckets=num_buckets,
    max_distance=max_distance,
  ).numpy()
  np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("scan_layers", [False, True])
def test_forward_and_loss_match_hf(family, scan_layers):
  model = reference(family)[0]
  cfg = hf.config_from_hf(model.config, scan_layers=scan_layers)
  kwargs = FAMILIES[family][0]
  assert cfg.logits_via_embedding == kwargs["tie_word_embeddings"]
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers) == (
    kwargs["num_layers"],
    kwargs["num_decoder_layers"],
  )
  params = hf.params_from_hf_state_dict(model.state_dict(), cfg)
  # exactly the tree (and shapes) the network initialises
  want = jax.tree_util.tree_map(lambda s: s.shape, tree.param_shapes(cfg))
  assert jax.tree_util.tree_map(np.shape, params) == want
  assert_matches(family, params, cfg)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_to_hf_reproduces_hf(family, tmp_path):
  """HF -> xt5 checkpoint on disk -> to-hf -> from_pretrained: the same weights, the same logits."""
  model, inputs, targets, _, logits_ref, _ = reference(family)
  cfg = hf.config_from_hf(model.config, scan_layers=family == "byt5")
  params = hf.params_from_hf_state_dict(model.state_dict(), cfg)
  xt5.save_checkpoint(str(tmp_path / "xt5"), cfg, params)
  cli.to_hf(str(tmp_path / "xt5"), str(tmp_path / "hf"))
  hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert hf_cfg["decoder_start_token_id"] == 0 and hf_cfg["pad_token_id"] == 0
  assert hf_cfg["eos_token_id"] == 1
  back = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
  kwargs = FAMILIES[family][0]
  assert back.config.d_kv == kwargs["d_kv"]
  assert back.config.num_decoder_layers == kwargs["num_decoder_layers"]
  assert back.config.feed_forward_proj == kwargs["feed_forward_proj"]
  assert bool(back.config.scale_decoder_outputs) == kwargs["tie_word_embeddings"]
  tied = back.lm_head.weight.data_ptr() == back.shared.weight.data_ptr()
  assert tied == kwargs["tie_word_embeddings"]
  theirs, ours = model.state_dict(), back.state_dict()
  assert set(theirs) == set(ours)
  for k in theirs:
    assert torch.equal(theirs[k], ours[k]), k
  _, logits, _ = hf_forward(back, inputs, targets)
  np.testing.assert_array_equal(logits, logits_ref)


def _save_bin(model, directory):
  os.makedirs(directory, exist_ok=True)
  model.config.save_pretrained(directory)
  torch.save(model.state_dict(), os.path.join(directory, hf.HF_WEIGHTS_BIN))


@pytest.mark.parametrize(
  "family,fmt", [("t5_1_0", "safetensors"), ("t5_1_1", "bin"), ("byt5", "sharded")]
)
def test_cli_round_trip(family, fmt, tmp_path, capsys):
  """save_pretrained -> from-hf -> xt5 checkpoint -> logits -> to-hf -> from_pretrained."""
  model, inputs, targets, _, logits_ref, _ = reference(family)
  hf_dir, xt5_dir, back_dir = (str(tmp_path / n) for n in ("hf", "xt5", "back"))
  if fmt == "bin":
    _save_bin(model, hf_dir)
  else:
    model.save_pretrained(hf_dir, max_shard_size="20KB" if fmt == "sharded" else "50GB")
  names = os.listdir(hf_dir)
  if fmt == "sharded":
    assert hf.HF_WEIGHTS_SAFETENSORS + ".index.json" in names
  else:
    assert {"safetensors": hf.HF_WEIGHTS_SAFETENSORS, "bin": hf.HF_WEIGHTS_BIN}[fmt] in names

  assert cli.main(["from-hf", hf_dir, xt5_dir]) == 0
  assert sorted(os.listdir(xt5_dir)) == ["config.json", "model.gin", "params"]
  cfg, params = xt5.load_checkpoint(xt5_dir)
  assert cfg == hf.config_from_hf(model.config)
  assert_matches(family, params, cfg)

  assert cli.main(["to-hf", xt5_dir, back_dir]) == 0
  back = transformers.T5ForConditionalGeneration.from_pretrained(back_dir).eval()
  _, logits, _ = hf_forward(back, inputs, targets)
  np.testing.assert_array_equal(logits, logits_ref)
  assert "wrote" in capsys.readouterr().out


def test_transformers5_tied_v11_model(tmp_path):
  """transformers 5 saves a T5.1.1 model built from a config with lm_head tied to `shared`
  (no lm_head.weight in the file, no rescale): from-hf must compute what HF computes."""
  kwargs, _, _ = FAMILIES["t5_1_1"]
  hf_cfg = transformers.T5Config(**kwargs, dropout_rate=0.0, decoder_start_token_id=0)
  torch.manual_seed(1)
  model = transformers.T5ForConditionalGeneration(hf_cfg).eval()
  assert model.lm_head.weight is model.shared.weight and not model.config.scale_decoder_outputs
  model.save_pretrained(str(tmp_path / "hf"))
  cfg, params = hf.load_hf(str(tmp_path / "hf"))
  assert not cfg.logits_via_embedding
  np.testing.assert_array_equal(
    params["decoder"]["logits_dense"], params["token_embedder"]["embedding"].T
  )
  inputs, targets = make_batch("t5_1_1", seed=1)
  _, logits_ref, loss_ref = hf_forward(model, inputs, targets)
  _, logits, loss = xt5_forward(params, cfg, inputs, targets)
  mask = targets != 0
  assert rel_err(logits[mask], logits_ref[mask]) <= RTOL
  assert abs(loss - loss_ref) <= RTOL * abs(loss_ref)
