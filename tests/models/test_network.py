"""Network behaviour: param metadata, scan vs unrolled, remat, packing, prefix LM, dropout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import losses
from models.config import T5Config
from models.network import Transformer

TINY = T5Config(
  vocab_size=64,
  d_model=32,
  num_heads=2,
  head_dim=8,
  d_ff=48,
  num_encoder_layers=2,
  num_decoder_layers=2,
)
TINY_LM = TINY.replace(architecture="decoder_only", num_encoder_layers=0)
TINY_UMT5 = TINY.replace(relative_attention_per_layer=True)  # a position bias in every layer


def _batch(rng, B=2, S=9, T=6, vocab=64):
  enc = rng.integers(2, vocab, (B, S))
  tgt = rng.integers(2, vocab, (B, T))
  if B > 1:  # padding in the last row
    enc[-1, S - 3 :] = 0
    tgt[-1, T - 2 :] = 0
  dec_in = np.concatenate([np.zeros((B, 1), int), tgt[:, :-1]], axis=1)
  return {
    "encoder_input_tokens": jnp.asarray(enc),
    "decoder_input_tokens": jnp.asarray(dec_in),
    "decoder_target_tokens": jnp.asarray(tgt),
  }


def _init(cfg, batch, seed=0):
  model = Transformer(cfg)
  inputs = {k: v for k, v in batch.items() if k != "decoder_target_tokens"}
  if cfg.architecture == "decoder_only":
    inputs.pop("encoder_input_tokens", None)
  boxed = model.init(jax.random.PRNGKey(seed), **inputs)["params"]
  return model, boxed


def _stack_layers(params, cfg):
  """Unrolled `layers_i` params → the scanned layout (leading 'layers' axis)."""
  out = {}
  for stack, p in params.items():
    if not isinstance(p, dict) or not any(k.startswith("layers_") for k in p):
      out[stack] = p
      continue
    n = sum(k.startswith("layers_") for k in p)
    rest = {k: v for k, v in p.items() if not k.startswith("layers_")}
    rest["layers"] = jax.tree_util.tree_map(
      lambda *xs: jnp.stack(xs), *[p[f"layers_{i}"] for i in range(n)]
    )
    out[stack] = rest
  return out


def test_every_param_has_logical_axes_of_matching_rank():
  for cfg in (
    TINY,
    TINY.replace(scan_layers=True),
    TINY_LM,
    TINY.replace(mlp_activations=("relu",), logits_via_embedding=True),
    TINY_UMT5.replace(scan_layers=True),
  ):
    _, boxed = _init(cfg, _batch(np.random.default_rng(0)))
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves
    for leaf in leaves:
      assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
      assert len(leaf.names) == leaf.value.ndim
      assert leaf.value.dtype == jnp.float32
      if cfg.scan_layers and leaf.value.ndim >= 2 and leaf.names[0] == "layers":
        assert leaf.value.shape[0] == 2


def test_variants_by_config():
  batch = _batch(np.random.default_rng(0))
  _, p = _init(TINY.replace(mlp_activations=("relu",), logits_via_embedding=True), batch)
  p = nn.unbox(p)
  assert "logits_dense" not in p["decoder"] and "wi" in p["encoder"]["layers_0"]["mlp"]
  _, p = _init(TINY.replace(num_encoder_layers=3, num_decoder_layers=1), batch)
  p = nn.unbox(p)
  assert sorted(k for k in p["encoder"] if k.startswith("layers_")) == [
    "layers_0",
    "layers_1",
    "layers_2",
  ]
  assert sorted(k for k in p["decoder"] if k.startswith("layers_")) == ["layers_0"]
  assert p["decoder"]["logits_dense"].shape == (32, 64)
  _, p = _init(TINY_LM, batch)
  p = nn.unbox(p)
  assert "encoder" not in p and "encoder_decoder_attention" not in p["decoder"]["layers_0"]


@pytest.mark.parametrize(
  "cfg",
  [TINY, TINY_LM, TINY_UMT5, TINY_UMT5.replace(architecture="decoder_only", num_encoder_layers=0)],
  ids=["enc_dec", "decoder_only", "umt5", "umt5_decoder_only"],
)
def test_scan_equals_unrolled(cfg):
  batch = _batch(np.random.default_rng(1))
  model, boxed = _init(cfg, batch)
  params = nn.unbox(boxed)
  scanned = Transformer(cfg.replace(scan_layers=True))
  inputs = {k: v for k, v in batch.items() if k != "decoder_target_tokens"}
  if cfg.architecture == "decoder_only":
    inputs.pop("encoder_input_tokens")
  ref = model.apply({"params": params}, **inputs)
  out = scanned.apply({"params": _stack_layers(params, cfg)}, **inputs)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  # the scanned init has exactly the stacked layout
  _, boxed_s = _init(cfg.replace(scan_layers=True), batch)
  shapes = lambda t: jax.tree_util.tree_map(lambda x: x.shape, t)
  assert shapes(nn.unbox(boxed_s)) == shapes(_stack_layers(params, cfg))


@pytest.mark.parametrize(
  "base,policy",
  [(TINY, "full"), (TINY, "minimal"), (TINY_UMT5, "full")],
  ids=["full", "minimal", "umt5"],
)
def test_remat_keeps_loss_and_grads(base, policy):
  """Remat and scan keep the loss and every gradient, per-layer position biases' included."""
  batch = _batch(np.random.default_rng(2))
  model, boxed = _init(base, batch)
  params = nn.unbox(boxed)

  def grads(m):
    return jax.grad(lambda p: losses.loss_fn(m, p, batch)[0])(params)

  ref = grads(model)
  for scan in (False, True):
    cfg = base.replace(remat_policy=policy, scan_layers=scan)
    p = _stack_layers(params, cfg) if scan else params
    g = jax.grad(lambda p: losses.loss_fn(Transformer(cfg), p, batch)[0])(p)
    r = _stack_layers(ref, cfg) if scan else ref
    jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), g, r
    )


