"""Cross-entropy with z-loss and label smoothing, T5X's loss normalisation, and train metrics.

`loss_fn` is what a train step differentiates: params and a feature-converter batch in,
scalar loss and a metrics dict out.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

# loss_normalizing_factor: a number (divide the summed loss by it) or one of these.
NORMALIZE_SUM = "sum"  # no normalisation
NORMALIZE_PER_TOKEN = "per_token"  # by the number of real (weighted) target tokens
NORMALIZE_PER_SEQUENCE = "per_sequence"  # mean over sequences of each one's mean token loss
LossNormalizingFactor = float | str
_NAMED = (NORMALIZE_SUM, NORMALIZE_PER_TOKEN, NORMALIZE_PER_SEQUENCE)


def cross_entropy_with_logits(
  logits_BTV, targets_BT, z_loss: float = 1e-4, label_smoothing: float = 0.0
):
  """Per-token loss and z-loss, both [B, T] float32.

  z-loss adds `z_loss * log(Z)^2` (Z the softmax normaliser) to keep logits from drifting.
  With label smoothing the target distribution puts `1 - s` on the target and spreads `s`
  over the other V-1 tokens; the smoothed distribution's entropy is subtracted, as in T5X, so
  a perfect prediction scores 0.
  """
  return _token_loss(logits_BTV, targets_BT, float(z_loss), float(label_smoothing))


def _smoothing(V: int, label_smoothing: float):
  """(confidence, low, normalizer): target weight, other-token weight, entropy constant."""
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (V - 1)
  normalizer = -(confidence * np.log(confidence) + (V - 1) * low * np.log(low + 1e-20))
  return confidence, low, float(normalizer)


# A custom VJP (as T5X does): the gradient is softmax * c - target weights, written in one
# fused pass over [B, T, V]; autodiff would scatter into a zero [B, T, V] buffer and keep the
# log-softmax around.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _token_loss(logits_BTV, targets_BT, z_loss, label_smoothing):
  return _token_loss_fwd(logits_BTV, targets_BT, z_loss, label_smoothing)[0]


def _token_loss_fwd(logits_BTV, targets_BT, z_loss, label_smoothing):
  logits = logits_BTV.astype(jnp.float32)
  V = logits.shape[-1]
  log_z_BT = jax.nn.logsumexp(logits, axis=-1)
  target_lp_BT = jnp.take_along_axis(logits, targets_BT[..., None], axis=-1)[..., 0] - log_z_BT
  if label_smoothing > 0:
    confidence, low, normalizer = _smoothing(V, label_smoothing)
    sum_lp_BT = jnp.sum(logits, axis=-1) - V * log_z_BT
    loss_BT = -(confidence * target_lp_BT + low * (sum_lp_BT - target_lp_BT)) - normalizer
  else:
    loss_BT = -target_lp_BT
  z_loss_BT = z_loss * jnp.square(log_z_BT)
  return (loss_BT + z_loss_BT, z_loss_BT), (logits_BTV, targets_BT, log_z_BT)


def _token_loss_bwd(z_loss, label_smoothing, residuals, cotangents):
  logits_BTV, targets_BT, log_z_BT = residuals
  g_total_BT, g_z_BT = cotangents
  V = logits_BTV.shape[-1]
  probs_BTV = jnp.exp(logits_BTV.astype(jnp.float32) - log_z_BT[..., None])
  # d(log Z)/d logits = softmax; the z-loss term scales it by 2 z log Z.
  coef_BT = g_total_BT * (1.0 + 2.0 * z_loss * log_z_BT) + g_z_BT * 2.0 * z_loss * log_z_BT
  is_target_BTV = jnp.arange(V) == targets_BT[..., None]
  if label_smoothing > 0:
    confidence, low, _ = _smoothing(V, label_smoothing)
    target_w_BTV = jnp.where(is_target_BTV, confidence, low)
  else:
    target_w_BTV = is_target_BTV.astype(jnp.float32)
  grad = probs_BTV * coef_BT[..., None] - g_total_BT[..., None] * target_w_BTV
  return grad.astype(logits_BTV.dtype), None


_token_loss.defvjp(_token_loss_fwd, _token_loss_bwd)


def _normalize(total, weights_BT, factor: LossNormalizingFactor, per_token_BT):
  if isinstance(factor, str):
    if factor not in _NAMED:
      raise ValueError(f"loss_normalizing_factor={factor!r}; expected a number or one of {_NAMED}")
    if factor == NORMALIZE_SUM:
      return total
    if factor == NORMALIZE_PER_TOKEN:
      return total / jnp.maximum(jnp.sum(weights_BT), 1e-8)
    tokens_B = jnp.sum(weights_BT, axis=-1)
    per_seq_B = jnp.sum(per_token_BT * weights_BT, axis=-1) / jnp.maximum(tokens_B, 1e-8)
    return jnp.sum(per_seq_B) / jnp.maximum(jnp.sum(tokens_B > 0), 1)
  return total / factor


def compute_loss(
  logits_BTV,
  targets_BT,
  weights_BT=None,
  *,
  z_loss: float = 1e-4,
  label_smoothing: float = 0.0,
  loss_normalizing_factor: LossNormalizingFactor = NORMALIZE_PER_TOKEN,
):
  """Scalar loss and metrics for a batch. `weights_BT` defaults to `targets > 0`."""
  if weights_BT is None:
    weights_BT = targets_BT > 0
  weights_BT = weights_BT.astype(jnp.float32)
  loss_BT, z_loss_BT = cross_entropy_with_logits(logits_BTV, targets_BT, z_loss, label_smoothing)
  loss = _normalize(jnp.sum(loss_BT * weights_BT), weights_BT, loss_normalizing_factor, loss_BT)
  z = _normalize(jnp.sum(z_loss_BT * weights_BT), weights_BT, loss_normalizing_factor, z_loss_BT)
  correct_BT = (jnp.argmax(logits_BTV, axis=-1) == targets_BT).astype(jnp.float32)
  num_tokens = jnp.sum(weights_BT)
  num_correct = jnp.sum(correct_BT * weights_BT)
  metrics = {
    "loss": loss,
    "z_loss": z,
    "cross_ent_loss": loss - z,
    "accuracy": num_correct / jnp.maximum(num_tokens, 1e-8),
    "num_correct": num_correct,
    "num_target_tokens": num_tokens,
    "num_sequences": jnp.sum(jnp.any(weights_BT > 0, axis=-1)).astype(jnp.float32),
  }
  return loss, metrics


def loss_fn(
  module,
  params,
  batch: Mapping[str, jax.Array],
  dropout_rng=None,
  *,
  z_loss: float = 1e-4,
  label_smoothing: float = 0.0,
  loss_normalizing_factor: LossNormalizingFactor = NORMALIZE_PER_TOKEN,
):
  """Teacher-forced loss of `module` (a `network.Transformer`) on a feature-converter batch.

  Uses `decoder_loss_weights` when the batch has it (seqio sets it for packed and prefix-LM
  data), else `decoder_target_tokens > 0`. Dropout is on when `dropout_rng` is given.
  """
  inputs = {
    k: batch[k]
    for k in (
      "encoder_input_tokens",
      "decoder_input_tokens",
      "encoder_segment_ids",
      "decoder_segment_ids",
      "decoder_causal_attention",
    )
    if k in batch
  }
  rngs = None if dropout_rng is None else {"dropout": dropout_rng}
  logits = module.apply({"params": params}, **inputs, deterministic=dropout_rng is None, rngs=rngs)
  return compute_loss(
    logits,
    batch["decoder_target_tokens"],
    batch.get("decoder_loss_weights"),
    z_loss=z_loss,
    label_smoothing=label_smoothing,
    loss_normalizing_factor=loss_normalizing_factor,
  )
