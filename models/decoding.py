"""Autoregressive decoding and sequence scoring for `models.network.Transformer`.

Everything here is a pure function of (module, params, arrays); each public decoder is one
`jax.jit` whose whole decode loop is a `lax.while_loop` over a KV cache (no host round trip per
step). Shapes in names: B batch, K beams, P prompt width, L max decode length, N = P + L sequence
buffer, V vocab, S encoder length.

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

Performance: pass params as device arrays (`jax.device_put(params)` once); NumPy params are
copied to the device on every call (~0.1-0.25 s for T5.1.1-small on CPU).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Finite "minus infinity" for beam bookkeeping: sums of it stay finite, and real log-probs
# (>= -1e4 or so) are never confused with it.
NEG_INF = -1.0e7

METHODS = ("greedy", "sample", "beam")


class DecodeResult(NamedTuple):
  tokens: jax.Array  # [B, L] int32 (greedy / sampling) or [B, K, L] (beam, best beam first)
  scores: jax.Array  # [B] or [B, K] float32
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


def _prefill(
  module,
  params,
  encoder_input_tokens,
  decoder_prompt_tokens,
  decoder_prompt_lengths,
  cache_len: int,
  prefix_lm: bool,
):
  """Encodes, prefills the prompt in one call.

  Returns (step, prompt_BP, prompt_len_B, logits_BPV, cache, step_args) where
  `step(cache, tokens_BT, index, *step_args) -> (logits_BTV, cache)`.
  """
  if _is_encoder_decoder(module):
    B = encoder_input_tokens.shape[0]
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
      cache_len,
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

  return step, prompt_BP, prompt_len_B, logits_BPV, cache, (encoded, encoder_input_tokens, prefix_B)


def _prompt_width(decoder_prompt_tokens) -> int:
  """P, the static prompt width (1 for the default encoder-decoder start token)."""
  return 1 if decoder_prompt_tokens is None else decoder_prompt_tokens.shape[1]


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
):
  L, P = max_decode_length, _prompt_width(decoder_prompt_tokens)
  N = P + L
  step, prompt_BP, prompt_len_B, logits_BPV, cache, enc_args = _prefill(
    module,
    params,
    encoder_input_tokens,
    decoder_prompt_tokens,
    decoder_prompt_lengths,
    N - 1,
    prefix_lm,
  )
  B = prompt_BP.shape[0]
  seq_BN = jnp.zeros((B, N), jnp.int32).at[:, :P].set(prompt_BP)
  # only the real prompt is forced; anything right of it in the buffer must read as pad.
  seq_BN = jnp.where(jnp.arange(N) < prompt_len_B[:, None], seq_BN, 0)
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

  start = jnp.min(prompt_len_B) - 1  # last position that every row has in its prompt
  logits0_BV = jax.lax.dynamic_index_in_dim(logits_BPV, start, axis=1, keepdims=False)
  carry = advance(
    start, seq_BN, jnp.zeros((B,), bool), jnp.zeros((B,), jnp.float32), logits0_BV
  ) + (cache,)

  def cond(carry):
    i, _, done_B, _, _ = carry
    return (i < N - 1) & ~jnp.all(done_B)

  def body(carry):
    i, seq_BN, done_B, logp_B, cache = carry
    logits_B1V, cache = step(cache, _column(seq_BN, i)[:, None], i, *enc_args)
    return advance(i, seq_BN, done_B, logp_B, logits_B1V[:, 0]) + (cache,)

  i, seq_BN, _, logp_B, _ = jax.lax.while_loop(cond, body, carry)
  return DecodeResult(_continuation(seq_BN, prompt_len_B, L), logp_B, i - start)


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
  )


# ----------------------------------------------------------------------------------------------
# Beam search


def _is_cross_attention_path(path) -> bool:
  return any(getattr(k, "key", None) == "encoder_decoder_attention" for k in path)


def _assign_slots(parent_BK, needs_copy_BK):
  """Cache slots for the new alive beams, so that the cache moves as little as possible.

  Beam k (sorted by score) descends from the beam in slot `parent_BK[b, k]`. The first child of
  each parent inherits the parent's slot; the other children take the slots nobody inherited
  (in order) and need a copy of the parent's cache row. Returns (slot_BK, copy_BK): the slots
  (a permutation of 0..K-1 per example) and which beams need that copy (only where
  `needs_copy_BK`: dead beams never do). Sources of copies are always inherited slots, so they
  are never overwritten by another copy: the copies can run in any order.
  """
  K = parent_BK.shape[1]
  earlier_KK = jnp.tril(jnp.ones((K, K), bool), -1)  # [k, k']: k' < k
  same_BKK = parent_BK[:, :, None] == parent_BK[:, None, :]
  first_BK = ~jnp.any(same_BKK & earlier_KK, axis=2)
  taken_BS = jnp.any(first_BK[:, :, None] & (parent_BK[:, :, None] == jnp.arange(K)), axis=1)
  free_rank_BS = jnp.cumsum(~taken_BS, axis=1) - 1  # j-th free slot
  child_rank_BK = jnp.cumsum(~first_BK, axis=1) - 1  # j-th non-first child
  match_BKS = (~taken_BS[:, None, :]) & (free_rank_BS[:, None, :] == child_rank_BK[:, :, None])
  free_slot_BK = jnp.sum(jnp.where(match_BKS, jnp.arange(K), 0), axis=2)
  slot_BK = jnp.where(first_BK, parent_BK, free_slot_BK)
  return slot_BK, ~first_BK & needs_copy_BK


# Positions per block when copying a cache row (see `_copy_rows`).
_COPY_BLOCK = 16


def _copy_rows(cache, src_R, dst_R, count, length):
  """cache[dst_R[j], ..., :length, :] = cache[src_R[j], ..., :length, :] for j < count, in place
  (axis 0 of every self-attention leaf; the sequence axis is the second to last, [.., H, N, Dh]).

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
  # float32 and back, a whole-buffer copy per block (a bf16 T5.1.1-small beam: 7.2 s vs 2.6 s).
  moved = [
    jax.lax.bitcast_convert_type(leaves[i], jnp.uint16)
    if leaves[i].dtype == jnp.bfloat16
    else leaves[i]
    for i in rows
  ]
  N = moved[0].shape[-2]
  blk = min(_COPY_BLOCK, N)
  nblk = (length + blk - 1) // blk  # blocks per row

  def body(carry):
    t, xs = carry
    j, start = t // nblk, (t % nblk) * blk  # a block past N - blk is clamped: still correct

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
  maxima: on XLA:CPU a top-k over [B, K * V] costs more than the max reduction that finds its
  blocks. The k best entries lie in the k blocks with the best maxima (ties to the lower block,
  as top_k breaks them), so it takes those blocks, in their original order, and runs top_k on
  them alone.
  """
  B, M = x_BM.shape
  C = _TOPK_BLOCK
  nblk = -(-M // C)
  if nblk <= k:
    return jax.lax.top_k(x_BM, k)
  x_BnC = jnp.pad(x_BM, ((0, 0), (0, nblk * C - M)), constant_values=-jnp.inf).reshape(B, nblk, C)
  _, blocks_Bk = jax.lax.top_k(jnp.max(x_BnC, axis=2), k)
  blocks_Bk = jnp.sort(blocks_Bk, axis=1)  # flat order, so ties break as in top_k
  cand_BkC = jnp.take_along_axis(x_BnC, blocks_Bk[:, :, None], axis=1)
  vals_Bk, pick_Bk = jax.lax.top_k(cand_BkC.reshape(B, k * C), k)
  idx_Bk = jnp.take_along_axis(blocks_Bk, pick_Bk // C, axis=1) * C + pick_Bk % C
  return vals_Bk, idx_Bk.astype(jnp.int32)


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
):
  L, K, P = max_decode_length, num_beams, _prompt_width(decoder_prompt_tokens)
  N = P + L
  step, prompt_BP, prompt_len_B, logits_BPV, cache, enc_args = _prefill(
    module,
    params,
    encoder_input_tokens,
    decoder_prompt_tokens,
    decoder_prompt_lengths,
    N - 1,
    prefix_lm,
  )
  B, V = prompt_BP.shape[0], logits_BPV.shape[-1]
  # fold beams into the batch: self-attention cache row b * K + s is slot s of example b. The
  # encoder output and cross-attention K/V keep one row per example, shared by its beams.
  expand = lambda x: None if x is None else jnp.repeat(x, K, axis=0)
  cache = jax.tree_util.tree_map_with_path(
    lambda path, x: x if _is_cross_attention_path(path) else expand(x), cache
  )
  encoded, enc_tokens, prefix_B = enc_args
  enc_args = (encoded, enc_tokens, expand(prefix_B))

  seq_BN = jnp.zeros((B, N), jnp.int32).at[:, :P].set(prompt_BP)
  seq_BN = jnp.where(jnp.arange(N) < prompt_len_B[:, None], seq_BN, 0)
  alive_seq = jnp.broadcast_to(seq_BN[:, None], (B, K, N))
  # only beam 0 is live at first, so the first expansion has no duplicates.
  alive_logp = jnp.where(jnp.arange(K) == 0, 0.0, NEG_INF) * jnp.ones((B, 1), jnp.float32)
  fin_seq = jnp.zeros((B, K, N), jnp.int32)
  fin_score = jnp.full((B, K), NEG_INF, jnp.float32)
  fin_flag = jnp.zeros((B, K), bool)
  max_penalty = length_penalty(L, alpha)
  batch_offset_B1 = (jnp.arange(B) * K)[:, None]

  # Alive beams live in cache *slots* (row b * K + slot): their order in the state is the slot
  # order, not the score order, so a step only copies the cache rows of beams that branched off
  # a parent another beam also continues, instead of gathering the whole cache.
  def advance(
    i, alive_seq, alive_logp, fin_seq, fin_score, fin_flag, cache, logits_BKV, copy_cache=True
  ):
    pos = i + 1
    lp_BKV = jax.nn.log_softmax(logits_BKV.astype(jnp.float32), axis=-1)
    forced_B = pos < prompt_len_B
    forced_tok_B = _column(seq_BN, pos)  # the prompt buffer
    forced_lp_BV = jnp.where(jnp.arange(V) == forced_tok_B[:, None], 0.0, NEG_INF)
    lp_BKV = jnp.where(forced_B[:, None, None], forced_lp_BV[:, None], lp_BKV)
    cand_BKV = alive_logp[:, :, None] + lp_BKV
    # 2K candidates: at most K of them finish, so K stay alive.
    top_logp, top_idx = _blocked_top_k(cand_BKV.reshape(B, K * V), 2 * K)
    top_beam, top_tok = top_idx // V, (top_idx % V).astype(jnp.int32)
    top_seq = jnp.take_along_axis(alive_seq, top_beam[:, :, None], axis=1)
    top_seq = jax.lax.dynamic_update_slice(top_seq, top_tok[:, :, None], (0, 0, pos))
    gen_len_B1 = (pos - prompt_len_B + 1)[:, None]
    valid = top_logp > NEG_INF / 2
    finishing = ~forced_B[:, None] & valid & ((top_tok == eos_id) | (gen_len_B1 >= L))

    # alive: the best K candidates that did not finish, placed into cache slots.
    new_alive_logp, alive_idx = jax.lax.top_k(jnp.where(finishing, NEG_INF, top_logp), K)
    parent_BK = jnp.take_along_axis(top_beam, alive_idx, axis=1)
    slot_BK, copy_BK = _assign_slots(parent_BK, new_alive_logp > NEG_INF / 2)
    beam_of_slot_BK = jnp.argsort(slot_BK, axis=1)
    slot_idx = jnp.take_along_axis(alive_idx, beam_of_slot_BK, axis=1)
    new_alive_logp = jnp.take_along_axis(new_alive_logp, beam_of_slot_BK, axis=1)
    new_alive_seq = jnp.take_along_axis(top_seq, slot_idx[:, :, None], axis=1)
    if copy_cache:
      # copies first in the list (stable order), then the count of them.
      order_R = jnp.argsort((~copy_BK).reshape(B * K).astype(jnp.int32), stable=True)
      src_R = (batch_offset_B1 + parent_BK).reshape(B * K)[order_R]
      dst_R = (batch_offset_B1 + slot_BK).reshape(B * K)[order_R]
      cache = _copy_rows(cache, src_R, dst_R, jnp.sum(copy_BK), pos)

    # finished: the best K of the old finished and the newly finished.
    new_score = jnp.where(finishing, top_logp / length_penalty(gen_len_B1, alpha), NEG_INF)
    all_score = jnp.concatenate([fin_score, new_score], axis=1)
    all_flag = jnp.concatenate([fin_flag, finishing], axis=1)
    all_seq = jnp.concatenate([fin_seq, top_seq], axis=1)
    fin_score, fin_idx = jax.lax.top_k(all_score, K)
    fin_flag = jnp.take_along_axis(all_flag, fin_idx, axis=1)
    fin_seq = jnp.take_along_axis(all_seq, fin_idx[:, :, None], axis=1)
    return pos, new_alive_seq, new_alive_logp, fin_seq, fin_score, fin_flag, cache

  start = jnp.min(prompt_len_B) - 1
  logits0_BV = jax.lax.dynamic_index_in_dim(logits_BPV, start, axis=1, keepdims=False)
  logits0_BKV = jnp.broadcast_to(logits0_BV[:, None], (B, K, V))
  # every slot holds the same (prompt) cache yet: nothing to copy on the first expansion.
  carry = advance(
    start, alive_seq, alive_logp, fin_seq, fin_score, fin_flag, cache, logits0_BKV, copy_cache=False
  )

  def cond(carry):
    i, _, alive_logp, _, fin_score, fin_flag, _ = carry
    # alpha >= 0: an alive beam can at best keep its log-prob and get the largest penalty.
    best_alive_B = jnp.max(alive_logp, axis=1) / max_penalty
    worst_fin_B = jnp.where(jnp.all(fin_flag, axis=1), jnp.min(fin_score, axis=1), -jnp.inf)
    return (i < N - 1) & ~jnp.all(worst_fin_B > best_alive_B)

  def body(carry):
    i, alive_seq, *_, cache = carry
    tokens_X1 = _column(alive_seq.reshape(B * K, N), i)[:, None]
    logits_X1V, cache = step(cache, tokens_X1, i, *enc_args)
    return advance(*carry[:-1], cache, logits_X1V.reshape(B, K, V))

  i, alive_seq, alive_logp, fin_seq, fin_score, fin_flag, _ = jax.lax.while_loop(cond, body, carry)
  # Every row finishes something by its last position; keep a fallback for safety.
  none_B = ~jnp.any(fin_flag, axis=1)
  alive_logp, best_BK = jax.lax.top_k(alive_logp, K)  # slot order -> score order
  alive_seq = jnp.take_along_axis(alive_seq, best_BK[:, :, None], axis=1)
  fin_seq = jnp.where(none_B[:, None, None], alive_seq, fin_seq)
  fin_score = jnp.where(none_B[:, None], alive_logp / max_penalty, fin_score)
  tokens = _continuation(fin_seq, prompt_len_B[:, None], L)
  return DecodeResult(tokens, fin_score, i - start)


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
) -> DecodeResult:
  """T5X/T2T beam search with `num_beams` alive and `num_beams` finished hypotheses.

  Each step expands the alive beams into their 2K best continuations; those ending in EOS (or
  reaching `max_decode_length`) join the finished set with score log_prob / length_penalty,
  the best K others stay alive. Stops early once no alive beam can beat the worst finished one
  (exact for alpha >= 0). Beams are folded into the batch (B * K rows of one `decode_step`),
  except the cross-attention K/V, which keep one row per example for all its beams; a step
  copies only the cache rows of beams that branched off a shared parent (see
  `_assign_slots`) rather than gathering the whole cache. Log-probs are the model's
  (log_softmax of the logits). Returns tokens [B, K, L] and scores [B, K], best first.
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
  )


