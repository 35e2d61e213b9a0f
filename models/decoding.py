"""Autoregressive decoding and sequence scoring for `models.network.Transformer`.

Everything here is a pure function of (module, params, arrays); each public decoder is one
`jax.jit` whose whole decode loop is a `lax.while_loop` over a KV cache (no host round trip per
step).

Shapes in names follow the project's legend: B batch, T target/query length, S source/key length,
D d_model, H heads, K head dim, F d_ff, V vocab, E layers (scan axis), W beams, P prompt width,
L max decode length, N = P + L decode buffer. Letters of this module only: C the 2W candidates of
a beam step (the entries `_blocked_top_k` keeps), R the B * W rows of the beam-folded batch, M a
row of `_blocked_top_k`'s input (W * V in beam search), G its blocks of Z positions each; a
lowercase x stands for any leading axes.

Conventions (T5 / seqio): pad = 0, EOS = 1 (`eos_id`), the decoder starts from token 0 at
position 0.

Decoder prompts
---------------
Both architectures decode a *prompt* and continue it:
  * encoder-decoder: the prompt is the decoder start token, `[0]` (override with
    `decoder_prompt_tokens` to force a decoder prefix; it must start with 0 itself);
  * decoder-only: `decoder_prompt_tokens` [B, P], left-aligned and 0-padded. Its tokens are fed
    as they are, so a model trained with seqio's LM converter (inputs shifted right behind a 0)
    wants the leading 0 in the prompt. Row b's prompt length is the index of its last non-zero
    token + 1 (at least 1: position 0 is always fed), or `decoder_prompt_lengths` [B] if given.
    With `prefix_lm=True` prompt positions see each other (the network's `prefix_length_B`,
    i.e. T5X's `decoder_causal_attention`), else attention is causal throughout.

The whole padded prompt [B, P] is prefilled in one `decode_step` call (T = P: the common prefix
and more, with a static shape, so batches with other prompt lengths reuse the compiled code);
then tokens are stepped one at a time from the shortest prompt length on, and positions still
inside a row's prompt are forced to the prompt token (their K/V are rewritten with the same
values; prefill K/V of pad positions are overwritten before any query can see them).

Outputs
-------
`tokens` are the *continuation* only: row b's column j is the token generated at position
`prompt_length_b + j`; after EOS (which is kept) every column is 0, and a row that never emits
EOS has `max_decode_length` tokens. Scores:
  * greedy / sampling: sum of the model's log-probabilities (log_softmax of the raw logits: no
    temperature or top-k/top-p filtering) of the generated tokens, EOS included;
  * beam search: that sum divided by T5X's length penalty `((5 + len) / 6) ** alpha`, `len`
    being the number of generated tokens (EOS included; `max_decode_length` for sequences that
    reach the limit without EOS).
Nothing stops a model from generating the pad id 0 (T5X and HF do not either); such a token is
indistinguishable from padding in `tokens`.

Every decoder and `score_sequences` take `encoded=`, an encoder output computed beforehand
(an MrT5 model's hard-deletion memory, `mrt5.hard_encode`); by default they encode inside their
jitted call.

Performance: pass params as device arrays (`jax.device_put(params)` once); NumPy params are
copied to the device on every call (README, Benchmarks).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Finite "minus infinity" for beam bookkeeping: sums of it stay finite, and real log-probs
# (>= -1e4 or so) are never confused with it.
NEG_INF = -1.0e7

METHODS = ("greedy", "sample", "beam")


class DecodeResult(NamedTuple):
  tokens: jax.Array  # [B, L] int32 (greedy / sampling) or [B, W, L] (beam, best beam first)
  scores: jax.Array  # [B] or [B, W] float32
  num_steps: jax.Array  # scalar int32: decode positions actually run (early stop shows here)


def length_penalty(length, alpha: float):
  """T5X's brevity penalty `((5 + length) / 6) ** alpha`."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def prompt_lengths(decoder_prompt_tokens_BP):
  """Index of each row's last non-zero token + 1, at least 1."""
  P = decoder_prompt_tokens_BP.shape[1]
  last = jnp.max(jnp.where(decoder_prompt_tokens_BP != 0, jnp.arange(1, P + 1), 0), axis=1)
  return jnp.maximum(last, 1).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# Shared plumbing


def _is_encoder_decoder(module) -> bool:
  return module.config.architecture == "encoder_decoder"


def _check_inputs(module, encoder_input_tokens, decoder_prompt_tokens, max_decode_length):
  if max_decode_length < 1:
    raise ValueError(f"max_decode_length={max_decode_length}; must be >= 1")
  if _is_encoder_decoder(module):
    if encoder_input_tokens is None:
      raise ValueError("an encoder-decoder model needs encoder_input_tokens")
  else:
    if encoder_input_tokens is not None:
      raise ValueError("a decoder-only model takes no encoder_input_tokens")
    if decoder_prompt_tokens is None:
      raise ValueError(
        "a decoder-only model needs decoder_prompt_tokens [B, P] (at least the "
        "start token 0 per row)"
      )


