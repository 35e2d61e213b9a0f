"""MrT5 token deletion (models/mrt5.py and its wiring in models/network.py).

References: the gate-off model itself (the gated code path must reduce to it exactly when the gate
keeps everything), physical removal of tokens (hard deletion must equal soft deletion once the
gate saturates), finite differences (gradients into the gate), softmax_1's formula written out in
NumPy, and the paper's PI controller (Section 3.2) driving a synthetic gate.
"""

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from models import decoding, layers, mrt5
from models.config import T5Config
from models.network import EncoderLayer, Transformer

K = -30.0  # the paper's sigmoid_mask_scale

TINY = T5Config(
  vocab_size=64,
  d_model=32,
  num_heads=2,
  head_dim=8,
  d_ff=48,
  num_encoder_layers=3,
  num_decoder_layers=1,
  kernels="cpu",
)
GATED = TINY.replace(delete_gate_layer=1, use_softmax1=True)
# the gate on the other layer layouts at once: scanned stacks, umT5's position bias in every
# layer (test_scanned_gated_model_equals_the_unrolled_one checks scanned T5 on its own)
VARIANTS = {"umt5-scanned": dict(relative_attention_per_layer=True, scan_layers=True)}


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _batch(rng, B=3, S=12, T=5, vocab=64):
  enc = rng.integers(2, vocab, (B, S))
  enc[-1, S - 4 :] = 0  # padding in the last row
  dec = rng.integers(2, vocab, (B, T))
  dec[:, 0] = 0
  return jnp.asarray(enc), jnp.asarray(dec)


def _params(cfg, enc, dec, seed=0):
  init = jax.jit(lambda key: Transformer(cfg).init(key, enc, dec)["params"])
  return nn.unbox(init(jax.random.PRNGKey(seed)))


def _saturate(params, seed=1, scale=1e4, bias=0.0):
  """Gate params whose logits are ±(≥ ~30): every G is ≈ 0 (kept) or ≈ k (deleted)."""
  p = jax.tree_util.tree_map(lambda x: x, params)
  ff = p["encoder"]["delete_gate"]["feed_forward"]
  w = jax.random.normal(jax.random.PRNGKey(seed), ff["kernel"].shape)
  ff["kernel"] = scale * w / jnp.linalg.norm(w)
  ff["bias"] = jnp.full_like(ff["bias"], bias)
  return p


# ----------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize(
  "changes, match",
  [
    (dict(delete_gate_layer=3), "delete_gate_layer=3"),
    (dict(delete_gate_layer=-1), "delete_gate_layer=-1"),
    (dict(delete_gate_layer=1, sigmoid_mask_scale=1.0), "sigmoid_mask_scale"),
    (dict(delete_gate_layer=1, deletion_threshold=-31.0), "deletion_threshold"),
    (dict(delete_gate_layer=1, deletion_threshold=0.0), "deletion_threshold"),
    (dict(delete_gate_layer=1, architecture="decoder_only", num_encoder_layers=0), "encoder"),
  ],
)
def test_bad_gate_configs_are_one_line_errors(changes, match):
  with pytest.raises(ValueError, match=match) as e:
    TINY.replace(**changes)
  assert "\n" not in str(e.value)


def test_default_threshold_is_half_the_scale():
  assert TINY.replace(delete_gate_layer=1).gate_threshold == K / 2
  assert TINY.replace(delete_gate_layer=1, deletion_threshold=-5.0).gate_threshold == -5.0


# ----------------------------------------------------------------------------------------------
# Gate off, gate open


@pytest.mark.parametrize("kernels", ["cpu", "reference"])
def test_open_gate_is_bit_identical_to_the_gate_off_model(kernels):
  """A gate whose G is exactly -0.0 everywhere real adds nothing: the gated code path (layers
  split around the gate, a third bias term, the memory struct into the decoder) must give the
  plain model's logits bit for bit with the plain model's params."""
  cfg = TINY.replace(kernels=kernels)
  enc, dec = _batch(np.random.default_rng(1))
  params = _params(cfg, enc, dec)
  assert "delete_gate" not in params["encoder"]
  gated_cfg = cfg.replace(delete_gate_layer=1)
  gated = _params(gated_cfg, enc, dec)
  gated = dict(gated, encoder=dict(params["encoder"], delete_gate=gated["encoder"]["delete_gate"]))
  gated["decoder"], gated["token_embedder"] = params["decoder"], params["token_embedder"]
  ff = gated["encoder"]["delete_gate"]["feed_forward"]
  ff["kernel"] = jnp.zeros_like(ff["kernel"])
  ff["bias"] = jnp.full_like(ff["bias"], 200.0)  # sigmoid(-200) underflows to 0: G = -0.0
  plain = Transformer(cfg).apply({"params": params}, enc, dec)
  out, inter = Transformer(gated_cfg).apply({"params": gated}, enc, dec, mutable="intermediates")
  g = mrt5.gate_values(inter["intermediates"])
  np.testing.assert_array_equal(np.asarray(g), np.where(enc > 0, 0.0, K))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))


