"""The train state, its shardings, and the jitted train and eval steps.

The state is a plain dict, `{"step", "params", "opt_state"}`, so orbax saves it as it is and a
notebook can poke at it. Shardings come from models.partitioning: params by the logical-axis
rules, optimizer leaves by the param they belong to, the step replicated.

Gradient accumulation splits the global batch into `accumulation_steps` microbatches inside one
jitted step (a `lax.scan`), sums the unnormalised loss and its gradients, and normalises once by
the whole batch's token count: the update equals the one-big-batch update, not a mean of
per-microbatch means (which would weight short microbatches up).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from models import losses, partitioning
from models.network import Transformer

TrainState = dict  # {"step": int32 [], "params": pytree, "opt_state": optax state}


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The loss the step minimises (T5X's defaults): z-loss, label smoothing, normalisation."""

  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  # a number (T5X's fixed factor), 'per_token', 'per_sequence' or 'sum' (models.losses)
  loss_normalizing_factor: losses.LossNormalizingFactor = losses.NORMALIZE_PER_TOKEN


# Sums a step returns so metrics of several microbatches / eval batches add up exactly.
_SUMS = ("loss_sum", "z_loss_sum", "correct", "num_target_tokens", "num_sequences")


def state_shardings(
  module: Transformer,
  tx: optax.GradientTransformation,
  example_batch: Mapping[str, Any],
  placement: partitioning.Placement,
) -> TrainState:
  """NamedSharding tree of the train state."""
  boxed = partitioning.abstract_params(module, example_batch)
  params = placement.param_shardings(boxed)
  opt_state = partitioning.opt_state_shardings(tx, boxed, params)
  return {"step": placement.replicated, "params": params, "opt_state": opt_state}


def abstract_state(
  module: Transformer,
  tx: optax.GradientTransformation,
  example_batch: Mapping[str, Any],
  shardings: TrainState,
) -> TrainState:
  """ShapeDtypeStructs (with shardings) of the train state: the target of a restore."""
  params = partitioning.unbox(partitioning.abstract_params(module, example_batch))
  shapes = {
    "step": jax.ShapeDtypeStruct((), jnp.int32),
    "params": params,
    "opt_state": jax.eval_shape(tx.init, params),
  }
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
  )


def init_state(
  module: Transformer,
  tx: optax.GradientTransformation,
  rng,
  example_batch: Mapping[str, Any],
  placement: partitioning.Placement,
  shardings: TrainState,
  params=None,
) -> TrainState:
  """A fresh state at step 0, initialised straight into its shardings; `params` (already
  placed, e.g. from an initial checkpoint) replace the random init."""
  if params is None:
    params, _ = placement.init_params(module, rng, example_batch)
  opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), shardings["step"])
  return {"step": step, "params": params, "opt_state": opt_state}


