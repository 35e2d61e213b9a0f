"""The mixed-precision matmul, the attention core and the position bias: their hand-written
backward passes against autodiff or a direct reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import layers


def _plain(x, k, contract):
  dims = ((tuple(range(x.ndim - contract, x.ndim)), tuple(range(contract))), ((), ()))
  return jax.lax.dot_general(x, k, dims)


def _max_rel_err(a, b):
  """max |a - b| / max |b|, with a cast to float32 (b is the float32 reference)."""
  return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize(
  "x_shape,k_shape,contract",
  [
    ((2, 3, 8), (8, 5), 1),  # dense
    ((2, 3, 8), (8, 2, 4), 1),  # q/k/v projection to heads
    ((2, 3, 2, 4), (2, 4, 8), 2),  # attention output projection
  ],
)
def test_float32_dot_and_grads_equal_autodiff(x_shape, k_shape, contract):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=k_shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=x_shape[:-contract] + k_shape[contract:]), jnp.float32)
  ours = lambda x, k: jnp.sum(layers.dot(x, k, jnp.float32, contract) * w)
  ref = lambda x, k: jnp.sum(_plain(x, k, contract) * w)
  np.testing.assert_allclose(ours(x, k), ref(x, k), rtol=1e-6)
  for a, b in zip(jax.grad(ours, (0, 1))(x, k), jax.grad(ref, (0, 1))(x, k)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bfloat16_dot_keeps_param_grads_float32_and_close():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(4, 16, 64)), jnp.bfloat16)  # a bf16 activation
  k = jnp.asarray(rng.normal(size=(64, 32)), jnp.float32)  # a float32 param
  w = jnp.asarray(rng.normal(size=(4, 16, 32)), jnp.float32)
  loss = lambda x, k, dt: jnp.sum(layers.dot(x, k, dt).astype(jnp.float32) * w)
  y = layers.dot(x, k, jnp.bfloat16)
  assert y.dtype == jnp.bfloat16
  assert layers.dot(x, k, jnp.bfloat16, out_dtype=jnp.float32).dtype == jnp.float32
  dx, dk = jax.grad(loss, (0, 1))(x, k, jnp.bfloat16)
  assert dx.dtype == jnp.bfloat16 and dk.dtype == jnp.float32
  dx32, dk32 = jax.grad(loss, (0, 1))(x.astype(jnp.float32), k, jnp.float32)
  assert _max_rel_err(dk, dk32) < 2e-2 and _max_rel_err(dx, dx32) < 2e-2


def _plain_attention(q, k, v, biases, dtype, keep, rate):
  """The attention formula written out, differentiated by JAX (the reference)."""
  logits = jnp.einsum("bthk,bhsk->bhts", q, k, preferred_element_type=jnp.float32)
  logits = logits.astype(dtype).astype(jnp.float32) + sum(biases[1:], biases[0])
  w = jax.nn.softmax(logits, axis=-1).astype(dtype)
  if keep is not None:
    w = jnp.where(keep, w / jnp.asarray(1 - rate, dtype), jnp.zeros((), dtype))
  return jnp.einsum("bhts,bhsk->bthk", w, v, preferred_element_type=jnp.float32).astype(dtype)


def _attention_inputs(B, H, T, S, K, dtype, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(B, T, H, K)), dtype)
  k = jnp.asarray(rng.normal(size=(B, H, S, K)), dtype)
  v = jnp.asarray(rng.normal(size=(B, H, S, K)), dtype)
  key_ok = rng.random((B, 1, 1, S)) > 0.2
  key_ok[..., 0] = True
  mask = jnp.where(jnp.asarray(key_ok), 0.0, layers.NEG_INF).astype(jnp.float32)
  position = jnp.asarray(rng.normal(size=(1, H, T, S)), jnp.float32)  # [1, H, T, S]: per head
  g = jnp.asarray(rng.normal(size=(B, T, H, K)), jnp.float32)  # weights the output into a loss
  keep = jnp.asarray(rng.random((B, H, T, S)) > 0.3)
  return q, k, v, (mask, position), g, keep


# T even takes _contract_queries' split path, T odd its float32 path; S ≠ T is cross-attention;
# odd B the odd-row step of _sum_to_shape's halving batch sum (the position bias's gradient).
@pytest.mark.parametrize("B,T,S", [(2, 6, 6), (3, 8, 5), (5, 7, 7), (2, 3, 10)])
@pytest.mark.parametrize("dropout", [False, True])
def test_float32_attention_and_grads_equal_autodiff(B, T, S, dropout):
  q, k, v, biases, g, keep = _attention_inputs(B, 3, T, S, 4, jnp.float32)
  keep = keep[:, :, :T, :S] if dropout else None

  def loss(fn):
    return lambda q, k, v, pos: jnp.sum(
      fn(q, k, v, (biases[0], pos), jnp.float32, keep, 0.3).astype(jnp.float32) * g
    )

  ours, ref = loss(layers.dot_product_attention), loss(_plain_attention)
  args = (q, k, v, biases[1])
  np.testing.assert_allclose(ours(*args), ref(*args), rtol=1e-5)
  for a, b in zip(jax.grad(ours, (0, 1, 2, 3))(*args), jax.grad(ref, (0, 1, 2, 3))(*args)):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bfloat16_attention_grads_close_to_float32_and_jit_on_real_shapes():
  """bf16 grads stay within bf16 rounding of the float32 ones, and the shapes the small model
  uses (encoder 512, decoder 114, cross 114×512) compile and run on XLA:CPU's bf16 paths."""
  for T, S in [(16, 16), (8, 24)]:
    q, k, v, biases, g, _ = _attention_inputs(2, 3, T, S, 8, jnp.float32, seed=T)
    loss = lambda q, k, v, pos, dt: jnp.sum(
      layers.dot_product_attention(
        q.astype(dt), k.astype(dt), v.astype(dt), (biases[0], pos), dt
      ).astype(jnp.float32)
      * g
    )
    grads = jax.grad(loss, (0, 1, 2, 3))(q, k, v, biases[1], jnp.bfloat16)
    grads32 = jax.grad(loss, (0, 1, 2, 3))(q, k, v, biases[1], jnp.float32)
    assert [x.dtype for x in grads] == [jnp.float32] * 4  # cast back to the primal dtypes
    for a, b in zip(grads, grads32):
      assert _max_rel_err(a, b) < 5e-2
  for T, S in [(512, 512), (114, 114), (114, 512)]:
    q, k, v, biases, g, _ = _attention_inputs(1, 2, T, S, 64, jnp.bfloat16, seed=1)
    step = jax.jit(
      jax.grad(
        lambda q, k, v, pos: jnp.sum(
          layers.dot_product_attention(q, k, v, (biases[0], pos), jnp.bfloat16).astype(jnp.float32)
          * g
        ),
        (0, 1, 2, 3),
      )
    )
    assert all(bool(jnp.all(jnp.isfinite(x.astype(jnp.float32)))) for x in step(q, k, v, biases[1]))


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("T,S,offset", [(7, 7, 0), (3, 11, 0), (1, 16, 5), (2, 9, 4), (9, 4, 0)])
def test_position_bias_and_grads_equal_a_gather_over_bucketed_distances(
  bidirectional, T, S, offset
):
  # small max_distance/buckets so short lengths reach the log-spaced and clipped buckets
  module = layers.RelativePositionBias(
    num_heads=3, num_buckets=8, max_distance=6, bidirectional=bidirectional
  )
  params = nn.unbox(module.init(jax.random.PRNGKey(0), T, S, offset))
  table_HN = params["params"]["rel_embedding"]
  buckets_TS = layers.relative_position_bucket(
    np.arange(S)[None, :] - (offset + np.arange(T))[:, None], bidirectional, 8, 6
  )
  expected_HTS = np.asarray(table_HN)[:, np.asarray(buckets_TS)]
  # the offset traced (as in cached decoding) and static give the same bias
  for bias in (
    module.apply(params, T, S, offset),
    jax.jit(module.apply, static_argnums=(1, 2))(params, T, S, jnp.int32(offset)),
  ):
    np.testing.assert_array_equal(np.asarray(bias), expected_HTS[None])
  # gradient: each bucket collects the cotangents of the (t, s) pairs that fall in it
  g_HTS = np.random.default_rng(1).standard_normal(expected_HTS.shape).astype(np.float32)
  grad = jax.grad(lambda p: jnp.sum(module.apply(p, T, S, offset)[0] * g_HTS))(params)
  expected_grad = np.zeros_like(np.asarray(table_HN))
  np.add.at(expected_grad.T, np.asarray(buckets_TS), np.moveaxis(g_HTS, 0, -1))
  np.testing.assert_allclose(
    np.asarray(grad["params"]["rel_embedding"]), expected_grad, rtol=1e-5, atol=1e-5
  )