class _Prompt(NamedTuple):
  """A prefilled prompt: what every decoder starts from (see `_prefill`)."""

  step: Callable  # step(cache, tokens_BT, index, *step_args) -> (logits_BTV, cache)
  step_args: tuple  # (encoded, encoder_input_tokens, prefix_B) for `step`
  cache: Any  # KV cache holding the whole prompt buffer (cache length N - 1)
  seq_BN: jax.Array  # int32 decode buffer: each row's prompt, 0 right of it
  prompt_len_B: jax.Array  # int32 prompt lengths
  start: jax.Array  # int32 scalar: min(prompt_len_B) - 1, the last position in every prompt
  logits_BV: jax.Array  # the logits at `start`, which pick the token at start + 1


def _prompt_width(decoder_prompt_tokens) -> int:
  """P, the static prompt width (1 for the default encoder-decoder start token)."""
  return 1 if decoder_prompt_tokens is None else decoder_prompt_tokens.shape[1]


def _prefill(
  module,
  params,
  encoder_input_tokens,
  decoder_prompt_tokens,
  decoder_prompt_lengths,
  max_decode_length: int,
  prefix_lm: bool,
  encoded=None,
) -> _Prompt:
  """Encodes (unless `encoded` is given), prefills the padded prompt [B, P] in one
  `decode_step` call and lays out the decode buffer [B, N] that the decoders then fill position
  by position."""
  P = _prompt_width(decoder_prompt_tokens)
  N = P + max_decode_length
  if _is_encoder_decoder(module):
    B = encoder_input_tokens.shape[0]
    if encoded is None:
      encoded = module.apply({"params": params}, encoder_input_tokens, method="encode")
    if decoder_prompt_tokens is None:
      decoder_prompt_tokens = jnp.zeros((B, 1), jnp.int32)
  else:
    encoded = None
  prompt_BP = jnp.asarray(decoder_prompt_tokens, jnp.int32)
  prompt_len_B = (
    prompt_lengths(prompt_BP)
    if decoder_prompt_lengths is None
    else jnp.asarray(decoder_prompt_lengths, jnp.int32)
  )
  prefix_B = prompt_len_B if prefix_lm else None

  def call(variables, tokens_BT, index, encoded, enc_tokens, prefix_B):
    logits, mutated = module.apply(
      variables,
      tokens_BT,
      index,
      N - 1,
      encoded,
      enc_tokens,
      prefix_B,
      method="decode_step",
      mutable=["cache"],
    )
    return logits, mutated["cache"]

  logits_BPV, cache = call(
    {"params": params}, prompt_BP, jnp.int32(0), encoded, encoder_input_tokens, prefix_B
  )

  def step(cache, tokens_BT, index, encoded, enc_tokens, prefix_B):
    return call({"params": params, "cache": cache}, tokens_BT, index, encoded, enc_tokens, prefix_B)

  B = prompt_BP.shape[0]
  seq_BN = jnp.zeros((B, N), jnp.int32).at[:, :P].set(prompt_BP)
  # only the real prompt is forced; anything right of it in the buffer must read as pad.
  seq_BN = jnp.where(jnp.arange(N) < prompt_len_B[:, None], seq_BN, 0)
  start = jnp.min(prompt_len_B) - 1  # last position that every row has in its prompt
  return _Prompt(
    step=step,
    step_args=(encoded, encoder_input_tokens, prefix_B),
    cache=cache,
    seq_BN=seq_BN,
    prompt_len_B=prompt_len_B,
    start=start,
    logits_BV=jax.lax.dynamic_index_in_dim(logits_BPV, start, axis=1, keepdims=False),
  )


def _continuation(seq_xN, prompt_len_x, L: int):
  """Row-wise slice seq[..., p : p + L] of the generated part."""
  idx = prompt_len_x[..., None] + jnp.arange(L)
  return jnp.take_along_axis(seq_xN, idx, axis=-1)


def _column(seq_BN, pos):
  return jax.lax.dynamic_index_in_dim(seq_BN, pos, axis=1, keepdims=False)


# ----------------------------------------------------------------------------------------------
# Greedy and temperature sampling


def _filter_logits(logits_BV, top_k: int, top_p: float):
  """Masks (to -inf) tokens outside the top-k and outside the top-p nucleus."""
  if top_k > 0 and top_k < logits_BV.shape[-1]:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  if top_p < 1.0:
    sorted_BV = -jnp.sort(-logits_BV, axis=-1)  # descending
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    # keep the smallest prefix whose mass reaches top_p (the top token always stays).
    keep_BV = mass_before_BV < top_p
    cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
  return logits_BV


