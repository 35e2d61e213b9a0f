"""MrT5 token deletion (Kallini et al., "MrT5: Dynamic Token Merging for Efficient Byte-level
Language Models", ICLR 2025): the delete gate, hard-deletion compaction, the gate regularizer and
the PI controller that sets its weight.

The gate sits on the input of encoder layer `delete_gate_layer` (L; the paper's 3: after three
layers). From the normed hidden state h it computes a logit z = w·h + b (b initialised to 1) and

    G = k · sigmoid(-z) ∈ (k, 0),   k = `sigmoid_mask_scale` (< 0; -30 in the paper),

with G = k on padding. Soft deletion (training) adds G to the attention logits along the key
axis of every encoder self-attention from layer L on and of the decoder's cross-attention.
Hard deletion (inference) removes the tokens with G <= threshold (default k/2) and runs the rest
on the compacted sequence, each kept token keeping its original position for the relative
position bias. The network wiring is in `models.network` (Encoder, Transformer).

Inference runs hard deletion as two jitted calls (`hard_encode`): the gate pass (layers before
the gate, then the gate) returns a `GatePass`, whose kept count the host reads to pick the static
compacted length S'; `encode_from_gate` then compacts and runs the later layers on S' slots from
the gate pass's hidden states, so every layer runs once; the decoder reads the `EncodedMemory`
(`decoding.decode(..., encoded=memory)`).

Everything here is a pure function or a small Flax module; the trainer calls:
  gate_values(intermediates)                       G [B, S] sowed by the forward pass
  gate_regularizer(gate_BS, real_BS, alpha)        α · mean(G) over real tokens (the loss term)
  deleted_fraction(gate_BS, real_BS, threshold)    the fraction of real tokens with G <= threshold
  pi_init(alpha0), pi_update(state, deleted, ...)  the paper's PI controller for α
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from models import layers
from models.config import T5Config

# The authors' gate norm is HF's T5LayerNorm with its default epsilon, whatever the config says.
GATE_NORM_EPSILON = 1e-6


class DeleteGate(nn.Module):
  """G [B, S] float32 = k · sigmoid(-(w · RMSNorm(x) + b)), k on padding (`real_BS` False).

  Params: `layer_norm/scale` [D] (with `gate_layer_norm`), `feed_forward/kernel` [D, 1]
  (Xavier-uniform, as the authors initialise it) and `feed_forward/bias` [1] (ones: a fresh gate
  starts near G = k · sigmoid(-1) ≈ 0.27 k, above the default threshold k/2, deleting little).
  The gate runs in float32 whatever the activation dtype: its values decide what is deleted.
  """

  config: T5Config

  @nn.compact
  def __call__(self, x_BSD, real_BS):
    cfg = self.config
    h_BSD = x_BSD.astype(jnp.float32)
    if cfg.gate_layer_norm:
      h_BSD = layers.RMSNorm(GATE_NORM_EPSILON, jnp.float32, name="layer_norm")(h_BSD)
    logit_BS1 = nn.Dense(
      1,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      precision=jax.lax.Precision.HIGHEST,
      kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("embed", None)),
      bias_init=nn.with_logical_partitioning(nn.initializers.ones, (None,)),
      name="feed_forward",
    )(h_BSD)
    k = jnp.float32(cfg.sigmoid_mask_scale)
    gate_BS = k * jax.nn.sigmoid(-logit_BS1[..., 0])
    return jnp.where(real_BS, gate_BS, k)


def key_bias(gate_BS):
  """G as an additive attention bias along the key axis, [B, 1, 1, S] float32."""
  return gate_BS.astype(jnp.float32)[:, None, None, :]


@flax.struct.dataclass
class EncodedMemory:
  """What a gated encoder hands the decoder: its output and the cross-attention's keys' state.

  encoded_BSD: encoder output (S is the compacted length after hard deletion);
  key_ok_BS: bool, a real (and, after hard deletion, kept) token in each slot;
  gate_BS: float32 G of each slot, added to the cross-attention logits;
  segment_ids_BS: packed rows' segment ids of each slot (None unpacked; 0 in empty slots).
  """

  encoded_BSD: jax.Array
  key_ok_BS: jax.Array
  gate_BS: jax.Array
  segment_ids_BS: Any = None


@flax.struct.dataclass
class GatePass:
  """The encoder up to and including the gate, for the rest of the encoder to start from.

  hidden_BSD: the hidden states entering encoder layer `delete_gate_layer` (what the gate reads);
  gate_BS: float32 G; real_BS: bool, a real (non-padding) token;
  segment_ids_BS: packed rows' segment ids (None unpacked).
  """

  hidden_BSD: jax.Array
  gate_BS: jax.Array
  real_BS: jax.Array
  segment_ids_BS: Any = None


def add_delete_gate(params, cfg: T5Config, seed: int = 0):
  """`params` of the same model without a gate (a ByT5 checkpoint, say), plus a freshly
  initialised gate for `cfg` at `encoder/delete_gate`: the paper's continued-pretraining start.
  Float32 NumPy-or-jax leaves in, the same tree with the gate out (other leaves untouched; with
  `cfg.scan_layers` the encoder's one stack splits at the gate into `layers` and
  `layers_after_gate`, as `models.network` scans a gated encoder)."""
  if cfg.delete_gate_layer is None:
    raise ValueError("add_delete_gate needs a config with delete_gate_layer set")
  if "delete_gate" in params.get("encoder", {}):
    raise ValueError("these params already hold a delete gate (encoder/delete_gate)")
  x = jnp.zeros((1, 1, cfg.d_model), jnp.float32)
  gate = DeleteGate(cfg).init(jax.random.PRNGKey(seed), x, jnp.ones((1, 1), bool))["params"]
  encoder = {**params["encoder"], "delete_gate": nn.unbox(gate)}
  if cfg.scan_layers:
    L, stack = cfg.delete_gate_layer, encoder.pop("layers")
    if L > 0:
      encoder["layers"] = jax.tree.map(lambda x: x[:L], stack)
    encoder["layers_after_gate"] = jax.tree.map(lambda x: x[L:], stack)
  return {**params, "encoder": encoder}


# ----------------------------------------------------------------------------------------------
# Hard deletion


def compaction(keep_BS, kept_length: int):
  """Source index [B, S'] of each kept token, in order, and whether the slot holds one [B, S'].

  Row b's kept tokens fill slots 0..n_b-1 (n_b = Σ keep_b), and slots beyond are empty (their
  index is some deleted token's, masked by the caller). A row keeping more than S' =
  `kept_length` tokens loses its last ones, so S' must bound every row's count
  (`kept_length_for`).
  """
  S = keep_BS.shape[1]
  if not 0 < kept_length <= S:
    raise ValueError(f"kept_length={kept_length}; expected 0 < kept_length <= {S}")
  # a stable sort puts the kept indices first, in their order (an O(S log S) sort of a bool row)
  idx_BS = jnp.argsort(~keep_BS, axis=1, stable=True).astype(jnp.int32)
  n_B = jnp.sum(keep_BS, axis=1, dtype=jnp.int32)
  valid_BS = jnp.arange(kept_length, dtype=jnp.int32)[None, :] < n_B[:, None]
  return idx_BS[:, :kept_length], valid_BS


def gather_slots(a_BSX, idx_BS):
  """a[b, idx[b, s], ...] for an array with batch and length first."""
  idx = idx_BS.reshape(idx_BS.shape + (1,) * (a_BSX.ndim - 2))
  return jnp.take_along_axis(a_BSX, idx, axis=1)


def kept_length_for(num_kept: int, length: int, bucket: int) -> int:
  """S' for a batch whose largest kept count is `num_kept`: rounded up to a multiple of
  `bucket` (at most `length`, at least one bucket), so at most ceil(S / bucket) shapes compile."""
  if bucket < 1:
    raise ValueError(f"bucket={bucket}; expected a positive number of tokens")
  return int(min(length, max(1, math.ceil(max(num_kept, 1) / bucket)) * bucket))


@jax.jit
def _max_kept(gate_BS, real_BS, threshold):
  return jnp.max(jnp.sum((gate_BS > threshold) & real_BS, axis=1))


def _hard_module(module, gate_BS, real_BS, bucket):
  """`module.clone(deletion='hard', kept_length=S')`, S' read on the host from the gate."""
  cfg = module.config
  n = int(_max_kept(gate_BS, real_BS, cfg.gate_threshold))
  return module.clone(deletion="hard", kept_length=kept_length_for(n, gate_BS.shape[1], bucket))


