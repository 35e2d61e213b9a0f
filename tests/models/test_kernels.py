"""The two kernel choices (`T5Config.kernels`): the CPU-tuned custom backward passes and the
reference autodiff path (`jax.nn.dot_product_attention`) give the same outputs, gradients and
decodes from the same params."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import decoding, layers
from models.config import T5Config
from models.network import Transformer

TINY = T5Config(
  vocab_size=64,
  d_model=32,
  num_heads=2,
  head_dim=8,
  d_ff=48,
  num_encoder_layers=1,
  num_decoder_layers=1,
  kernels="cpu",
)
TINY_LM = TINY.replace(architecture="decoder_only", num_encoder_layers=0)


def _max_rel_err(a, b):
  """max |a - b| / max |b|, with a cast to float32 (b is the float32 reference)."""
  return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)) / jnp.max(jnp.abs(b)))


def _inputs(cfg, rng, B=2, S=9, T=6):
  enc = rng.integers(2, cfg.vocab_size, (B, S))
  dec = rng.integers(2, cfg.vocab_size, (B, T))
  enc[-1, S - 3 :] = 0  # padding in the last row
  dec[-1, T - 2 :] = 0
  dec[:, 0] = 0
  out = {"decoder_input_tokens": jnp.asarray(dec)}
  if cfg.architecture == "encoder_decoder":
    out["encoder_input_tokens"] = jnp.asarray(enc)
  return out


def _init(cfg, inputs, seed=0):
  init = jax.jit(lambda key, inputs: Transformer(cfg).init(key, **inputs)["params"])
  return nn.unbox(init(jax.random.PRNGKey(seed), inputs))


def _outputs_and_grads(cfg, params, inputs, rngs=None):
  model = Transformer(cfg)
  deterministic = rngs is None

  def loss(p):
    logits = model.apply(
      {"params": p}, **inputs, deterministic=deterministic, rngs=rngs or {}
    ).astype(jnp.float32)
    weights = jnp.sin(jnp.arange(logits.size, dtype=jnp.float32)).reshape(logits.shape)
    return jnp.sum(logits * weights), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return logits, grads


def _assert_paths_agree(cfg, inputs, rngs=None, tol=1e-5):
  params = _init(cfg, inputs)
  # the same params tree and shapes whichever kernels built it
  ref_shapes = jax.eval_shape(lambda: _init(cfg.replace(kernels="reference"), inputs))
  assert jax.tree_util.tree_map(jnp.shape, params) == jax.tree_util.tree_map(jnp.shape, ref_shapes)
  cpu_out, cpu_grads = _outputs_and_grads(cfg, params, inputs, rngs)
  ref_out, ref_grads = _outputs_and_grads(cfg.replace(kernels="reference"), params, inputs, rngs)
  assert _max_rel_err(ref_out, cpu_out) <= tol
  flat_cpu = jax.tree_util.tree_leaves_with_path(cpu_grads)
  flat_ref = jax.tree_util.tree_leaves(ref_grads)
  for (path, g_cpu), g_ref in zip(flat_cpu, flat_ref, strict=True):
    assert g_ref.dtype == g_cpu.dtype == jnp.float32
    assert _max_rel_err(g_ref, g_cpu) <= tol, jax.tree_util.keystr(path)


def test_config_field_validates_and_round_trips():
  with pytest.raises(ValueError, match="kernels='gpu'; expected one of"):
    T5Config(kernels="gpu")
  cfg = TINY.replace(kernels="reference")
  assert T5Config.from_dict(cfg.to_dict()) == cfg
  # a config written before the field existed loads with the default
  old = {k: v for k, v in cfg.to_dict().items() if k != "kernels"}
  assert T5Config.from_dict(old).kernels == "auto"
  assert [f.name for f in dataclasses.fields(T5Config)].count("kernels") == 1
  assert layers.resolve_kernels("auto") == "cpu"  # these tests run on the CPU backend
  assert layers.resolve_kernels("reference") == "reference"
  with pytest.raises(ValueError, match="kernels="):
    layers.resolve_kernels("fast")


def test_encoder_decoder_outputs_and_grads_agree():
  _assert_paths_agree(TINY, _inputs(TINY, np.random.default_rng(0)))


def test_per_layer_biases_scanned_outputs_and_grads_agree():
  """umT5: each layer's position bias takes its gradient through either kernel, under scan."""
  cfg = TINY.replace(
    relative_attention_per_layer=True, scan_layers=True, num_encoder_layers=2, num_decoder_layers=2
  )
  _assert_paths_agree(cfg, _inputs(cfg, np.random.default_rng(4)))


def _packed(cfg, seed):
  inputs = _inputs(cfg, np.random.default_rng(seed), B=1, S=9, T=7)
  inputs["decoder_segment_ids"] = jnp.asarray([[1, 1, 1, 1, 2, 2, 2]])
  if cfg.architecture == "encoder_decoder":
    inputs["encoder_segment_ids"] = jnp.asarray([[1] * 5 + [2] * 4])
  return inputs


def test_packed_decoder_only_outputs_and_grads_agree():
  _assert_paths_agree(TINY_LM, _packed(TINY_LM, 1))


def test_packed_encoder_decoder_with_dropout_outputs_and_grads_agree():
  cfg = TINY.replace(dropout_rate=0.2)
  _assert_paths_agree(cfg, _packed(cfg, 2), rngs={"dropout": jax.random.PRNGKey(3)})


@pytest.mark.parametrize("cfg", [TINY, TINY_LM], ids=["encoder_decoder", "decoder_only"])
def test_greedy_decodes_agree(cfg):
  rng = np.random.default_rng(5)
  inputs = _inputs(cfg, rng, B=3)
  params = _init(cfg, inputs, seed=1)
  if cfg.architecture == "encoder_decoder":
    batch = {"encoder_input_tokens": np.asarray(inputs["encoder_input_tokens"])}
  else:
    batch = {"decoder_prompt_tokens": np.asarray([[0, 5, 9, 0], [0, 7, 0, 0], [0, 3, 4, 8]])}
  results = [
    decoding.decode(
      Transformer(cfg.replace(kernels=k)), params, batch, max_decode_length=6, eos_id=1
    )
    for k in ("cpu", "reference")
  ]
  (cpu_tokens, cpu_scores), (ref_tokens, ref_scores) = results
  np.testing.assert_array_equal(np.asarray(ref_tokens), np.asarray(cpu_tokens))
  assert len(set(np.asarray(cpu_tokens).ravel().tolist())) >= 3  # not a constant chain
  np.testing.assert_allclose(ref_scores, cpu_scores, rtol=1e-5, atol=1e-5)
