"""The train state, its shardings, and the jitted train and eval steps.

The state is a plain dict, `{"step", "params", "opt_state"}`, so orbax saves it as it is and a
notebook can poke at it. Shardings come from models.partitioning: params by the logical-axis
rules, optimizer leaves by the param they belong to, the step replicated.

An MrT5 model (a config with `delete_gate_layer`) adds `"pi_controller": {"p", "i", "alpha"}`,
the float32 scalars of the PI controller that sets its gate regularizer's weight α
(`models.mrt5.PIState`, replicated), so a resumed run continues the controller exactly. The
step's loss is then the LM loss plus α · mean(G) over the real encoder tokens, with this step's
α (the controller's state before the step, 0 during `DeletionConfig.delay`); after the update
the controller moves α toward deleting `DeletionConfig.target` of the tokens.

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
import numpy as np
import optax

from models import losses, mrt5, partitioning
from models.network import Transformer

TrainState = dict  # {"step": int32 [], "params": pytree, "opt_state": optax state[, PI_KEY]}


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The loss the step minimises (T5X's defaults): z-loss, label smoothing, normalisation."""

  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  # a number (T5X's fixed factor), 'per_token', 'per_sequence' or 'sum' (models.losses)
  loss_normalizing_factor: losses.LossNormalizingFactor = losses.NORMALIZE_PER_TOKEN


@dataclasses.dataclass(frozen=True)
class DeletionConfig:
  """MrT5's gate regularizer and the PI controller that sets its weight α (Kallini et al. 2025,
  Section 3.2; the names of the authors' trainer in brackets). Used only by gated models.

  target: δ, the fraction of real encoder tokens to delete [target_deletion_rate]; None keeps
    α fixed at `alpha0` (no controller). The authors' recommended example is 0.4.
  k_p, k_i: the controller's proportional and integral gains [controller_p, controller_i].
  alpha0: α before the controller's first update [delete_gate_loss_coeff].
  delay: steps with no regularizer and no controller update [regularizer_delay].
  """

  target: float | None = 0.4
  k_p: float = 0.5
  k_i: float = 1e-5
  alpha0: float = 0.0
  delay: int = 0

  def __post_init__(self):
    if self.target is not None and not 0.0 <= self.target < 1.0:
      raise ValueError(
        f"deletion_target={self.target}; expected a fraction of tokens in [0, 1), or None "
        "for a fixed weight deletion_alpha0"
      )
    if self.k_p < 0 or self.k_i < 0 or self.alpha0 < 0:
      raise ValueError(
        f"deletion_k_p={self.k_p}, deletion_k_i={self.k_i}, deletion_alpha0={self.alpha0}; "
        "expected gains and a starting weight >= 0"
      )
    if self.delay < 0:
      raise ValueError(f"deletion_delay={self.delay}; expected a number of steps >= 0")


PI_KEY = "pi_controller"  # the train state's entry for MrT5's controller (gated models only)

# Sums a step returns so metrics of several microbatches / eval batches add up exactly.
_SUMS = ("loss_sum", "z_loss_sum", "correct", "num_target_tokens", "num_sequences")
# A gated model's extra sums: Σ G and the count of deleted tokens over the real encoder tokens.
_GATE_SUMS = ("gate_sum", "num_deleted", "num_input_tokens")


def _gated(module) -> bool:
  return module.config.delete_gate_layer is not None


def _sum_keys(module) -> tuple[str, ...]:
  return _SUMS + _GATE_SUMS if _gated(module) else _SUMS


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
  out = {"step": placement.replicated, "params": params, "opt_state": opt_state}
  if _gated(module):
    out[PI_KEY] = {k: placement.replicated for k in mrt5.PIState._fields}
  return out


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
  if _gated(module):
    shapes[PI_KEY] = {k: jax.ShapeDtypeStruct((), jnp.float32) for k in mrt5.PIState._fields}
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
  *,
  alpha0: float = 0.0,
) -> TrainState:
  """A fresh state at step 0, initialised straight into its shardings; `params` (already
  placed, e.g. from an initial checkpoint) replace the random init. A gated model's controller
  starts at α = `alpha0`."""
  if params is None:
    params, _ = placement.init_params(module, rng, example_batch)
  opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), shardings["step"])
  state = {"step": step, "params": params, "opt_state": opt_state}
  if _gated(module):
    state[PI_KEY] = init_controller(alpha0, shardings[PI_KEY])
  return state