# ----------------------------------------------------------------------------------------------
# The gate


def test_gate_values_padding_and_init():
  enc, dec = _batch(np.random.default_rng(2))
  params = _params(GATED, enc, dec)
  ff = params["encoder"]["delete_gate"]["feed_forward"]
  np.testing.assert_array_equal(np.asarray(ff["bias"]), [1.0])  # the authors' init
  assert ff["kernel"].shape == (32, 1)
  g = Transformer(GATED).apply({"params": params}, enc, method="delete_gate")
  real = np.asarray(enc > 0)
  assert np.all(np.asarray(g)[~real] == K)
  assert np.all((np.asarray(g)[real] < 0) & (np.asarray(g)[real] > K))


def test_gate_params_have_logical_axes():
  enc, dec = _batch(np.random.default_rng(3))
  boxed = Transformer(GATED).init(jax.random.PRNGKey(0), enc, dec)["params"]
  gate = boxed["encoder"]["delete_gate"]
  assert gate["feed_forward"]["kernel"].names == ("embed", None)
  assert gate["feed_forward"]["bias"].names == (None,)
  assert gate["layer_norm"]["scale"].names == ("embed",)
  no_norm = Transformer(GATED.replace(gate_layer_norm=False)).init(jax.random.PRNGKey(0), enc, dec)[
    "params"
  ]
  assert "layer_norm" not in no_norm["encoder"]["delete_gate"]


@pytest.mark.parametrize("kernels", ["cpu", "reference"])
def test_gradients_reach_the_gate_through_the_soft_bias(kernels):
  """d(loss)/d(gate params) by autodiff equals central finite differences (float32); the gate
  reaches the loss only through the attention biases of later layers and the cross-attention."""
  cfg = GATED.replace(kernels=kernels)
  enc, dec = _batch(np.random.default_rng(4))
  params = _params(cfg, enc, dec)
  # a gate spread over (k, 0), where its slope is large
  ff = params["encoder"]["delete_gate"]["feed_forward"]
  ff["kernel"] = ff["kernel"] * 8.0
  model = Transformer(cfg)
  weights = jnp.sin(jnp.arange(3 * 5 * 64, dtype=jnp.float32)).reshape(3, 5, 64)

  def loss(gate):
    p = dict(params, encoder=dict(params["encoder"], delete_gate=gate))
    return jnp.sum(model.apply({"params": p}, enc, dec) * weights)

  gate = params["encoder"]["delete_gate"]
  grads = jax.jit(jax.grad(loss))(gate)
  f = jax.jit(loss)
  flat, unravel = ravel_pytree(gate)
  g_flat = ravel_pytree(grads)[0]
  assert float(jnp.max(jnp.abs(g_flat))) > 1e-3  # the gate matters
  eps = 1e-2
  for i in (0, 5, 17, 33, 40, flat.size - 1):  # bias, kernel and norm entries
    e = jnp.zeros_like(flat).at[i].set(eps)
    fd = (f(unravel(flat + e)) - f(unravel(flat - e))) / (2 * eps)
    np.testing.assert_allclose(
      float(g_flat[i]), float(fd), rtol=3e-2, atol=3e-3 * abs(g_flat).max()
    )


def test_soft_deletion_in_cross_attention_is_masking():
  """A memory slot with G = k weighs exp(k) of a kept one: with k = -1e4 the decoder's logits
  equal those of a memory whose key mask simply excludes the slot (and G = 0 elsewhere)."""
  enc, dec = _batch(np.random.default_rng(5))
  cfg = GATED.replace(sigmoid_mask_scale=-1e4)
  params = _params(cfg, enc, dec)
  model = Transformer(cfg)
  memory = model.apply({"params": params}, enc, method="encode")
  deleted = jnp.asarray(np.random.default_rng(6).random(enc.shape) < 0.4) & (enc > 0)
  soft = memory.replace(gate_BS=jnp.where(deleted, -1e4, 0.0))
  masked = memory.replace(
    gate_BS=jnp.zeros_like(memory.gate_BS), key_ok_BS=memory.key_ok_BS & ~deleted
  )
  a = model.apply({"params": params}, soft, enc, dec, method="decode")
  b = model.apply({"params": params}, masked, enc, dec, method="decode")
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# softmax_1 in both kernels