def test_per_layer_position_biases():
  """umT5's biases are per layer: with the stack's bias copied into every layer it computes what
  T5 computes; another bias in one layer changes the output; the params sit in each layer with
  T5's logical axes (and 'layers' first under scan)."""
  batch = _batch(np.random.default_rng(5))
  inputs = {k: v for k, v in batch.items() if k != "decoder_target_tokens"}
  t5, boxed = _init(TINY, batch)
  p_t5 = nn.unbox(boxed)
  umt5, boxed_u = _init(TINY_UMT5, batch)
  p_u = jax.tree_util.tree_map(lambda x: x, p_t5)  # new containers, same leaves
  for stack in ("encoder", "decoder"):
    bias = p_u[stack].pop("relpos_bias")
    for i in range(2):
      p_u[stack][f"layers_{i}"]["relpos_bias"] = bias
  shapes = lambda t: jax.tree_util.tree_map(np.shape, t)
  assert shapes(p_u) == shapes(nn.unbox(boxed_u))  # exactly umT5's tree
  ref = t5.apply({"params": p_t5}, **inputs)
  np.testing.assert_array_equal(umt5.apply({"params": p_u}, **inputs), ref)
  for stack in ("encoder", "decoder"):
    changed = jax.tree_util.tree_map(lambda x: x, p_u)
    bias = changed[stack]["layers_1"]["relpos_bias"]["rel_embedding"]
    noise = np.random.default_rng(6).normal(size=bias.shape)  # not a constant: softmax ignores it
    changed[stack]["layers_1"]["relpos_bias"] = {"rel_embedding": bias + noise}
    assert not np.allclose(umt5.apply({"params": changed}, **inputs), ref, atol=1e-3), stack
  _, boxed_s = _init(TINY_UMT5.replace(scan_layers=True), batch)
  rel = boxed_s["encoder"]["layers"]["relpos_bias"]["rel_embedding"]
  assert rel.names == ("layers", "heads", "relpos_buckets") and rel.value.shape == (2, 2, 32)
  rel = boxed_u["decoder"]["layers_0"]["relpos_bias"]["rel_embedding"]
  assert rel.names == ("heads", "relpos_buckets")


@pytest.mark.parametrize("cfg", [TINY, TINY_UMT5], ids=["t5", "umt5"])
def test_packed_rows_equal_separate_rows(cfg):
  rng = np.random.default_rng(3)
  a, b = _batch(rng, B=1, S=5, T=4), _batch(rng, B=1, S=4, T=3)
  model, boxed = _init(cfg, a)
  params = nn.unbox(boxed)
  cat = lambda k: jnp.concatenate([a[k], b[k]], axis=1)
  packed = {
    "encoder_input_tokens": cat("encoder_input_tokens"),
    "decoder_input_tokens": cat("decoder_input_tokens"),
    "encoder_segment_ids": jnp.asarray([[1] * 5 + [2] * 4]),
    "decoder_segment_ids": jnp.asarray([[1] * 4 + [2] * 3]),
  }
  out = model.apply({"params": params}, **packed)
  for x, sl in ((a, slice(0, 4)), (b, slice(4, 7))):
    ref = model.apply({"params": params}, x["encoder_input_tokens"], x["decoder_input_tokens"])
    np.testing.assert_allclose(out[:, sl], ref, rtol=1e-5, atol=1e-5)