def init_controller(alpha0: float, shardings: Mapping[str, Any]) -> dict[str, jax.Array]:
  """A fresh PI controller as the train state holds it, `{"p", "i", "alpha"}`, placed."""
  pi = mrt5.pi_init(alpha0)._asdict()
  # one buffer per leaf (pi_init shares its zeros): the step donates the state, and XLA
  # refuses a buffer donated twice
  return {k: jax.device_put(np.array(v), shardings[k]) for k, v in pi.items()}


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


# The batch features the network takes (as models.losses.loss_fn passes them).
_NETWORK_INPUTS = (
  "encoder_input_tokens",
  "decoder_input_tokens",
  "encoder_segment_ids",
  "decoder_segment_ids",
  "decoder_causal_attention",
)


def _sums(module, params, batch, dropout_rng, z_loss, label_smoothing, gate_scale=None):
  """Unnormalised loss (to differentiate) and the sums every metric is built from.

  A gated model also sums its gate over the real encoder tokens (`_GATE_SUMS`), and with
  `gate_scale` adds `gate_scale · Σ G` to the loss it returns (`loss_sum` stays the LM loss)."""
  if not _gated(module):
    loss, m = losses.loss_fn(
      module,
      params,
      batch,
      dropout_rng,
      z_loss=z_loss,
      label_smoothing=label_smoothing,
      loss_normalizing_factor=losses.NORMALIZE_SUM,
    )
    gate = {}
  else:
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    logits, mutated = module.apply(
      {"params": params},
      **{k: batch[k] for k in _NETWORK_INPUTS if k in batch},
      deterministic=dropout_rng is None,
      rngs=rngs,
      mutable=["intermediates"],
    )
    loss, m = losses.compute_loss(
      logits,
      batch["decoder_target_tokens"],
      batch.get("decoder_loss_weights"),
      z_loss=z_loss,
      label_smoothing=label_smoothing,
      loss_normalizing_factor=losses.NORMALIZE_SUM,
    )
    gate_BS = mrt5.gate_values(mutated["intermediates"])
    real_BS = batch["encoder_input_tokens"] > 0
    deleted_BS = (gate_BS <= module.config.gate_threshold) & real_BS  # as mrt5.deleted_fraction
    gate = {
      "gate_sum": jnp.sum(jnp.where(real_BS, gate_BS, 0.0)),
      "num_deleted": jnp.sum(deleted_BS, dtype=jnp.float32),
      "num_input_tokens": jnp.sum(real_BS, dtype=jnp.float32),
    }
  sums = {
    "loss_sum": loss,
    "z_loss_sum": m["z_loss"],
    "correct": m["num_correct"],
    "num_target_tokens": m["num_target_tokens"],
    "num_sequences": m["num_sequences"],
    **gate,
  }
  if gate_scale is not None:
    loss = loss + gate_scale * gate["gate_sum"]
  return loss, sums


def metrics_from_sums(sums: Mapping[str, Any]) -> dict[str, Any]:
  """Per-token loss, z-loss, accuracy from summed metrics (device or host values); a gated
  model's also the deleted fraction and mean gate value G over the real encoder tokens."""
  tokens = jnp.maximum(sums["num_target_tokens"], 1e-8)
  loss = sums["loss_sum"] / tokens
  z = sums["z_loss_sum"] / tokens
  out = {
    "loss": loss,
    "z_loss": z,
    "cross_ent_loss": loss - z,
    "accuracy": sums["correct"] / tokens,
    "num_target_tokens": sums["num_target_tokens"],
    "num_sequences": sums["num_sequences"],
  }
  if "num_input_tokens" in sums:
    real = jnp.maximum(sums["num_input_tokens"], 1.0)  # as mrt5's regularizer and fraction
    out.update(deleted_fraction=sums["num_deleted"] / real, mean_gate=sums["gate_sum"] / real)
  return out


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