@pytest.mark.parametrize("kernels", ["cpu", "reference"])
def test_softmax1_attention_matches_numpy_with_gate_bias(kernels):
  rng = np.random.default_rng(7)
  B, T, S, H, Kd = 2, 3, 5, 2, 4
  q = rng.normal(size=(B, T, H, Kd)).astype(np.float32)
  k = rng.normal(size=(B, H, S, Kd)).astype(np.float32)
  v = rng.normal(size=(B, H, S, Kd)).astype(np.float32)
  pos = rng.normal(size=(1, H, T, S)).astype(np.float32)
  gate = (K * rng.random((B, 1, 1, S))).astype(np.float32)
  logits = np.einsum("bthk,bhsk->bhts", q, k) + pos + gate
  m = np.maximum(logits.max(-1, keepdims=True), 0)
  w = np.exp(logits - m) / (np.exp(logits - m).sum(-1, keepdims=True) + np.exp(-m))
  want = np.einsum("bhts,bhsk->bthk", w, v)
  got = layers.dot_product_attention(
    q, k, v, (pos, gate), jnp.float32, kernels=kernels, softmax1=True
  )
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)

  # and its gradients (the custom backward pass vs autodiff of the NumPy-equivalent formula)
  def f(q, k, v, gate, kern):
    out = layers.dot_product_attention(
      q, k, v, (pos, gate), jnp.float32, kernels=kern, softmax1=True
    )
    return jnp.sum(out * jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape))

  g = jax.grad(f, argnums=(0, 1, 2, 3))(q, k, v, gate, kernels)
  g_ref = jax.grad(f, argnums=(0, 1, 2, 3))(q, k, v, gate, "reference")
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_softmax1_lets_a_row_attend_to_nothing():
  w = layers.softmax_1(jnp.array([[-1e10, -1e10], [0.0, 0.0], [50.0, 50.0]]))
  np.testing.assert_allclose(np.asarray(w), [[0, 0], [1 / 3, 1 / 3], [0.5, 0.5]], rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Hard deletion


def _soft_and_hard(cfg, enc, dec, bucket=4, seed=0, **kw):
  params = _saturate(_params(cfg, enc, dec, seed), **kw)
  soft = Transformer(cfg)
  hard = mrt5.hard_deletion_module(soft, params, enc, bucket=bucket)
  return params, soft, hard


def test_compaction_keeps_order_and_marks_empty_slots():
  keep = jnp.array([[1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 0, 0]], bool)
  idx, valid = mrt5.compaction(keep, 4)
  np.testing.assert_array_equal(np.asarray(idx)[0, :3], [0, 2, 3])
  np.testing.assert_array_equal(np.asarray(idx)[1, :1], [3])
  np.testing.assert_array_equal(np.asarray(valid), [[1, 1, 1, 0], [1, 0, 0, 0]])
  assert mrt5.kept_length_for(5, 12, 4) == 8
  assert mrt5.kept_length_for(0, 12, 4) == 4
  assert mrt5.kept_length_for(12, 12, 5) == 12


@pytest.mark.parametrize(
  "kernels, variant",
  [("cpu", None), ("reference", None), ("cpu", "umt5-scanned")],
)
def test_hard_equals_soft_for_a_saturated_gate(kernels, variant):
  """Also scanned (hard deletion shortens the sequence between the two scanned stacks) and with
  umT5's per-layer position biases (each later layer reads its bias at the kept tokens' original
  positions)."""
  cfg = GATED.replace(kernels=kernels, **VARIANTS.get(variant, {}))
  enc, dec = _batch(np.random.default_rng(8), S=16)
  params, soft, hard = _soft_and_hard(cfg, enc, dec)
  g = np.asarray(soft.apply({"params": params}, enc, method="delete_gate"))
  keep = (g > cfg.gate_threshold) & (np.asarray(enc) > 0)
  n = keep.sum(1)
  # some deleted in every row, none emptied, and the length really shrinks
  assert 0 < n.min() and np.all(n < np.asarray(enc > 0).sum(1)) and hard.kept_length < 16, n
  assert np.all((g > -1e-6) | (g < K + 1e-6))  # saturated
  assert hard.kept_length == -(-n.max() // 4) * 4
  m_soft = soft.apply({"params": params}, enc, method="encode")
  m_hard = hard.apply({"params": params}, enc, method="encode")
  assert m_hard.encoded_BSD.shape == (3, hard.kept_length, 32)
  for b in range(3):
    kept = m_soft.encoded_BSD[b][keep[b]]
    np.testing.assert_array_equal(
      np.asarray(m_hard.key_ok_BS[b]), np.arange(hard.kept_length) < n[b]
    )
    assert _rel(m_hard.encoded_BSD[b, : n[b]], kept) < 1e-5
  a = soft.apply({"params": params}, enc, dec)
  b = hard.apply({"params": params}, enc, dec)
  assert _rel(b, a) < 1e-5


@pytest.mark.parametrize("variant", [None, "umt5-scanned"])
def test_hard_equals_soft_with_packing(variant):
  cfg = GATED.replace(**VARIANTS.get(variant, {}))
  rng = np.random.default_rng(9)
  enc, dec = _batch(rng, B=2, S=16, T=8)
  enc_seg = np.array([[1] * 7 + [2] * 6 + [0] * 3, [1] * 10 + [2] * 6])
  dec_seg = np.array([[1] * 4 + [2] * 4, [1] * 5 + [2] * 3])
  enc = jnp.where(enc_seg > 0, enc, 0)
  dec = np.asarray(dec).copy()
  dec[:, 0], dec[0, 4], dec[1, 5] = 0, 0, 0  # each segment starts from 0
  batch = dict(
    encoder_input_tokens=enc,
    decoder_input_tokens=jnp.asarray(dec),
    encoder_segment_ids=jnp.asarray(enc_seg),
    decoder_segment_ids=jnp.asarray(dec_seg),
  )
  params = _saturate(_params(cfg, enc, jnp.asarray(dec)))
  soft = Transformer(cfg)
  hard = mrt5.hard_deletion_module(soft, params, enc, batch["encoder_segment_ids"], bucket=4)
  assert hard.kept_length < 16
  a = soft.apply({"params": params}, **batch)
  b = hard.apply({"params": params}, **batch)
  assert _rel(b, a) < 1e-5


@pytest.mark.parametrize("variant", [None, "umt5-scanned"])
def test_hard_deletion_decodes_and_scores_like_soft(variant):
  enc, _ = _batch(np.random.default_rng(10), S=16)
  dec = jnp.zeros((3, 1), jnp.int32)
  cfg = GATED.replace(**VARIANTS.get(variant, {}))
  params, soft, hard = _soft_and_hard(cfg, enc, dec, bias=-3000.0)
  # a confident output layer so beams are well separated
  params["decoder"]["logits_dense"] = params["decoder"]["logits_dense"] * 4.0
  assert hard.kept_length < 16
  for method in ("beam",):
    kw = dict(method=method, max_decode_length=6, num_beams=3, return_all_beams=True)
    t_soft, s_soft = decoding.decode(soft, params, {"encoder_input_tokens": enc}, **kw)
    t_hard, s_hard = decoding.decode(hard, params, {"encoder_input_tokens": enc}, **kw)
    np.testing.assert_array_equal(np.asarray(t_hard), np.asarray(t_soft))
    np.testing.assert_allclose(np.asarray(s_hard), np.asarray(s_soft), rtol=1e-5)
  targets = jnp.asarray(np.random.default_rng(11).integers(2, 64, (3, 5)))
  batch = {"encoder_input_tokens": enc, "decoder_target_tokens": targets}
  a = decoding.score_sequences(soft, params, batch)
  b = decoding.score_sequences(hard, params, batch)
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5)


def _encoder_layer_calls(fn):
  """fn()'s result and how many times each encoder layer ran in it, by name (eagerly, with jit
  off, so each count is an execution, not a trace)."""
  calls = collections.Counter()

  def count(next_fun, args, kwargs, context):
    if isinstance(context.module, EncoderLayer) and context.method_name == "__call__":
      calls[context.module.name] += 1
    return next_fun(*args, **kwargs)

  with jax.disable_jit(), nn.intercept_methods(count):
    out = jax.block_until_ready(fn())
  return out, dict(calls)


def _jit_encode(module, params, enc, seg=None):
  return jax.jit(lambda p, e, s: module.apply({"params": p}, e, s, method="encode"))(
    params, enc, seg
  )


def _assert_same_memory(new, old):
  """Masks and segment ids equal; float leaves equal to 1e-6 of their largest magnitude."""
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True):
    assert a.shape == b.shape and a.dtype == b.dtype
    if jnp.issubdtype(a.dtype, jnp.floating):
      assert _rel(a, b) <= 1e-6
    else:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_hard_encode_runs_the_early_layers_once_and_equals_the_recompute():
  """`hard_encode` (gate pass, then the later layers from its hidden states) runs every encoder
  layer once; `hard_deletion_module`'s module re-encodes the tokens and runs the layers before
  the gate twice. Both give the same memory, decodes and scores."""
  cfg = GATED.replace(num_encoder_layers=4, delete_gate_layer=2)
  enc, _ = _batch(np.random.default_rng(13), S=16)
  dec = jnp.zeros((3, 1), jnp.int32)
  params, soft, old = _soft_and_hard(cfg, enc, dec)
  assert old.kept_length < 16
  feats = {"encoder_input_tokens": enc}
  kw = dict(method="greedy", max_decode_length=3)

  def new_path():
    h = mrt5.hard_encode(soft, params, enc, bucket=4)
    return h, decoding.decode(h.module, params, feats, encoded=h.memory, **kw)

  def old_path():
    return decoding.decode(
      mrt5.hard_deletion_module(soft, params, enc, bucket=4), params, feats, **kw
    )

  _, once = _encoder_layer_calls(new_path)
  assert once == {f"layers_{i}": 1 for i in range(4)}
  _, twice = _encoder_layer_calls(old_path)
  assert twice == {"layers_0": 2, "layers_1": 2, "layers_2": 1, "layers_3": 1}

  # jitted, as in use (eager op-by-op rounding differs from a compiled program's)
  h, (t_new, s_new) = new_path()
  t_old, s_old = old_path()
  assert h.module.deletion == "hard" and h.module.kept_length == old.kept_length
  _assert_same_memory(h.memory, _jit_encode(old, params, enc))
  np.testing.assert_array_equal(np.asarray(t_new), np.asarray(t_old))
  np.testing.assert_allclose(np.asarray(s_new), np.asarray(s_old), rtol=1e-6)
  targets = jnp.asarray(np.random.default_rng(14).integers(2, 64, (3, 5)))
  batch = {"encoder_input_tokens": enc, "decoder_target_tokens": targets}
  a = decoding.score_sequences(h.module, params, batch, encoded=h.memory)
  b = decoding.score_sequences(old, params, batch)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)

  # the second call needs none of the early layers' or the gate's params: it cannot run them
  gp = mrt5.gate_pass(soft, params, enc)
  drop = ("layers_0", "layers_1", "delete_gate")
  late = {**params, "encoder": {k: v for k, v in params["encoder"].items() if k not in drop}}
  m_late = mrt5.encode_from_gate(h.module, late, gp)
  np.testing.assert_array_equal(np.asarray(m_late.encoded_BSD), np.asarray(h.memory.encoded_BSD))