# ----------------------------------------------------------------------------------------------
# Scoring


def shift_right(tokens_BT, start_id: int = 0):
  return jnp.concatenate([jnp.full_like(tokens_BT[:, :1], start_id), tokens_BT[:, :-1]], axis=1)


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
def _score_jit(module, params, features, targets_BT, weights_BT):
  logits_BTV = module.apply({"params": params}, **features)
  lp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  lp_BT = jnp.take_along_axis(lp_BTV, targets_BT[..., None], axis=-1)[..., 0]
  return jnp.sum(lp_BT * weights_BT, axis=-1)


def score_sequences(module, params, batch: Mapping[str, Any]):
  """Teacher-forced log-likelihood [B] of `decoder_target_tokens`: the sum of log-probs over
  target positions with weight (`decoder_loss_weights`, default `targets > 0`).

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
  weights = batch.get("decoder_loss_weights")
  weights_BT = (targets_BT > 0) if weights is None else jnp.asarray(weights)
  return _score_jit(module, params, features, targets_BT, weights_BT.astype(jnp.float32))


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
):
  """Decodes a seqio-style batch; returns (tokens [B, L] int32, scores [B] float32).

  batch: `encoder_input_tokens` [B, S] for encoder-decoder models; `decoder_prompt_tokens`
  [B, P] (left-aligned, 0-padded, see the module docstring) for decoder-only models, optional
  for encoder-decoder ones; optional `decoder_prompt_lengths` [B].
  method: 'greedy', 'sample' (temperature/top_k/top_p, needs `rng`) or 'beam'
  (num_beams/alpha). tokens are the continuation after the prompt, 0 after EOS; scores are
  summed log-probs (greedy/sample) or length-penalised log-probs (beam). With
  `return_all_beams` beam search returns [B, K, L] and [B, K], best first.
  """
  kwargs = dict(
    encoder_input_tokens=batch.get("encoder_input_tokens"),
    decoder_prompt_tokens=batch.get("decoder_prompt_tokens"),
    decoder_prompt_lengths=batch.get("decoder_prompt_lengths"),
    max_decode_length=max_decode_length,
    eos_id=eos_id,
    prefix_lm=prefix_lm,
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