def _target_weights(batch):
  """The loss weights models.losses uses: `decoder_loss_weights`, else targets > 0."""
  weights = batch.get("decoder_loss_weights")
  return batch["decoder_target_tokens"] > 0 if weights is None else weights


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
  deletion: DeletionConfig = DeletionConfig(),
):
  """`step(state, batch, rng) -> (state, metrics)`, pure (wrap it in Placement.jit).

  metrics: loss, z_loss, cross_ent_loss, accuracy (per target token over the whole batch),
  num_target_tokens, num_sequences, learning_rate, grad_norm, param_norm. A gated (MrT5) model
  minimises loss + gate_loss and adds deleted_fraction, mean_gate (over the whole batch's real
  encoder tokens), gate_loss = α · mean_gate and alpha, the α of this step's loss; `deletion`
  configures its controller, whose state is the train state's `PI_KEY`.
  """
  if accumulation_steps < 1:
    raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
  _normalizer(loss_normalizing_factor, 1.0)  # refuse unsupported factors before tracing
  gated = _gated(module)

  def grads_and_sums(params, batch, rng, gate_scale=None):
    grad_fn = jax.grad(
      lambda p: _sums(
        module, p, batch, rng if dropout else None, z_loss, label_smoothing, gate_scale
      ),
      has_aux=True,
    )
    return grad_fn(params)

  def step(state, batch, rng):
    params = state["params"]
    rng = jax.random.fold_in(rng, state["step"])
    gate_scale = alpha = None
    if gated:
      # α · Σ G / N over the whole batch's N real tokens, scaled by the LM loss's normaliser
      # (the gradients are divided by it below): each microbatch adds its share, so the
      # update equals the one-big-batch update, as for the LM loss.
      pi = mrt5.PIState(**state[PI_KEY])
      alpha = mrt5.regularizer_weight(pi, state["step"], deletion.delay)
      num_real = jnp.maximum(jnp.sum(batch["encoder_input_tokens"] > 0, dtype=jnp.float32), 1.0)
      num_targets = jnp.sum(_target_weights(batch), dtype=jnp.float32)
      norm = _normalizer(loss_normalizing_factor, num_targets)
      gate_scale = jax.lax.stop_gradient(alpha * norm / num_real)
    if accumulation_steps == 1:
      grads, sums = grads_and_sums(params, batch, rng, gate_scale)
    else:
      micro = _microbatches(batch, accumulation_steps)

      def body(carry, i):
        mb = {k: _batch_constraint(v[i]) for k, v in micro.items()}
        g, s = grads_and_sums(params, mb, jax.random.fold_in(rng, i), gate_scale)
        return jax.tree.map(jnp.add, carry, (g, s)), None

      zeros = (
        jax.tree.map(jnp.zeros_like, params),
        {k: jnp.zeros((), jnp.float32) for k in _sum_keys(module)},
      )
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
    if gated:
      new_state[PI_KEY] = _controller_step(pi, metrics["deleted_fraction"], state["step"], deletion)
      metrics.update(gate_loss=alpha * metrics["mean_gate"], alpha=alpha)
    lr = learning_rate(state["step"]) if callable(learning_rate) else learning_rate
    metrics.update(
      learning_rate=jnp.asarray(lr, jnp.float32),
      grad_norm=optax.tree.norm(grads),
      param_norm=optax.tree.norm(params),
    )
    return new_state, metrics

  return step


def _controller_step(pi: mrt5.PIState, deleted, step, deletion: DeletionConfig) -> dict:
  """The controller after this step (the authors': unchanged while `step < delay`, and with
  no target α stays `alpha0`), as the train state holds it."""
  if deletion.target is None:
    return pi._asdict()
  new = mrt5.pi_update(pi, deleted, deletion.target, deletion.k_p, deletion.k_i)
  waiting = jnp.asarray(step) < deletion.delay
  return {k: jnp.where(waiting, old, upd) for k, old, upd in zip(pi._fields, pi, new)}


def _batch_constraint(x):
  """Keeps a microbatch sharded like the batch ('batch' first, the rest unsharded)."""
  names = ("batch",) + ("length",) * (x.ndim - 1)
  return nn.with_logical_constraint(x, names)


def make_eval_step(module: Transformer, *, z_loss: float = 1e-4):
  """`eval_step(params, batch) -> sums` (teacher-forced, no dropout); add the sums of every
  batch and finish with `metrics_from_sums`. Zero-padded rows have no weight. A gated model
  deletes softly here, as in training; its sums give the deleted fraction."""

  def eval_step(params, batch):
    return _sums(module, params, batch, None, z_loss, 0.0)[1]

  return eval_step