@pytest.mark.parametrize("variant", [None, "umt5-scanned"])
def test_hard_encode_equals_the_recompute_with_packing(variant):
  cfg = GATED.replace(**VARIANTS.get(variant, {}))
  rng = np.random.default_rng(15)
  enc, _ = _batch(rng, B=2, S=16, T=8)
  enc_seg = jnp.asarray([[1] * 7 + [2] * 6 + [0] * 3, [1] * 10 + [2] * 6])
  enc = jnp.where(enc_seg > 0, enc, 0)
  params = _saturate(_params(cfg, enc, jnp.zeros((2, 1), jnp.int32)))
  soft = Transformer(cfg)
  h = mrt5.hard_encode(soft, params, enc, enc_seg, bucket=4)
  old = mrt5.hard_deletion_module(soft, params, enc, enc_seg, bucket=4)
  assert h.module.kept_length == old.kept_length < 16
  assert h.memory.segment_ids_BS is not None
  _assert_same_memory(h.memory, _jit_encode(old, params, enc, enc_seg))


@pytest.mark.parametrize(
  "gate_layer, umt5, check_grads", [(0, False, False), (2, True, True)], ids=["at-0", "umt5-at-2"]
)
def test_scanned_gated_model_equals_the_unrolled_one(gate_layer, umt5, check_grads):
  """The scanned layout (`layers` before the gate, `layers_after_gate` from it on) holds the
  unrolled params stacked (`formats.tree.stack_layers`); logits soft and hard, and gradients,
  are the unrolled model's."""
  from models.formats import tree

  cfg = GATED.replace(
    num_encoder_layers=4, delete_gate_layer=gate_layer, relative_attention_per_layer=umt5
  )
  scanned_cfg = cfg.replace(scan_layers=True)
  enc, dec = _batch(np.random.default_rng(19), S=16)
  raw = _params(cfg, enc, dec)
  # a saturated gate deleting half the real tokens: the bias at the median of its logits
  g = Transformer(cfg).apply({"params": _saturate(raw, scale=1.0)}, enc, method="delete_gate")
  z = -jax.scipy.special.logit(g / K)[enc > 0]
  params = _saturate(raw, bias=-1e4 * float(jnp.median(z)))
  stacked = tree.stack_layers(params, gate_layer)
  init = jax.eval_shape(Transformer(scanned_cfg).init, jax.random.PRNGKey(0), enc, dec)
  assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, nn.unbox(init["params"]))
  for deletion in ("soft", "hard"):
    outs = []
    for c, p in ((cfg, params), (scanned_cfg, stacked)):
      m = Transformer(c)
      if deletion == "hard":
        m = mrt5.hard_deletion_module(m, p, enc, bucket=4)
        assert m.kept_length < 16
      outs.append(jax.jit(lambda p, m=m: m.apply({"params": p}, enc, dec))(p))
    assert _rel(outs[1], outs[0]) < 1e-5, deletion
  if not check_grads:
    return

  def grads(c, p):
    def loss(p):
      logits, inter = Transformer(c).apply({"params": p}, enc, dec, mutable="intermediates")
      g = mrt5.gate_values(inter["intermediates"])
      return jnp.mean(logits**2) + mrt5.gate_regularizer(g, enc > 0, 0.1)

    return jax.jit(jax.grad(loss))(p)

  # an unsaturated gate, so gradients reach it
  g_unrolled = tree.stack_layers(jax.tree.map(np.asarray, grads(cfg, raw)), gate_layer)
  g_scanned = grads(scanned_cfg, tree.stack_layers(raw, gate_layer))
  assert float(jnp.max(jnp.abs(g_scanned["encoder"]["delete_gate"]["feed_forward"]["kernel"]))) > 0
  for a, b in zip(jax.tree.leaves(g_scanned), jax.tree.leaves(g_unrolled), strict=True):
    assert _rel(a, b) < 1e-4