def _microbatches(batch: Mapping[str, jax.Array], n: int) -> dict[str, jax.Array]:
  """[B, ...] -> [n, B/n, ...], microbatch i = rows i, i+n, i+2n, ...

  Row-interleaved (not contiguous blocks) so every microbatch keeps the batch's sharding: a
  device holding rows [k*B/D, (k+1)*B/D) holds its share of each microbatch.
  """

  def split(x):
    B = x.shape[0]
    if B % n:
      raise ValueError(f"batch size {B} is not divisible by accumulation_steps={n}")
    x = x.reshape((B // n, n) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return {k: split(v) for k, v in batch.items()}


def _sums(module, params, batch, dropout_rng, z_loss, label_smoothing):
  """Unnormalised loss (to differentiate) and the sums every metric is built from."""
  loss, m = losses.loss_fn(
    module,
    params,
    batch,
    dropout_rng,
    z_loss=z_loss,
    label_smoothing=label_smoothing,
    loss_normalizing_factor=losses.NORMALIZE_SUM,
  )
  sums = {
    "loss_sum": loss,
    "z_loss_sum": m["z_loss"],
    "correct": m["num_correct"],
    "num_target_tokens": m["num_target_tokens"],
    "num_sequences": m["num_sequences"],
  }
  return loss, sums


def metrics_from_sums(sums: Mapping[str, Any]) -> dict[str, Any]:
  """Per-token loss, z-loss, accuracy from summed metrics (device or host values)."""
  tokens = jnp.maximum(sums["num_target_tokens"], 1e-8)
  loss = sums["loss_sum"] / tokens
  z = sums["z_loss_sum"] / tokens
  return {
    "loss": loss,
    "z_loss": z,
    "cross_ent_loss": loss - z,
    "accuracy": sums["correct"] / tokens,
    "num_target_tokens": sums["num_target_tokens"],
    "num_sequences": sums["num_sequences"],
  }


def _normalizer(factor: losses.LossNormalizingFactor, num_tokens):
  if factor == losses.NORMALIZE_PER_TOKEN:
    return jnp.maximum(num_tokens, 1e-8)
  if factor == losses.NORMALIZE_SUM:
    return 1.0
  if isinstance(factor, str):
    raise ValueError(
      f"loss_normalizing_factor={factor!r} is not supported by the train step; "
      f"use {losses.NORMALIZE_PER_TOKEN!r}, {losses.NORMALIZE_SUM!r} or a number"
    )
  return float(factor)


def make_train_step(
  module: Transformer,
  tx: optax.GradientTransformation,
  learning_rate: Callable[[Any], Any] | float,
  *,
  accumulation_steps: int = 1,
  z_loss: float = 1e-4,
  label_smoothing: float = 0.0,
  loss_normalizing_factor: losses.LossNormalizingFactor = "per_token",
  dropout: bool = False,
):
  """`step(state, batch, rng) -> (state, metrics)`, pure (wrap it in Placement.jit).

  metrics: loss, z_loss, cross_ent_loss, accuracy (per target token over the whole batch),
  num_target_tokens, num_sequences, learning_rate, grad_norm, param_norm.
  """
  if accumulation_steps < 1:
    raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
  _normalizer(loss_normalizing_factor, 1.0)  # refuse unsupported factors before tracing

  def grads_and_sums(params, batch, rng):
    grad_fn = jax.grad(
      lambda p: _sums(module, p, batch, rng if dropout else None, z_loss, label_smoothing),
      has_aux=True,
    )
    return grad_fn(params)

  def step(state, batch, rng):
    params = state["params"]
    rng = jax.random.fold_in(rng, state["step"])
    if accumulation_steps == 1:
      grads, sums = grads_and_sums(params, batch, rng)
    else:
      micro = _microbatches(batch, accumulation_steps)

      def body(carry, i):
        mb = {k: _batch_constraint(v[i]) for k, v in micro.items()}
        g, s = grads_and_sums(params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (g, s)), None

      zeros = (jax.tree.map(jnp.zeros_like, params), {k: jnp.zeros((), jnp.float32) for k in _SUMS})
      (grads, sums), _ = jax.lax.scan(body, zeros, jnp.arange(accumulation_steps))
    norm = _normalizer(loss_normalizing_factor, sums["num_target_tokens"])
    grads = jax.tree.map(lambda g: g / norm, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_state = {
      "step": state["step"] + 1,
      "params": optax.apply_updates(params, updates),
      "opt_state": opt_state,
    }
    metrics = metrics_from_sums(sums)
    lr = learning_rate(state["step"]) if callable(learning_rate) else learning_rate
    metrics.update(
      learning_rate=jnp.asarray(lr, jnp.float32),
      grad_norm=optax.tree.norm(grads),
      param_norm=optax.tree.norm(params),
    )
    return new_state, metrics

  return step


def _batch_constraint(x):
  """Keeps a microbatch sharded like the batch ('batch' first, the rest unsharded)."""
  names = ("batch",) + ("length",) * (x.ndim - 1)
  return nn.with_logical_constraint(x, names)


def make_eval_step(module: Transformer, *, z_loss: float = 1e-4):
  """`eval_step(params, batch) -> sums` (teacher-forced, no dropout); add the sums of every
  batch and finish with `metrics_from_sums`. Zero-padded rows have no weight."""

  def eval_step(params, batch):
    return _sums(module, params, batch, None, z_loss, 0.0)[1]

  return eval_step