def _sample_impl(
  module,
  params,
  encoder_input_tokens,
  decoder_prompt_tokens,
  decoder_prompt_lengths,
  rng,
  temperature,
  *,
  max_decode_length: int,
  greedy: bool,
  top_k: int,
  top_p: float,
  eos_id: int,
  prefix_lm: bool,
  encoded=None,
):
  L = max_decode_length
  prompt = _prefill(
    module,
    params,
    encoder_input_tokens,
    decoder_prompt_tokens,
    decoder_prompt_lengths,
    L,
    prefix_lm,
    encoded,
  )
  prompt_len_B = prompt.prompt_len_B
  B, N = prompt.seq_BN.shape
  last_pos_B = prompt_len_B + L - 1  # position of each row's last allowed token

  def advance(i, seq_BN, done_B, logp_B, logits_BV):
    """Picks the token at position i + 1 from the logits at position i."""
    pos = i + 1
    logits_BV = logits_BV.astype(jnp.float32)
    if greedy:
      tok_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    else:
      filtered = _filter_logits(logits_BV / temperature, top_k, top_p)
      tok_B = jax.random.categorical(jax.random.fold_in(rng, pos), filtered).astype(jnp.int32)
    lp_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BV), tok_B[:, None], axis=-1)[:, 0]
    write_B = (pos >= prompt_len_B) & ~done_B
    col_B = jnp.where(write_B, tok_B, _column(seq_BN, pos))
    seq_BN = jax.lax.dynamic_update_slice(seq_BN, col_B[:, None], (0, pos))
    logp_B = logp_B + jnp.where(write_B, lp_B, 0.0)
    done_B = done_B | (write_B & (tok_B == eos_id)) | (pos >= last_pos_B)
    return pos, seq_BN, done_B, logp_B

  carry = advance(
    prompt.start,
    prompt.seq_BN,
    jnp.zeros((B,), bool),
    jnp.zeros((B,), jnp.float32),
    prompt.logits_BV,
  ) + (prompt.cache,)

  def cond(carry):
    i, _, done_B, _, _ = carry
    return (i < N - 1) & ~jnp.all(done_B)

  def body(carry):
    i, seq_BN, done_B, logp_B, cache = carry
    logits_B1V, cache = prompt.step(cache, _column(seq_BN, i)[:, None], i, *prompt.step_args)
    return advance(i, seq_BN, done_B, logp_B, logits_B1V[:, 0]) + (cache,)

  i, seq_BN, _, logp_B, _ = jax.lax.while_loop(cond, body, carry)
  return DecodeResult(_continuation(seq_BN, prompt_len_B, L), logp_B, i - prompt.start)


_SAMPLE_STATIC = ("module", "max_decode_length", "greedy", "top_k", "top_p", "eos_id", "prefix_lm")
_sample_jit = jax.jit(_sample_impl, static_argnames=_SAMPLE_STATIC)


def greedy_decode(
  module,
  params,
  *,
  encoder_input_tokens=None,
  decoder_prompt_tokens=None,
  decoder_prompt_lengths=None,
  max_decode_length: int,
  eos_id: int = 1,
  prefix_lm: bool = False,
  encoded=None,
) -> DecodeResult:
  """Argmax decoding. Returns tokens [B, L], scores [B] (sum of token log-probs), num_steps."""
  _check_inputs(module, encoder_input_tokens, decoder_prompt_tokens, max_decode_length)
  return _sample_jit(
    module,
    params,
    encoder_input_tokens,
    decoder_prompt_tokens,
    decoder_prompt_lengths,
    None,
    None,
    max_decode_length=max_decode_length,
    greedy=True,
    top_k=0,
    top_p=1.0,
    eos_id=eos_id,
    prefix_lm=prefix_lm,
    encoded=encoded,
  )


def temperature_sample(
  module,
  params,
  rng,
  *,
  encoder_input_tokens=None,
  decoder_prompt_tokens=None,
  decoder_prompt_lengths=None,
  max_decode_length: int,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  eos_id: int = 1,
  prefix_lm: bool = False,
  encoded=None,
) -> DecodeResult:
  """Samples from softmax(logits / temperature), optionally restricted to the top-k tokens
  and/or the top-p nucleus (applied in that order). Deterministic given `rng`; the key for
  position t is `fold_in(rng, t)`. temperature=0 is greedy. Scores are the model's (untempered)
  log-probs of the sampled tokens, summed."""
  _check_inputs(module, encoder_input_tokens, decoder_prompt_tokens, max_decode_length)
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p={top_p}; must be in (0, 1]")
  if top_k < 0 or temperature < 0:
    raise ValueError(f"top_k={top_k}, temperature={temperature}; must be >= 0")
  if temperature == 0:
    return greedy_decode(
      module,
      params,
      encoder_input_tokens=encoder_input_tokens,
      decoder_prompt_tokens=decoder_prompt_tokens,
      decoder_prompt_lengths=decoder_prompt_lengths,
      max_decode_length=max_decode_length,
      eos_id=eos_id,
      prefix_lm=prefix_lm,
      encoded=encoded,
    )
  if rng is None:
    raise ValueError("sampling needs a PRNG key (rng)")
  return _sample_jit(
    module,
    params,
    encoder_input_tokens,
    decoder_prompt_tokens,
    decoder_prompt_lengths,
    rng,
    jnp.float32(temperature),
    max_decode_length=max_decode_length,
    greedy=False,
    top_k=int(top_k),
    top_p=float(top_p),
    eos_id=eos_id,
    prefix_lm=prefix_lm,
    encoded=encoded,
  )