def test_hard_deletion_without_a_gate_is_an_error():
  enc, _ = _batch(np.random.default_rng(12))
  with pytest.raises(ValueError, match="delete_gate_layer"):
    mrt5.hard_deletion_module(Transformer(TINY), None, enc)
  with pytest.raises(ValueError, match="delete_gate_layer"):
    mrt5.hard_encode(Transformer(TINY), None, enc)


# ----------------------------------------------------------------------------------------------
# Regularizer and PI controller


def test_regularizer_and_deleted_fraction_count_real_tokens_only():
  g = jnp.array([[-1.0, -20.0, K], [-16.0, -2.0, K]])
  real = jnp.array([[1, 1, 0], [1, 1, 0]], bool)
  np.testing.assert_allclose(float(mrt5.gate_regularizer(g, real, 0.5)), 0.5 * (-39.0 / 4))
  np.testing.assert_allclose(float(mrt5.deleted_fraction(g, real, K / 2)), 0.5)
  grad = jax.grad(mrt5.gate_regularizer)(g, real, 0.5)
  np.testing.assert_allclose(np.asarray(grad), 0.5 * np.asarray(real) / 4)


def test_pi_update_is_the_papers_formula():
  s = mrt5.pi_init(0.0)
  p = i = 0.0
  for deleted in (0.1, 0.2, 0.7, 0.6, 0.3):
    s = mrt5.pi_update(s, deleted, 0.4, k_p=0.5, k_i=1e-5)
    err = 0.4 - deleted
    p = 0.9 * p + 0.1 * 0.5 * err
    i = i + 1e-5 * err
    np.testing.assert_allclose(
      [float(s.p), float(s.i), float(s.alpha)], [p, i, max(0.0, p + i)], rtol=1e-5, atol=1e-9
    )
  assert all(x.dtype == jnp.float32 and x.shape == () for x in s)
  assert float(mrt5.regularizer_weight(s, 3, delay=10)) == 0.0
  assert float(mrt5.regularizer_weight(s, 10, delay=10)) == float(s.alpha)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_pi_controller_settles_at_the_target(target):
  """A synthetic gate: logits z = b + N(0, 1) per token, b trained by SGD on a task term that
  wants tokens kept (+c per step) plus the regularizer α·mean(G) (its real gradient), α set by
  the controller each step from the measured deleted fraction. The deleted fraction must settle
  at δ ± 0.05."""
  c, lr, steps = 0.05, 0.5, 3000

  def step(carry, key):
    b, state = carry
    z = b + jax.random.normal(key, (8, 64))
    real = jnp.ones((8, 64), bool)

    def reg(b):
      return mrt5.gate_regularizer(
        K * jax.nn.sigmoid(-(b + z - jax.lax.stop_gradient(b))), real, state.alpha
      )

    gate = K * jax.nn.sigmoid(-z)
    deleted = mrt5.deleted_fraction(gate, real, K / 2)
    b = b - lr * (jax.grad(reg)(b) - c)
    return (b, mrt5.pi_update(state, deleted, target)), deleted

  keys = jax.random.split(jax.random.PRNGKey(0), steps)
  _, deleted = jax.lax.scan(step, (jnp.float32(3.0), mrt5.pi_init()), keys)
  settled = float(jnp.mean(deleted[-500:]))
  assert abs(settled - target) < 0.05, settled
  assert float(jnp.mean(deleted[:20])) < target - 0.1  # it had to get there