def test_packed_decoder_only_rows_equal_separate_rows():
  model, boxed = _init(TINY_LM, _batch(np.random.default_rng(0)))
  params = nn.unbox(boxed)
  x1, x2 = jnp.asarray([[0, 5, 9, 11]]), jnp.asarray([[0, 7, 3]])
  out = model.apply(
    {"params": params},
    decoder_input_tokens=jnp.concatenate([x1, x2], 1),
    decoder_segment_ids=jnp.asarray([[1, 1, 1, 1, 2, 2, 2]]),
  )
  np.testing.assert_allclose(
    out[:, :4], model.apply({"params": params}, decoder_input_tokens=x1), atol=1e-5
  )
  np.testing.assert_allclose(
    out[:, 4:], model.apply({"params": params}, decoder_input_tokens=x2), atol=1e-5
  )


def test_prefix_lm_attends_bidirectionally_over_inputs_only():
  model, boxed = _init(TINY_LM, _batch(np.random.default_rng(0)))
  params = nn.unbox(boxed)
  prefix = jnp.asarray([[1, 1, 1, 0, 0, 0]])
  run = lambda toks: model.apply(
    {"params": params}, decoder_input_tokens=jnp.asarray(toks), decoder_causal_attention=prefix
  )
  base = run([[0, 4, 5, 6, 7, 8]])
  changed_prefix = run([[0, 4, 9, 6, 7, 8]])  # position 2 is inside the prefix
  changed_suffix = run([[0, 4, 5, 6, 9, 8]])  # position 4 is after it
  assert not np.allclose(base[:, 0], changed_prefix[:, 0])  # earlier prefix sees later prefix
  np.testing.assert_allclose(base[:, :4], changed_suffix[:, :4], atol=1e-6)  # never the future
  causal = model.apply({"params": params}, decoder_input_tokens=jnp.asarray([[0, 4, 5, 6, 7, 8]]))
  assert not np.allclose(base[:, 0], causal[:, 0])  # a causal run differs inside the prefix


def test_dropout_only_when_asked_and_seeded():
  batch = _batch(np.random.default_rng(4))
  cfg = TINY.replace(dropout_rate=0.3)
  model, boxed = _init(cfg, batch)
  params = nn.unbox(boxed)
  inputs = {k: v for k, v in batch.items() if k != "decoder_target_tokens"}
  det = model.apply({"params": params}, **inputs)
  np.testing.assert_array_equal(det, model.apply({"params": params}, **inputs))
  run = lambda seed: model.apply(
    {"params": params}, **inputs, deterministic=False, rngs={"dropout": jax.random.PRNGKey(seed)}
  )
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.allclose(run(0), run(1)) and not np.allclose(run(0), det)


def test_bfloat16_activations_float32_params():
  batch = _batch(np.random.default_rng(5))
  model, boxed = _init(TINY, batch)
  params = nn.unbox(boxed)
  inputs = {k: v for k, v in batch.items() if k != "decoder_target_tokens"}
  bf16 = Transformer(TINY.replace(dtype="bfloat16"))
  encoded = bf16.apply({"params": params}, batch["encoder_input_tokens"], method="encode")
  assert encoded.dtype == jnp.bfloat16
  logits = bf16.apply({"params": params}, **inputs)
  assert logits.dtype == jnp.float32
  ref = model.apply({"params": params}, **inputs)
  assert float(jnp.max(jnp.abs(logits - ref)) / jnp.max(jnp.abs(ref))) < 0.05
  _, boxed16 = _init(TINY.replace(dtype="bfloat16"), batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.unbox(boxed16)))


def test_bfloat16_training_grads_are_float32_and_close_to_float32_grads():
  batch = _batch(np.random.default_rng(6))
  _, boxed = _init(TINY, batch)
  params = nn.unbox(boxed)
  grad = lambda cfg: jax.grad(lambda p: losses.loss_fn(Transformer(cfg), p, batch)[0])(params)
  g32, g16 = grad(TINY), grad(TINY.replace(dtype="bfloat16"))
  for a, b in zip(jax.tree_util.tree_leaves(g16), jax.tree_util.tree_leaves(g32)):
    assert a.dtype == jnp.float32
    assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 0.1


def test_bad_config_is_refused_with_the_choices():
  with pytest.raises(ValueError, match="encoder_decoder"):
    T5Config(architecture="encdec")
  with pytest.raises(ValueError, match="remat_policy"):
    T5Config(remat_policy="sometimes")
  with pytest.raises(ValueError, match="gelu"):
    T5Config(mlp_activations=("gleu", "linear"))
  with pytest.raises(ValueError, match="d_modle"):
    T5Config.from_dict({"d_modle": 3})