def _check_gated(module):
  if module.config.delete_gate_layer is None:
    raise ValueError("hard deletion needs a delete gate; set delete_gate_layer")


class HardEncoding(NamedTuple):
  """`hard_encode`'s result: the hard-deletion module for this batch (S' = `kept_length`) and
  the encoder's memory on S' slots, for `decoding.decode(module, params, batch, encoded=memory)`
  and `decoding.score_sequences(module, params, batch, encoded=memory)`."""

  module: Any
  memory: EncodedMemory


def hard_encode(
  module, params, encoder_input_tokens, encoder_segment_ids=None, *, bucket: int = 64
) -> HardEncoding:
  """Hard-deletion encoding of a batch, every encoder layer run once, in two jitted calls.

  `gate_pass` runs the layers before the gate and the gate at full length and returns their
  hidden states with G; the host reads the batch's largest kept count and rounds it up to
  `bucket` (S', static: one compile per S'); `encode_from_gate` compacts the kept tokens (in
  order, each with its original position's relative bias) into S' slots and runs the layers
  from `delete_gate_layer` on. The result equals `hard_deletion_module`'s module encoding the
  tokens from scratch.
  """
  _check_gated(module)
  tokens_BS = jnp.asarray(encoder_input_tokens)
  seg_BS = None if encoder_segment_ids is None else jnp.asarray(encoder_segment_ids)
  gp = gate_pass(module, params, tokens_BS, seg_BS)
  hard = _hard_module(module, gp.gate_BS, gp.real_BS, bucket)
  return HardEncoding(hard, encode_from_gate(hard, params, gp))