# ----------------------------------------------------------------------------------------------
# HF conversion (the authors' MrT5 layout)


def _mrt5_state_dict(cfg, rng):
  """An MrT5 state dict as the authors' model names it: a T5 state dict (this repo's converter,
  checked against HF T5 elsewhere) plus the gate's three tensors in torch's layouts."""
  from models.formats import hf
  from models.formats.tree import param_shapes

  plain = cfg.replace(delete_gate_layer=None)
  params = jax.tree_util.tree_map(
    lambda s: rng.normal(size=s.shape).astype(np.float32),
    param_shapes(plain),
  )
  sd = hf.params_to_hf_state_dict(params, plain)
  L, D = cfg.delete_gate_layer, cfg.d_model
  sd[f"encoder.block.{L}.delete_gate.layer_norm.weight"] = rng.normal(size=(D,)).astype(np.float32)
  sd[f"encoder.block.{L}.delete_gate.feed_forward.weight"] = rng.normal(size=(1, D)).astype(
    np.float32
  )
  sd[f"encoder.block.{L}.delete_gate.feed_forward.bias"] = np.array([0.25], np.float32)
  return sd


def test_hf_round_trip_of_an_mrt5_state_dict():
  from models.formats import hf

  cfg = GATED
  sd = _mrt5_state_dict(cfg, np.random.default_rng(13))
  params = hf.params_from_hf_state_dict(sd, cfg)
  gate = params["encoder"]["delete_gate"]
  np.testing.assert_array_equal(
    gate["feed_forward"]["kernel"], sd["encoder.block.1.delete_gate.feed_forward.weight"].T
  )
  np.testing.assert_array_equal(gate["feed_forward"]["bias"], [0.25])
  back = hf.params_to_hf_state_dict(params, cfg)
  assert sorted(back) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
  # into and out of the scanned layout (two encoder stacks around the gate)
  from models.formats.tree import flatten, stack_layers

  scanned_cfg = cfg.replace(scan_layers=True)
  scanned = hf.params_from_hf_state_dict(sd, scanned_cfg)
  want = flatten(stack_layers(params, cfg.delete_gate_layer))
  assert sorted(flatten(scanned)) == sorted(want)
  for k, v in flatten(scanned).items():
    np.testing.assert_array_equal(v, want[k], err_msg=str(k))
  back = hf.params_to_hf_state_dict(scanned, scanned_cfg)
  assert sorted(back) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
  # the converted params run
  enc, dec = _batch(np.random.default_rng(14))
  assert np.isfinite(np.asarray(Transformer(cfg).apply({"params": params}, enc, dec))).all()