# ----------------------------------------------------------------------------------------------
# Beam search


def _is_cross_attention_path(path) -> bool:
  return any(getattr(k, "key", None) == "encoder_decoder_attention" for k in path)


def _assign_slots(parent_BW, needs_copy_BW):
  """Cache slots for the new alive beams, so that the cache moves as little as possible.

  Beam w (sorted by score) descends from the beam in slot `parent_BW[b, w]`. The first child of
  each parent inherits the parent's slot; the other children take the slots nobody inherited
  (in order) and need a copy of the parent's cache row. Returns (slot_BW, copy_BW): the slots
  (a permutation of 0..W-1 per example) and which beams need that copy (only where
  `needs_copy_BW`: dead beams never do). Sources of copies are always inherited slots, so they
  are never overwritten by another copy: the copies can run in any order.
  """
  W = parent_BW.shape[1]
  earlier_WW = jnp.tril(jnp.ones((W, W), bool), -1)  # [w, w']: w' < w
  same_BWW = parent_BW[:, :, None] == parent_BW[:, None, :]
  first_BW = ~jnp.any(same_BWW & earlier_WW, axis=2)
  # per slot: whether a first child inherits it, and its rank among the slots nobody inherits
  taken_BW = jnp.any(first_BW[:, :, None] & (parent_BW[:, :, None] == jnp.arange(W)), axis=1)
  free_rank_BW = jnp.cumsum(~taken_BW, axis=1) - 1  # j-th free slot
  child_rank_BW = jnp.cumsum(~first_BW, axis=1) - 1  # per beam: j-th non-first child
  # [b, beam, slot]: the beam's child rank is the slot's free rank
  match_BWW = (~taken_BW[:, None, :]) & (free_rank_BW[:, None, :] == child_rank_BW[:, :, None])
  free_slot_BW = jnp.sum(jnp.where(match_BWW, jnp.arange(W), 0), axis=2)
  slot_BW = jnp.where(first_BW, parent_BW, free_slot_BW)
  return slot_BW, ~first_BW & needs_copy_BW


# Positions per block when copying a cache row (see `_copy_rows`).
_COPY_BLOCK = 16