def hard_deletion_module(
  module, params, encoder_input_tokens, encoder_segment_ids=None, *, bucket: int = 64
):
  """`module` set up for hard deletion of this batch: `module.clone(deletion='hard',
  kept_length=S')`, S' the batch's largest kept count rounded up to `bucket`.

  The gate is computed here (jitted) to read S' on the host; the module's own `encode` then
  starts again from the tokens, so the layers before the gate run twice. Decoding and scoring
  use `hard_encode` instead, which hands the gate pass on; this module is for calling `apply`
  on tokens (`encode`, `__call__`), where the recomputation is the price of one call.
  """
  _check_gated(module)
  gate_BS = compute_gate(module, params, encoder_input_tokens, encoder_segment_ids)
  return _hard_module(module, gate_BS, jnp.asarray(encoder_input_tokens) > 0, bucket)


@functools.partial(jax.jit, static_argnames=("module",))
def compute_gate(module, params, tokens_BS, segment_ids_BS=None):
  """G [B, S] of a batch: the encoder's layers up to the gate and the gate, jitted."""
  return module.apply({"params": params}, tokens_BS, segment_ids_BS, method="delete_gate")


@functools.partial(jax.jit, static_argnames=("module",))
def gate_pass(module, params, tokens_BS, segment_ids_BS=None) -> GatePass:
  """The `GatePass` of a batch (the layers before the gate and the gate), jitted."""
  return module.apply({"params": params}, tokens_BS, segment_ids_BS, method="gate_pass")


@functools.partial(jax.jit, static_argnames=("module",))
def encode_from_gate(module, params, gate_pass: GatePass) -> EncodedMemory:
  """`module`'s encoder memory from a finished `gate_pass`: only the layers from
  `delete_gate_layer` on run (compacted to `module.kept_length` slots when it deletes hard)."""
  return module.apply({"params": params}, gate_pass, method="encode_from_gate")


# ----------------------------------------------------------------------------------------------
# Regularizer and PI controller


def _real_count(real_BS):
  return jnp.maximum(jnp.sum(real_BS, dtype=jnp.float32), 1.0)


def gate_regularizer(gate_BS, real_BS, alpha):
  """α · mean(G) over real tokens (G <= 0, so minimising it pushes G toward k: more deletion).
  α is a coefficient, not trained: no gradient flows into it."""
  real = real_BS.astype(jnp.float32)
  mean_gate = jnp.sum(gate_BS.astype(jnp.float32) * real) / _real_count(real_BS)
  return jax.lax.stop_gradient(jnp.asarray(alpha, jnp.float32)) * mean_gate


def deleted_fraction(gate_BS, real_BS, threshold):
  """Fraction of real tokens that hard deletion would drop (G <= threshold), float32."""
  deleted = (gate_BS <= threshold) & real_BS.astype(bool)
  return jnp.sum(deleted, dtype=jnp.float32) / _real_count(real_BS)


class PIState(NamedTuple):
  """The PI controller's state: float32 scalars, so it lives in (and checkpoints with) the
  train state."""

  p: jax.Array  # the smoothed proportional term
  i: jax.Array  # the integral term
  alpha: jax.Array  # the regularizer weight to use next


def pi_init(alpha0: float = 0.0) -> PIState:
  """Fresh controller state; α starts at `alpha0` (the authors' `delete_gate_loss_coeff`)."""
  z = jnp.zeros((), jnp.float32)
  return PIState(z, z, jnp.asarray(alpha0, jnp.float32))


def pi_update(state: PIState, deleted, target, k_p: float = 0.5, k_i: float = 1e-5) -> PIState:
  """One step of the paper's PI controller (Section 3.2), toward deleting `target` of the tokens:

      err = δ − deleted;  p ← 0.9·p + 0.1·k_p·err;  i ← i + k_i·err;  α = max(0, p + i).

  Pure and jittable; `deleted` is this step's `deleted_fraction`.
  """
  err = jnp.asarray(target, jnp.float32) - jnp.asarray(deleted, jnp.float32)
  p = 0.9 * state.p + 0.1 * jnp.float32(k_p) * err
  i = state.i + jnp.float32(k_i) * err
  return PIState(p, i, jnp.maximum(0.0, p + i))


def regularizer_weight(state: PIState, step, delay: int = 0):
  """α for the loss at `step`: 0 while `step < delay` (the authors' `regularizer_delay`)."""
  return jnp.where(jnp.asarray(step) < delay, jnp.float32(0.0), state.alpha)


__all__ = [
  "DeleteGate",
  "add_delete_gate",
  "EncodedMemory",
  "GatePass",
  "HardEncoding",
  "PIState",
  "compaction",
  "compute_gate",
  "deleted_fraction",
  "encode_from_gate",
  "gate_regularizer",
  "gate_pass",
  "gate_values",
  "hard_deletion_module",
  "hard_encode",
  "kept_length_for",
  "pi_init",
  "pi_update",
  "regularizer_weight",
]


def gate_values(intermediates) -> jax.Array:
  """The gate G [B, S] that `Transformer.__call__`/`encode` sowed (soft deletion), from the
  'intermediates' collection of `apply(..., mutable=['intermediates'])`."""
  return intermediates["delete_gate"][0]