def test_hf_missing_or_extra_gate_tensors_are_one_clear_error():
  from models.formats import hf
  from models.formats.tree import CheckpointMismatchError

  sd = _mrt5_state_dict(GATED, np.random.default_rng(15))
  missing = {k: v for k, v in sd.items() if not k.endswith("feed_forward.bias")}
  with pytest.raises(CheckpointMismatchError, match=r"encoder\.block\.1\.delete_gate"):
    hf.params_from_hf_state_dict(missing, GATED)
  with pytest.raises(CheckpointMismatchError, match="delete_gate.feed_forward.weight"):
    hf.params_from_hf_state_dict(sd, GATED.replace(delete_gate_layer=None))  # extra tensors
  with pytest.raises(CheckpointMismatchError, match=r"encoder\.block\.2\.delete_gate"):
    hf.params_from_hf_state_dict(sd, GATED.replace(delete_gate_layer=2))  # another layer


def test_hf_config_of_mrt5():
  from models.formats import hf

  cfg = GATED.replace(sigmoid_mask_scale=-30.0, deletion_threshold=-12.0, gate_layer_norm=False)
  d = hf.hf_config_dict(cfg)
  assert d["model_type"] == "mrt5" and d["architectures"] == ["MrT5ForConditionalGeneration"]
  assert (d["delete_gate_layer"], d["sigmoid_mask_scale"], d["deletion_threshold"]) == (1, -30, -12)
  assert d["use_softmax1"] is True and d["gate_layer_norm"] is False
  assert hf.config_from_hf(d, kernels="cpu") == cfg
  # what the authors' MrT5Config.to_dict() holds (their defaults where a field is left out)
  authors = {k: v for k, v in d.items() if k not in ("gate_layer_norm", "deletion_threshold")}
  got = hf.config_from_hf(authors)
  assert got.gate_layer_norm is True and got.gate_threshold == -15.0
  with pytest.raises(ValueError, match="deletion_type='random'"):
    hf.config_from_hf(dict(d, deletion_type="random"))
  # the authors' T5 baseline: a plain T5 with softmax_1
  plain = hf.hf_config_dict(TINY.replace(use_softmax1=True))
  assert plain["model_type"] == "t5" and hf.config_from_hf(plain).use_softmax1
  with pytest.raises(ValueError, match="gated umT5 .* keep it as an xt5 checkpoint"):
    hf.hf_config_dict(GATED.replace(relative_attention_per_layer=True))


