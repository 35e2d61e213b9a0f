"""Schedules and optimizers with T5X's defaults (trainer/optimizers.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainer import optimizers as opt


def test_rsqrt_decay_is_flat_then_inverse_sqrt():
  schedule = opt.rsqrt_decay()
  np.testing.assert_allclose(
    [schedule(s) for s in (0, 1, 5000, 10_000, 40_000, 250_000)],
    [0.01, 0.01, 0.01, 0.01, 0.005, 0.002],
    rtol=1e-6,
  )
  assert float(opt.rsqrt_decay(2.0, warmup_steps=100)(400)) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="warmup_steps"):
    opt.rsqrt_decay(warmup_steps=0)


def test_constant_and_warmup_cosine():
  assert float(opt.constant()(12345)) == pytest.approx(1e-3)
  schedule = opt.warmup_cosine(1e-3, warmup_steps=100, decay_steps=1100, end_learning_rate=1e-5)
  np.testing.assert_allclose(
    [schedule(s) for s in (0, 50, 100, 600, 1100, 5000)],
    [0.0, 5e-4, 1e-3, (1e-3 + 1e-5) / 2, 1e-5, 1e-5],
    rtol=1e-5,
    atol=1e-9,
  )
  with pytest.raises(ValueError, match="decay_steps > warmup_steps"):
    opt.warmup_cosine(1e-3, 100, 100)


def test_adafactor_factors_large_dims_and_trains():
  params = {"kernel": jnp.ones((256, 192)) * 0.1, "bias": jnp.full((7,), 0.5)}
  tx = opt.make_optimizer("adafactor", opt.constant(1e-2))
  state = tx.init(params)
  shapes = sorted(x.shape for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) >= 1)
  assert (256,) in shapes and (192,) in shapes and (256, 192) not in shapes  # v_row, v_col only

  target = jax.random.normal(jax.random.PRNGKey(0), (256, 192)) * 0.1

  def loss(p):
    return jnp.mean((p["kernel"] - target) ** 2) + jnp.mean((p["bias"] - 1.0) ** 2)

  @jax.jit
  def step(p, s):
    value, grads = jax.value_and_grad(loss)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, value

  first = None
  for _ in range(100):
    params, state, value = step(params, state)
    first = value if first is None else first
  # Steps scale with the parameters' RMS (T5X), so a 0.1-scale kernel moves ~1e-3 per step.
  assert float(value) < 0.5 * float(first)


def test_adamw_decays_weights_and_clipping_bounds_the_gradient():
  params = {"w": jnp.full((4,), 2.0)}
  tx = opt.make_optimizer("adamw", 0.1, weight_decay=0.5)
  updates, _ = tx.update({"w": jnp.zeros(4)}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * 2.0)  # decoupled decay, zero gradient

  sgd = opt.make_optimizer("sgd", 0.1, clip_grad_norm=1.0)
  grads = {"w": jnp.array([30.0, 40.0, 0.0, 0.0])}  # global norm 50 -> scaled to 1
  updates, _ = sgd.update(grads, sgd.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.06, -0.08, 0.0, 0.0], rtol=1e-6)


def test_bad_names_and_values_are_refused():
  with pytest.raises(
    ValueError, match=r"unknown optimizer 'adam'; choose one of \['adafactor', 'adamw', 'sgd'\]"
  ):
    opt.make_optimizer("adam", 1e-3)
  with pytest.raises(ValueError, match="clip_grad_norm must be positive"):
    opt.make_optimizer("sgd", 1e-3, clip_grad_norm=0.0)