def _copy_rows(cache, src_R, dst_R, count, length):
  """cache[dst_R[j], ..., :length, :] = cache[src_R[j], ..., :length, :] for j < count, in place
  (axis 0 of every self-attention leaf; the sequence axis is the second to last:
  [R, ..., H, N - 1, K]).

  Only the first `length` positions (those written so far) are copied, in blocks of
  `_COPY_BLOCK`; later positions are rewritten before any query can see them. Cross-attention
  K/V have one row per example, shared by its beams: they are skipped.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(cache)
  leaves = [x for _, x in flat]
  rows = [i for i, (path, _) in enumerate(flat) if not _is_cross_attention_path(path)]
  if not rows:
    return cache
  # bf16 leaves are copied as their uint16 bits: XLA:CPU widens a bf16 dynamic-update-slice to
  # float32 and back, a whole-buffer copy per block (README, Benchmarks).
  moved = [
    jax.lax.bitcast_convert_type(leaves[i], jnp.uint16)
    if leaves[i].dtype == jnp.bfloat16
    else leaves[i]
    for i in rows
  ]
  cache_len = moved[0].shape[-2]
  blk = min(_COPY_BLOCK, cache_len)
  nblk = (length + blk - 1) // blk  # blocks per row

  def body(carry):
    t, xs = carry
    j, start = t // nblk, (t % nblk) * blk  # a block past cache_len - blk is clamped: still ok

    def copy(x):
      size = (1,) + x.shape[1:-2] + (blk, x.shape[-1])
      idx = lambda row: (row,) + (0,) * (x.ndim - 3) + (start, 0)
      block = jax.lax.dynamic_slice(x, idx(src_R[j]), size)
      return jax.lax.dynamic_update_slice(x, block, idx(dst_R[j]))

    return t + 1, [copy(x) for x in xs]

  moved = jax.lax.while_loop(lambda c: c[0] < count * nblk, body, (jnp.int32(0), moved))[1]
  for i, x in zip(rows, moved):
    leaves[i] = jax.lax.bitcast_convert_type(x, leaves[i].dtype)  # a no-op for unchanged dtypes
  return jax.tree_util.tree_unflatten(treedef, leaves)


# Block width of `_blocked_top_k`.
_TOPK_BLOCK = 128


def _blocked_top_k(x_BM, k: int):
  """`jax.lax.top_k(x_BM, k)` (same values, indices and tie order) for long rows, via block
  maxima: on XLA:CPU a top-k over [B, W * V] costs more than the max reduction that finds its
  blocks. The k best entries lie in the k blocks with the best maxima (ties to the lower block,
  as top_k breaks them), so it takes those blocks, in their original order, and runs top_k on
  them alone. Returns values and indices [B, C], C = k.
  """
  B, M = x_BM.shape
  Z = _TOPK_BLOCK
  G = -(-M // Z)
  if G <= k:
    return jax.lax.top_k(x_BM, k)
  x_BGZ = jnp.pad(x_BM, ((0, 0), (0, G * Z - M)), constant_values=-jnp.inf).reshape(B, G, Z)
  _, blocks_BC = jax.lax.top_k(jnp.max(x_BGZ, axis=2), k)
  blocks_BC = jnp.sort(blocks_BC, axis=1)  # flat order, so ties break as in top_k
  cand_BCZ = jnp.take_along_axis(x_BGZ, blocks_BC[:, :, None], axis=1)
  vals_BC, pick_BC = jax.lax.top_k(cand_BCZ.reshape(B, k * Z), k)
  idx_BC = jnp.take_along_axis(blocks_BC, pick_BC // Z, axis=1) * Z + pick_BC % Z
  return vals_BC, idx_BC.astype(jnp.int32)


class _BeamState(NamedTuple):
  """Beam search's `lax.while_loop` state once position `pos` is written.

  Alive beams sit in cache-slot order (slot w of example b is row b * W + w of the folded
  cache), not in score order; finished hypotheses are kept best first.
  """

  pos: jax.Array  # int32 scalar: the last position written
  alive_seq_BWN: jax.Array  # int32 decode buffers of the alive beams
  alive_logp_BW: jax.Array  # float32 their log-probs (NEG_INF: an empty slot)
  fin_seq_BWN: jax.Array  # int32 decode buffers of the finished hypotheses
  fin_score_BW: jax.Array  # float32 their length-penalised log-probs (NEG_INF: none yet)
  fin_flag_BW: jax.Array  # bool whether the entry holds a finished hypothesis
  cache: Any  # KV cache: self-attention rows folded [R, ...], cross-attention K/V [B, ...]


class _Candidates(NamedTuple):
  """A beam step's 2W best continuations (C = 2W), best first."""

  logp_BC: jax.Array  # float32 log-probs
  parent_BC: jax.Array  # int32 the slot of the alive beam each one continues
  seq_BCN: jax.Array  # int32 the parent's buffer with the new token at `pos`
  finished_BC: jax.Array  # bool ends at `pos`: EOS or the length limit (never in a prompt)
  gen_len_B1: jax.Array  # int32 tokens generated so far, the new one included


