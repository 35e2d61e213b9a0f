"""Loss numerics against independent formulas (numpy / optax), normalisation and metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models import losses


def _case(seed=0, B=3, T=5, V=7):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(B, T, V)).astype(np.float32) * 3
  targets = rng.integers(1, V, (B, T))
  if B >= 3:
    targets[1, 3:] = 0
    targets[2, 1:] = 0
  return logits, targets


def _np_log_softmax(x):
  x = x.astype(np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_cross_entropy_and_z_loss_match_numpy():
  logits, targets = _case()
  loss_BT, z_BT = losses.cross_entropy_with_logits(
    jnp.asarray(logits), jnp.asarray(targets), z_loss=1e-2
  )
  lp = _np_log_softmax(logits)
  ce = -np.take_along_axis(lp, targets[..., None], -1)[..., 0]
  log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  np.testing.assert_allclose(z_BT, 1e-2 * log_z**2, rtol=1e-5)
  np.testing.assert_allclose(loss_BT, ce + 1e-2 * log_z**2, rtol=1e-5)


def test_label_smoothing_matches_optax_minus_entropy():
  logits, targets = _case(1)
  s, V = 0.1, logits.shape[-1]
  loss_BT, _ = losses.cross_entropy_with_logits(
    jnp.asarray(logits), jnp.asarray(targets), z_loss=0.0, label_smoothing=s
  )
  soft = np.full(logits.shape, s / (V - 1))
  np.put_along_axis(soft, targets[..., None], 1 - s, -1)
  entropy = -(soft * np.log(soft)).sum(-1)
  ref = optax.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(soft)) - entropy
  np.testing.assert_allclose(loss_BT, ref, rtol=1e-5, atol=1e-6)
  # a confident correct prediction costs ~0 under the entropy-normalised smoothed loss
  perfect = np.log(soft)
  zero, _ = losses.cross_entropy_with_logits(
    jnp.asarray(perfect, jnp.float32), jnp.asarray(targets), 0.0, s
  )
  np.testing.assert_allclose(zero, 0.0, atol=1e-5)


@pytest.mark.parametrize("factor", ["sum", "per_token", "per_sequence", 4.0])
def test_normalizing_factors(factor):
  logits, targets = _case(2)
  loss, metrics = losses.compute_loss(
    jnp.asarray(logits), jnp.asarray(targets), z_loss=0.0, loss_normalizing_factor=factor
  )
  ce = -np.take_along_axis(_np_log_softmax(logits), targets[..., None], -1)[..., 0]
  w = (targets > 0).astype(np.float64)
  if factor == "sum":
    expected = (ce * w).sum()
  elif factor == "per_token":
    expected = (ce * w).sum() / w.sum()
  elif factor == "per_sequence":
    expected = np.mean((ce * w).sum(1) / w.sum(1))
  else:
    expected = (ce * w).sum() / factor
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert metrics["num_target_tokens"] == w.sum()
  assert metrics["num_sequences"] == 3


def test_loss_weights_and_accuracy():
  logits, targets = _case(3)
  weights = (targets > 0).astype(np.float32)
  weights[0, :2] = 0  # e.g. prefix-LM input positions carry no loss
  loss, metrics = losses.compute_loss(
    jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), z_loss=0.0
  )
  ce = -np.take_along_axis(_np_log_softmax(logits), targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, (ce * weights).sum() / weights.sum(), rtol=1e-5)
  correct = (logits.argmax(-1) == targets) * weights
  np.testing.assert_allclose(metrics["accuracy"], correct.sum() / weights.sum(), rtol=1e-6)
  np.testing.assert_allclose(
    metrics["cross_ent_loss"] + metrics["z_loss"], metrics["loss"], rtol=1e-6
  )


def test_gradient_of_loss_is_softmax_minus_onehot():
  logits, targets = _case(4, B=1, T=1)
  g = jax.grad(
    lambda l: losses.compute_loss(
      l, jnp.asarray(targets), z_loss=0.0, loss_normalizing_factor="sum"
    )[0]
  )(jnp.asarray(logits))
  p = np.exp(_np_log_softmax(logits))
  p[0, 0, targets[0, 0]] -= 1
  np.testing.assert_allclose(g, p, atol=1e-6)


def test_unknown_normalizing_factor_names_the_choices():
  logits, targets = _case()
  with pytest.raises(ValueError, match="per_token"):
    losses.compute_loss(
      jnp.asarray(logits), jnp.asarray(targets), loss_normalizing_factor="per_tokens"
    )


@pytest.mark.parametrize("z_loss,smoothing", [(1e-2, 0.0), (1e-2, 0.1), (0.0, 0.2)])
def test_custom_gradient_equals_autodiff_of_the_formula(z_loss, smoothing):
  logits, targets = _case(5)
  weights = jnp.asarray((targets > 0) * np.linspace(0.5, 1.5, targets.shape[1]), jnp.float32)
  V = logits.shape[-1]

  def reference(l):  # plain jnp, differentiated by jax
    lp = jax.nn.log_softmax(l)
    soft = jax.nn.one_hot(targets, V) * (1 - smoothing - smoothing / (V - 1)) + smoothing / (V - 1)
    entropy = -jnp.sum(jnp.where(soft > 0, soft * jnp.log(soft), 0.0), -1)
    per_token = -jnp.sum(soft * lp, -1) - entropy + z_loss * jax.nn.logsumexp(l, -1) ** 2
    return jnp.sum(per_token * weights) / jnp.sum(weights)

  ours = lambda l: losses.compute_loss(
    l, jnp.asarray(targets), weights, z_loss=z_loss, label_smoothing=smoothing
  )[0]
  l0 = jnp.asarray(logits)
  np.testing.assert_allclose(ours(l0), reference(l0), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(ours)(l0), jax.grad(reference)(l0), atol=1e-6, rtol=1e-4)
