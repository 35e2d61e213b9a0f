"""The mixed-precision matmul: its custom VJP against autodiff, and its dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import layers


def _plain(x, k, contract):
  dims = ((tuple(range(x.ndim - contract, x.ndim)), tuple(range(contract))), ((), ()))
  return jax.lax.dot_general(x, k, dims)


@pytest.mark.parametrize("x_shape,k_shape,contract", [
    ((2, 3, 8), (8, 5), 1),  # dense
    ((2, 3, 8), (8, 2, 4), 1),  # q/k/v projection to heads
    ((2, 3, 2, 4), (2, 4, 8), 2),  # attention output projection
])
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
  rel = lambda a, b: float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)) / jnp.max(jnp.abs(b)))
  assert rel(dk, dk32) < 2e-2 and rel(dx, dx32) < 2e-2