def _beam_impl(
  module,
  params,
  encoder_input_tokens,
  decoder_prompt_tokens,
  decoder_prompt_lengths,
  *,
  max_decode_length: int,
  num_beams: int,
  alpha: float,
  eos_id: int,
  prefix_lm: bool,
  encoded=None,
):
  L, W = max_decode_length, num_beams
  prompt = _prefill(
    module,
    params,
    encoder_input_tokens,
    decoder_prompt_tokens,
    decoder_prompt_lengths,
    L,
    prefix_lm,
    encoded,
  )
  seq_BN, prompt_len_B = prompt.seq_BN, prompt.prompt_len_B
  (B, N), V = seq_BN.shape, prompt.logits_BV.shape[-1]
  # fold beams into the batch: self-attention cache row b * W + w is slot w of example b. The
  # encoder output and cross-attention K/V keep one row per example, shared by its beams.
  fold = lambda x: None if x is None else jnp.repeat(x, W, axis=0)
  cache = jax.tree_util.tree_map_with_path(
    lambda path, x: x if _is_cross_attention_path(path) else fold(x), prompt.cache
  )
  encoded, enc_tokens, prefix_B = prompt.step_args
  step_args = (encoded, enc_tokens, fold(prefix_B))
  max_penalty = length_penalty(L, alpha)
  row_offset_B1 = (jnp.arange(B) * W)[:, None]

  def expand(alive_logp_BW, logits_BWV, pos, in_prompt_B):
    """Log-probs [B, W, V] of every one-token continuation of every alive beam; inside a row's
    prompt only the prompt token continues it (at no cost)."""
    lp_BWV = jax.nn.log_softmax(logits_BWV.astype(jnp.float32), axis=-1)
    forced_tok_B = _column(seq_BN, pos)  # the prompt buffer
    forced_lp_BV = jnp.where(jnp.arange(V) == forced_tok_B[:, None], 0.0, NEG_INF)
    lp_BWV = jnp.where(in_prompt_B[:, None, None], forced_lp_BV[:, None], lp_BWV)
    return alive_logp_BW[:, :, None] + lp_BWV

  def top_2w(cand_BWV, alive_seq_BWN, pos, in_prompt_B) -> _Candidates:
    """The 2W best continuations (at most W of them finish, so W stay alive), each marked
    finished or not."""
    logp_BC, idx_BC = _blocked_top_k(cand_BWV.reshape(B, W * V), 2 * W)
    parent_BC, tok_BC = idx_BC // V, (idx_BC % V).astype(jnp.int32)
    seq_BCN = jnp.take_along_axis(alive_seq_BWN, parent_BC[:, :, None], axis=1)
    seq_BCN = jax.lax.dynamic_update_slice(seq_BCN, tok_BC[:, :, None], (0, 0, pos))
    gen_len_B1 = (pos - prompt_len_B + 1)[:, None]
    valid_BC = logp_BC > NEG_INF / 2
    ends_BC = (tok_BC == eos_id) | (gen_len_B1 >= L)
    finished_BC = ~in_prompt_B[:, None] & valid_BC & ends_BC
    return _Candidates(logp_BC, parent_BC, seq_BCN, finished_BC, gen_len_B1)

  def keep_alive(top: _Candidates, cache, pos, copy_cache: bool):
    """The best W unfinished candidates, placed into cache slots (`_assign_slots`), with the
    cache rows of beams that branched off a shared parent copied into their slots."""
    logp_BW, pick_BW = jax.lax.top_k(jnp.where(top.finished_BC, NEG_INF, top.logp_BC), W)
    parent_BW = jnp.take_along_axis(top.parent_BC, pick_BW, axis=1)
    slot_BW, copy_BW = _assign_slots(parent_BW, logp_BW > NEG_INF / 2)
    beam_of_slot_BW = jnp.argsort(slot_BW, axis=1)
    pick_of_slot_BW = jnp.take_along_axis(pick_BW, beam_of_slot_BW, axis=1)
    alive_logp_BW = jnp.take_along_axis(logp_BW, beam_of_slot_BW, axis=1)
    alive_seq_BWN = jnp.take_along_axis(top.seq_BCN, pick_of_slot_BW[:, :, None], axis=1)
    if copy_cache:
      # copies first in the list (stable order), then the count of them.
      order_R = jnp.argsort((~copy_BW).reshape(B * W).astype(jnp.int32), stable=True)
      src_R = (row_offset_B1 + parent_BW).reshape(B * W)[order_R]
      dst_R = (row_offset_B1 + slot_BW).reshape(B * W)[order_R]
      cache = _copy_rows(cache, src_R, dst_R, jnp.sum(copy_BW), pos)
    return alive_seq_BWN, alive_logp_BW, cache

  def merge_finished(state: _BeamState, top: _Candidates):
    """The best W of the hypotheses finished so far and the newly finished candidates, these
    scored log_prob / length_penalty."""
    penalty_B1 = length_penalty(top.gen_len_B1, alpha)
    new_score_BC = jnp.where(top.finished_BC, top.logp_BC / penalty_B1, NEG_INF)
    # a pool of W + C: the old ones first, so they win ties
    pool_score = jnp.concatenate([state.fin_score_BW, new_score_BC], axis=1)
    pool_flag = jnp.concatenate([state.fin_flag_BW, top.finished_BC], axis=1)
    pool_seq = jnp.concatenate([state.fin_seq_BWN, top.seq_BCN], axis=1)
    fin_score_BW, pick_BW = jax.lax.top_k(pool_score, W)
    fin_flag_BW = jnp.take_along_axis(pool_flag, pick_BW, axis=1)
    fin_seq_BWN = jnp.take_along_axis(pool_seq, pick_BW[:, :, None], axis=1)
    return fin_seq_BWN, fin_score_BW, fin_flag_BW

  # Alive beams live in cache *slots* (row b * W + slot): their order in the state is the slot
  # order, not the score order, so a step only copies the cache rows of beams that branched off
  # a parent another beam also continues, instead of gathering the whole cache.
  def advance(state: _BeamState, logits_BWV, copy_cache=True) -> _BeamState:
    """One beam step: the token at position state.pos + 1 from the logits at state.pos."""
    pos = state.pos + 1
    in_prompt_B = pos < prompt_len_B
    cand_BWV = expand(state.alive_logp_BW, logits_BWV, pos, in_prompt_B)
    top = top_2w(cand_BWV, state.alive_seq_BWN, pos, in_prompt_B)
    alive_seq_BWN, alive_logp_BW, cache = keep_alive(top, state.cache, pos, copy_cache)
    fin_seq_BWN, fin_score_BW, fin_flag_BW = merge_finished(state, top)
    return _BeamState(
      pos, alive_seq_BWN, alive_logp_BW, fin_seq_BWN, fin_score_BW, fin_flag_BW, cache
    )

  initial = _BeamState(
    pos=prompt.start,
    alive_seq_BWN=jnp.broadcast_to(seq_BN[:, None], (B, W, N)),
    # only beam 0 is live at first, so the first expansion has no duplicates.
    alive_logp_BW=jnp.where(jnp.arange(W) == 0, 0.0, NEG_INF) * jnp.ones((B, 1), jnp.float32),
    fin_seq_BWN=jnp.zeros((B, W, N), jnp.int32),
    fin_score_BW=jnp.full((B, W), NEG_INF, jnp.float32),
    fin_flag_BW=jnp.zeros((B, W), bool),
    cache=cache,
  )
  logits_BWV = jnp.broadcast_to(prompt.logits_BV[:, None], (B, W, V))
  # every slot holds the same (prompt) cache yet: nothing to copy on the first expansion.
  state = advance(initial, logits_BWV, copy_cache=False)

  def cond(state: _BeamState):
    # alpha >= 0: an alive beam can at best keep its log-prob and get the largest penalty.
    best_alive_B = jnp.max(state.alive_logp_BW, axis=1) / max_penalty
    all_fin_B = jnp.all(state.fin_flag_BW, axis=1)
    worst_fin_B = jnp.where(all_fin_B, jnp.min(state.fin_score_BW, axis=1), -jnp.inf)
    return (state.pos < N - 1) & ~jnp.all(worst_fin_B > best_alive_B)

  def body(state: _BeamState):
    tokens_R1 = _column(state.alive_seq_BWN.reshape(B * W, N), state.pos)[:, None]
    logits_R1V, cache = prompt.step(state.cache, tokens_R1, state.pos, *step_args)
    return advance(state._replace(cache=cache), logits_R1V.reshape(B, W, V))

  state = jax.lax.while_loop(cond, body, state)
  # Every row finishes something by its last position; keep a fallback for safety.
  none_B = ~jnp.any(state.fin_flag_BW, axis=1)
  alive_logp_BW, best_BW = jax.lax.top_k(state.alive_logp_BW, W)  # slot order -> score order
  alive_seq_BWN = jnp.take_along_axis(state.alive_seq_BWN, best_BW[:, :, None], axis=1)
  fin_seq_BWN = jnp.where(none_B[:, None, None], alive_seq_BWN, state.fin_seq_BWN)
  fin_score_BW = jnp.where(none_B[:, None], alive_logp_BW / max_penalty, state.fin_score_BW)
  tokens_BWL = _continuation(fin_seq_BWN, prompt_len_B[:, None], L)
  return DecodeResult(tokens_BWL, fin_score_BW, state.pos - prompt.start)


