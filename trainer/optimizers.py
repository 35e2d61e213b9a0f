"""Optimizers and learning-rate schedules with T5X's defaults (docs/design.md, Recipes).

    schedule = rsqrt_decay()  # pretraining: 0.01 for 10k steps, then 1/sqrt(step)
    tx = make_optimizer("adafactor", schedule)  # T5X's Adafactor
    tx = make_optimizer("adamw", warmup_cosine(1e-3, 1000, 100_000), clip_grad_norm=1.0)

Adafactor needs plain (unboxed) params for `tx.init`: `flax.linen.unbox` them first.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def rsqrt_decay(base_learning_rate: float = 1.0, warmup_steps: int = 10_000) -> Schedule:
  """T5's pretraining schedule: base / sqrt(max(step, warmup_steps)) — flat at
  base / sqrt(warmup_steps) (0.01 by default) during warm-up, then inverse square root."""
  if warmup_steps < 1:
    raise ValueError(f"rsqrt_decay needs warmup_steps >= 1, got {warmup_steps}")

  def schedule(step):
    return base_learning_rate / jnp.sqrt(jnp.maximum(jnp.asarray(step, jnp.float32), warmup_steps))

  return schedule


def constant(learning_rate: float = 1e-3) -> Schedule:
  """T5's finetuning schedule."""
  return optax.constant_schedule(learning_rate)


def warmup_cosine(
  peak_learning_rate: float, warmup_steps: int, decay_steps: int, end_learning_rate: float = 0.0
) -> Schedule:
  """Linear warm-up from 0 to the peak over `warmup_steps`, cosine decay to the end value at
  step `decay_steps` (counted from 0, warm-up included)."""
  if decay_steps <= warmup_steps:
    raise ValueError(
      f"warmup_cosine needs decay_steps > warmup_steps, got {decay_steps} <= {warmup_steps}"
    )
  return optax.warmup_cosine_decay_schedule(
    0.0, peak_learning_rate, warmup_steps, decay_steps, end_learning_rate
  )


SCHEDULES = {"rsqrt_decay": rsqrt_decay, "constant": constant, "warmup_cosine": warmup_cosine}


def adafactor(learning_rate: Schedule | float) -> optax.GradientTransformation:
  """T5X's Adafactor: decay 0.8, update clipping 1.0, parameter-scaled steps, no momentum,
  second moments factored for dimensions >= 128."""
  return optax.adafactor(
    learning_rate,
    decay_rate=0.8,
    clipping_threshold=1.0,
    multiply_by_parameter_scale=True,
    momentum=None,
    min_dim_size_to_factor=128,
  )


def adamw(
  learning_rate: Schedule | float,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
) -> optax.GradientTransformation:
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def sgd(learning_rate: Schedule | float) -> optax.GradientTransformation:
  """Plain SGD: for debugging and for tests that need updates they can compute by hand."""
  return optax.sgd(learning_rate)


OPTIMIZERS = {"adafactor": adafactor, "adamw": adamw, "sgd": sgd}


def make_optimizer(
  optimizer: str | Callable[..., optax.GradientTransformation],
  learning_rate: Schedule | float,
  clip_grad_norm: float | None = None,
  **kwargs,
) -> optax.GradientTransformation:
  """The optimizer (a name in `OPTIMIZERS`, or a factory taking the learning rate, e.g. a
  gin-configured `optimizers.adamw`), optionally after clipping gradients to a global norm.

  `kwargs` go to the optimizer (e.g. `weight_decay` for AdamW).
  """
  if callable(optimizer):
    factory = optimizer
  else:
    try:
      factory = OPTIMIZERS[optimizer]
    except KeyError:
      raise ValueError(
        f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}"
      ) from None
  tx = factory(learning_rate, **kwargs)
  if clip_grad_norm is not None:
    if clip_grad_norm <= 0:
      raise ValueError(f"clip_grad_norm must be positive, got {clip_grad_norm}")
    tx = optax.chain(optax.clip_by_global_norm(clip_grad_norm), tx)
  return tx