def test_add_delete_gate_to_gateless_params():
  enc, dec = _batch(np.random.default_rng(16))
  plain = _params(TINY, enc, dec)
  params = mrt5.add_delete_gate(plain, GATED)
  assert params["encoder"]["layers_0"] is plain["encoder"]["layers_0"]
  want = jax.tree_util.tree_map(jnp.shape, _params(GATED, enc, dec))
  assert jax.tree_util.tree_map(jnp.shape, params) == want
  with pytest.raises(ValueError, match="already"):
    mrt5.add_delete_gate(params, GATED)
  # scanned: the gateless stack splits at the gate
  from models.formats import tree

  scanned = mrt5.add_delete_gate(tree.stack_layers(plain), GATED.replace(scan_layers=True))
  want = jax.tree_util.tree_map(jnp.shape, _params(GATED.replace(scan_layers=True), enc, dec))
  assert jax.tree_util.tree_map(jnp.shape, scanned) == want
  np.testing.assert_array_equal(
    scanned["encoder"]["layers_after_gate"]["mlp"]["wo"],
    tree.stack_layers(params, GATED.delete_gate_layer)["encoder"]["layers_after_gate"]["mlp"]["wo"],
  )


def test_gate_params_shard_by_their_logical_axes():
  from jax.sharding import PartitionSpec as P

  from models import partitioning as pt

  enc, dec = _batch(np.random.default_rng(17))
  boxed = jax.eval_shape(lambda: Transformer(GATED).init(jax.random.PRNGKey(0), enc, dec))
  mesh = pt.make_mesh(data=-1, model=1)
  n = mesh.shape["data"]
  specs = pt.Placement(mesh, "fsdp").logical_specs(boxed["params"])["encoder"]["delete_gate"]
  kernel_spec = P("data", None) if GATED.d_model % n == 0 else P(None, None)
  assert specs["feed_forward"]["kernel"] == kernel_spec
  assert specs["feed_forward"]["bias"] == P(None)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_bf16_and_remat_with_a_gate(scan_layers):
  cfg = GATED.replace(dtype="bfloat16", remat_policy="full", scan_layers=scan_layers)
  enc, dec = _batch(np.random.default_rng(18))
  params = _params(cfg, enc, dec)
  model = Transformer(cfg)

  def loss(p):
    logits, inter = model.apply({"params": p}, enc, dec, mutable="intermediates")
    g = mrt5.gate_values(inter["intermediates"])
    return jnp.mean(logits) + mrt5.gate_regularizer(g, enc > 0, 0.1)

  grads = jax.jit(jax.grad(loss))(params)
  gate_grads = ravel_pytree(grads["encoder"]["delete_gate"])[0]
  assert np.isfinite(np.asarray(gate_grads)).all() and float(jnp.max(jnp.abs(gate_grads))) > 0