_beam_jit = jax.jit(
  _beam_impl,
  static_argnames=("module", "max_decode_length", "num_beams", "alpha", "eos_id", "prefix_lm"),
)


def beam_search(
  module,
  params,
  *,
  encoder_input_tokens=None,
  decoder_prompt_tokens=None,
  decoder_prompt_lengths=None,
  max_decode_length: int,
  num_beams: int = 4,
  alpha: float = 0.6,
  eos_id: int = 1,
  prefix_lm: bool = False,
  encoded=None,
) -> DecodeResult:
  """T5X/T2T beam search with `num_beams` alive and `num_beams` finished hypotheses.

  Each step expands the alive beams into their 2W best continuations; those ending in EOS (or
  reaching `max_decode_length`) join the finished set with score log_prob / length_penalty,
  the best W others stay alive. Stops early once no alive beam can beat the worst finished one
  (exact for alpha >= 0). Beams are folded into the batch (B * W rows of one `decode_step`),
  except the cross-attention K/V, which keep one row per example for all its beams; a step
  copies only the cache rows of beams that branched off a shared parent (see
  `_assign_slots`) rather than gathering the whole cache. Log-probs are the model's
  (log_softmax of the logits). Returns tokens [B, W, L] and scores [B, W], best first.
  """
  _check_inputs(module, encoder_input_tokens, decoder_prompt_tokens, max_decode_length)
  if num_beams < 1 or alpha < 0:
    raise ValueError(f"num_beams={num_beams}, alpha={alpha}; need num_beams >= 1, alpha >= 0")
  return _beam_jit(
    module,
    params,
    encoder_input_tokens,
    decoder_prompt_tokens,
    decoder_prompt_lengths,
    max_decode_length=max_decode_length,
    num_beams=num_beams,
    alpha=float(alpha),
    eos_id=eos_id,
    prefix_lm=prefix_lm,
    encoded=encoded,
  )


# ----------------------------------------------------------------------------------------------
# Scoring


def shift_right(tokens_BT, start_id: int = 0):
  """Decoder inputs from targets: `start_id`, then the targets but the last. NumPy in, NumPy
  out (host-side batches stay off the device); anything else goes through jax.numpy."""
  xp = np if isinstance(tokens_BT, np.ndarray) else jnp
  return xp.concatenate([xp.full_like(tokens_BT[:, :1], start_id), tokens_BT[:, :-1]], axis=1)


_SCORE_FEATURES = (
  "encoder_input_tokens",
  "decoder_input_tokens",
  "encoder_segment_ids",
  "decoder_segment_ids",
  "encoder_positions",
  "decoder_positions",
  "decoder_causal_attention",
)


@functools.partial(jax.jit, static_argnames=("module",))
def _score_jit(module, params, features, targets_BT, weights_BT, encoded=None):
  if encoded is None:
    logits_BTV = module.apply({"params": params}, **features)
  else:
    logits_BTV = module.apply(
      {"params": params},
      encoded,
      features["encoder_input_tokens"],
      features["decoder_input_tokens"],
      features.get("encoder_segment_ids"),
      features.get("decoder_segment_ids"),
      method="decode",
    )
  lp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  lp_BT = jnp.take_along_axis(lp_BTV, targets_BT[..., None], axis=-1)[..., 0]
  return jnp.sum(lp_BT * weights_BT, axis=-1)


def score_sequences(module, params, batch: Mapping[str, Any], *, encoded=None):
  """Teacher-forced log-likelihood [B] of `decoder_target_tokens`: the sum of log-probs over
  target positions with weight (`decoder_loss_weights`, default `targets > 0`).
  `encoded`: the encoder's output for the batch computed beforehand (encoder-decoder models;
  e.g. `mrt5.hard_encode`'s memory), or None to encode here.

  `decoder_input_tokens` defaults to the targets shifted right behind a 0. Encoder-decoder
  batches need `encoder_input_tokens`; decoder-only ones may carry `decoder_causal_attention`
  (prefix LM). Packed rows (segment ids) give per-row sums over all their segments.
  """
  targets_BT = jnp.asarray(batch["decoder_target_tokens"], jnp.int32)
  features = {k: jnp.asarray(batch[k]) for k in _SCORE_FEATURES if batch.get(k) is not None}
  if "decoder_input_tokens" not in features:
    features["decoder_input_tokens"] = shift_right(targets_BT)
  if _is_encoder_decoder(module) != ("encoder_input_tokens" in features):
    raise ValueError("encoder_input_tokens is required for (and only for) encoder-decoder models")
  if encoded is not None and not _is_encoder_decoder(module):
    raise ValueError("a decoder-only model has no encoder output; drop encoded")
  weights = batch.get("decoder_loss_weights")
  weights_BT = (targets_BT > 0) if weights is None else jnp.asarray(weights)
  return _score_jit(module, params, features, targets_BT, weights_BT.astype(jnp.float32), encoded)


# ----------------------------------------------------------------------------------------------
# Entry point


def decode(
  module,
  params,
  batch: Mapping[str, Any],
  *,
  method: str = "greedy",
  max_decode_length: int,
  num_beams: int = 4,
  alpha: float = 0.6,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  eos_id: int = 1,
  rng=None,
  prefix_lm: bool = False,
  return_all_beams: bool = False,
  encoded=None,
):
  """Decodes a seqio-style batch; returns (tokens [B, L] int32, scores [B] float32).

  batch: `encoder_input_tokens` [B, S] for encoder-decoder models; `decoder_prompt_tokens`
  [B, P] (left-aligned, 0-padded, see the module docstring) for decoder-only models, optional
  for encoder-decoder ones; optional `decoder_prompt_lengths` [B].
  method: 'greedy', 'sample' (temperature/top_k/top_p, needs `rng`) or 'beam'
  (num_beams/alpha). tokens are the continuation after the prompt, 0 after EOS; scores are
  summed log-probs (greedy/sample) or length-penalised log-probs (beam). With
  `return_all_beams` beam search returns [B, W, L] and [B, W], best first.
  encoded: the encoder's output for `encoder_input_tokens` computed beforehand (an MrT5 model's
  hard-deletion memory, `mrt5.hard_encode`); None encodes inside the decoder's jitted call.
  """
  kwargs = dict(
    encoder_input_tokens=batch.get("encoder_input_tokens"),
    decoder_prompt_tokens=batch.get("decoder_prompt_tokens"),
    decoder_prompt_lengths=batch.get("decoder_prompt_lengths"),
    max_decode_length=max_decode_length,
    eos_id=eos_id,
    prefix_lm=prefix_lm,
    encoded=encoded,
  )
  kwargs = {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
  if method == "greedy":
    out = greedy_decode(module, params, **kwargs)
  elif method == "sample":
    out = temperature_sample(
      module, params, rng, temperature=temperature, top_k=top_k, top_p=top_p, **kwargs
    )
  elif method == "beam":
    out = beam_search(module, params, num_beams=num_beams, alpha=alpha, **kwargs)
    if not return_all_beams:
      return out.tokens[:, 0], out.scores[:, 0]
  else:
    raise ValueError(f"method={method!r}; expected one of {METHODS}")
  return out.tokens, out.scores
