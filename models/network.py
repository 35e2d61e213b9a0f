"""The T5 family as one Flax Linen module: encoder-decoder, decoder-only and prefix-LM.

Module names follow T5X (`token_embedder`, `encoder/layers_0/attention/query`, ...), so
checkpoint import is a renaming. With `scan_layers` the layers are one stacked module `layers`
whose params gain a leading 'layers' axis; an MrT5 encoder has two, `layers` before its delete
gate and `layers_after_gate` (hard deletion shortens the sequence between them). The relative
position bias is one `relpos_bias` per stack, or with `relative_attention_per_layer` (umT5) one
per layer, inside each layer (stacked with the other layer params under scan).

Inputs use seqio's feature-converter names. Padding is token id 0; packed rows carry
`*_segment_ids` (0 = padding). Attention masks only keys (as HF does), so every output row,
padding included, is finite.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers, mrt5
from models.config import T5Config

_REMAT_POLICIES = {
  "full": jax.checkpoint_policies.nothing_saveable,
  # keep weight matmul outputs, recompute the cheap elementwise work and attention.
  "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def mask_to_bias(mask):
  return jnp.where(mask, 0.0, layers.NEG_INF).astype(jnp.float32)


def _relpos_bias(cfg: T5Config, bidirectional: bool) -> layers.RelativePositionBias:
  """The stack's (or with `relative_attention_per_layer`, the layer's) position bias module."""
  return layers.RelativePositionBias(
    cfg.num_heads,
    cfg.relative_attention_num_buckets,
    cfg.relative_attention_max_distance,
    bidirectional=bidirectional,
    name="relpos_bias",
  )


def _decoder_relpos_bias(cfg: T5Config, T: int, decode: bool, cache_index, max_length):
  """Causal position bias [1, H, T, S]; decoding: queries at [cache_index, cache_index + T) over
  the whole cache (S = max_length), else S = T."""
  key_length, query_offset = (max_length, cache_index) if decode else (T, 0)
  return _relpos_bias(cfg, bidirectional=False)(T, key_length, query_offset)


class EncoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BTD, bias_BHTS, positions_BT=None):
    """`bias_BHTS`: the (mask, position bias) pair, or (mask,) when each layer has its own.
    `positions_BT`: each slot's original position (after MrT5's hard deletion), for a layer's
    own position bias; None: slot t is position t."""
    cfg = self.config
    norm = lambda name: layers.RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name=name)
    drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    if cfg.relative_attention_per_layer:
      T = x_BTD.shape[1]
      position_bias = _relpos_bias(cfg, bidirectional=True)(T, T, positions_BS=positions_BT)
      bias_BHTS = (*bias_BHTS, position_bias)
    h = norm("pre_attention_layer_norm")(x_BTD)
    h = layers.MultiHeadAttention(cfg, self.deterministic, name="attention")(h, h, bias_BHTS)
    x_BTD = x_BTD + drop(h, deterministic=self.deterministic)
    h = norm("pre_mlp_layer_norm")(x_BTD)
    h = layers.MLP(cfg, self.deterministic, name="mlp")(h)
    x_BTD = x_BTD + drop(h, deterministic=self.deterministic)
    return nn.with_logical_constraint(x_BTD, ("batch", "length", "embed")), None


class DecoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True
  decode: bool = False
  cross_attention: bool = True
  max_length: int | None = None  # decode-cache length

  @nn.compact
  def __call__(self, x_BTD, self_bias_BHTS, encoded_BSD, cross_bias_BHTS, cache_index):
    """`self_bias_BHTS`: the (mask, position bias) pair, or (mask,) when each layer has its own,
    which it computes as the stack would (decoding: queries from `cache_index` on, keys over the
    whole cache)."""
    cfg = self.config
    norm = lambda name: layers.RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name=name)
    drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    attn = lambda name: layers.MultiHeadAttention(cfg, self.deterministic, self.decode, name=name)
    if cfg.relative_attention_per_layer:
      self_bias_BHTS = (
        *self_bias_BHTS,
        _decoder_relpos_bias(cfg, x_BTD.shape[1], self.decode, cache_index, self.max_length),
      )
    h = norm("pre_self_attention_layer_norm")(x_BTD)
    h = attn("self_attention")(h, h, self_bias_BHTS, cache_index, self.max_length)
    x_BTD = x_BTD + drop(h, deterministic=self.deterministic)
    if self.cross_attention:
      h = norm("pre_cross_attention_layer_norm")(x_BTD)
      h = attn("encoder_decoder_attention")(h, encoded_BSD, cross_bias_BHTS)
      x_BTD = x_BTD + drop(h, deterministic=self.deterministic)
    h = norm("pre_mlp_layer_norm")(x_BTD)
    h = layers.MLP(cfg, self.deterministic, name="mlp")(h)
    x_BTD = x_BTD + drop(h, deterministic=self.deterministic)
    return nn.with_logical_constraint(x_BTD, ("batch", "length", "embed")), None


def _run_layers(
  cfg: T5Config,
  layer_cls,
  num_layers: int,
  x,
  args,
  first: int = 0,
  stack_name: str = "layers",
  **layer_attrs,
):
  """Applies `num_layers` copies of `layer_cls`, scanned (one module `stack_name`) or unrolled
  (`layers_{first}`, `layers_{first + 1}`, ...), with optional remat."""
  if num_layers == 0:
    return x
  if cfg.remat_policy != "none":
    layer_cls = nn.remat(
      layer_cls, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers
    )
  if cfg.scan_layers:
    stack = nn.scan(
      layer_cls,
      # cache leaves keep batch first ([B, layers, ...]) so decoding can reorder beams
      # without knowing whether layers are scanned.
      variable_axes={"params": 0, "cache": 1},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast,) * len(args),
      length=num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, name=stack_name, **layer_attrs)
    x, _ = stack(x, *args)
    return x
  for i in range(first, first + num_layers):
    x, _ = layer_cls(cfg, name=f"layers_{i}", **layer_attrs)(x, *args)
  return x


class Encoder(nn.Module):
  config: T5Config
  token_embedder: layers.Embed

  @nn.compact
  def __call__(
    self,
    tokens_BS,
    segment_ids_BS=None,
    deterministic=True,
    deletion="soft",
    kept_length=None,
    gate_only=False,
    gate_pass=None,
  ):
    """Encoder output [B, S, D]; with a delete gate, an `mrt5.EncodedMemory` (or with
    `gate_only` the `mrt5.GatePass`: the layers before the gate and the gate alone).
    `deletion`: 'soft' or 'hard' (see `_after_gate`). `gate_pass`: a finished gate pass of
    this batch; the encoder then starts from it (`tokens_BS` and `segment_ids_BS` unused) and
    runs only the layers from `delete_gate_layer` on."""
    cfg = self.config
    # the stack's position bias (None: each layer has its own)
    relpos = None if cfg.relative_attention_per_layer else _relpos_bias(cfg, bidirectional=True)
    if gate_pass is not None:
      return _after_gate(cfg, gate_pass, relpos, deterministic, deletion, kept_length)
    S = tokens_BS.shape[1]
    key_ok = (tokens_BS > 0)[:, None, None, :]
    if segment_ids_BS is not None:
      key_ok = key_ok & (segment_ids_BS[:, None, :, None] == segment_ids_BS[:, None, None, :])
    # (mask, position bias): summed inside the attention, so each keeps its own gradient shape;
    # per-layer position biases are added by the layers.
    bias_BHSS = (mask_to_bias(key_ok),)
    if relpos is not None:
      bias_BHSS += (relpos(S, S),)
    x = self.token_embedder(tokens_BS)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    if cfg.delete_gate_layer is not None:
      x = _run_layers(
        cfg, EncoderLayer, cfg.delete_gate_layer, x, (bias_BHSS,), deterministic=deterministic
      )
      real_BS = tokens_BS > 0
      gate_BS = mrt5.DeleteGate(cfg, name="delete_gate")(x, real_BS)
      gate_pass = mrt5.GatePass(x, gate_BS, real_BS, segment_ids_BS)
      if gate_only:
        return gate_pass
      return _after_gate(cfg, gate_pass, relpos, deterministic, deletion, kept_length, bias_BHSS)
    x = _run_layers(
      cfg, EncoderLayer, cfg.num_encoder_layers, x, (bias_BHSS,), deterministic=deterministic
    )
    return _encoder_out(cfg, x, deterministic)


def _encoder_out(cfg: T5Config, x, deterministic):
  x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="encoder_norm")(x)
  return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


def _after_gate(cfg, gate_pass, relpos, deterministic, deletion, kept_length, bias_BHSS=None):
  """The encoder's layers from `delete_gate_layer` on (the scanned stack `layers_after_gate`),
  after an MrT5 gate pass (called inside `Encoder.__call__`, whether the gate pass ran in the same
  call or an earlier one).

  Soft deletion: the later layers add G along their keys. Hard deletion: tokens with G <=
  threshold leave; the kept ones are compacted into `kept_length` slots (static; default S,
  exact but no faster), each with its original position (for the stack's `relpos`, or each
  layer's own position bias) and segment id, and the later layers and the decoder's
  cross-attention run on S' = `kept_length` slots. Kept tokens still add their G, as in
  training, so a saturated gate gives the soft model's outputs. `bias_BHSS`: the full-length
  (mask, position bias) when the caller has it (soft deletion reuses it).
  """
  if deletion not in ("soft", "hard"):
    raise ValueError(f"deletion={deletion!r}; expected 'soft' or 'hard'")
  x, gate_BS, real_BS = gate_pass.hidden_BSD, gate_pass.gate_BS, gate_pass.real_BS
  key_ok_BS, seg_BS, positions_BS = real_BS, gate_pass.segment_ids_BS, None
  if deletion == "hard":
    keep_BS = (gate_BS > cfg.gate_threshold) & real_BS
    kept = x.shape[1] if kept_length is None else kept_length
    positions_BS, key_ok_BS = mrt5.compaction(keep_BS, kept)
    x, gate_BS = mrt5.gather_slots(x, positions_BS), mrt5.gather_slots(gate_BS, positions_BS)
    if seg_BS is not None:
      seg_BS = jnp.where(key_ok_BS, mrt5.gather_slots(seg_BS, positions_BS), 0)
    bias_BHSS = None
  if bias_BHSS is None:
    key_ok = key_ok_BS[:, None, None, :]
    if seg_BS is not None:
      key_ok = key_ok & (seg_BS[:, None, :, None] == seg_BS[:, None, None, :])
    bias_BHSS = (mask_to_bias(key_ok),)
    if relpos is not None:
      S = x.shape[1]
      bias_BHSS += (relpos(S, S, positions_BS=positions_BS),)
  args = ((*bias_BHSS, mrt5.key_bias(gate_BS)),)
  if positions_BS is not None and relpos is None:  # each layer's own position bias
    args += (positions_BS,)
  L = cfg.delete_gate_layer
  x = _run_layers(
    cfg,
    EncoderLayer,
    cfg.num_encoder_layers - L,
    x,
    args,
    first=L,
    stack_name="layers_after_gate",
    deterministic=deterministic,
  )
  return mrt5.EncodedMemory(_encoder_out(cfg, x, deterministic), key_ok_BS, gate_BS, seg_BS)


class Decoder(nn.Module):
  """Decoder stack; with `encoded=None` it is a decoder-only LM (no cross-attention)."""

  config: T5Config
  token_embedder: layers.Embed

  @nn.compact
  def __call__(
    self,
    tokens_BT,
    self_mask_BHTS,
    encoded_BSD=None,
    cross_mask_BHTS=None,
    *,
    deterministic=True,
    decode=False,
    cache_index=None,
    max_length=None,
    cross_gate_BS=None,
  ):
    """`cross_gate_BS`: an MrT5 gate [B, S] added along the cross-attention's keys."""
    cfg = self.config
    T = tokens_BT.shape[1]
    bias = (mask_to_bias(self_mask_BHTS),)
    if not cfg.relative_attention_per_layer:
      bias += (_decoder_relpos_bias(cfg, T, decode, cache_index, max_length),)
    cross_bias = None if cross_mask_BHTS is None else mask_to_bias(cross_mask_BHTS)
    if cross_gate_BS is not None:
      cross_bias = (cross_bias, mrt5.key_bias(cross_gate_BS))
    x = self.token_embedder(tokens_BT)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = _run_layers(
      cfg,
      DecoderLayer,
      cfg.num_decoder_layers,
      x,
      (bias, encoded_BSD, cross_bias, cache_index),
      deterministic=deterministic,
      decode=decode,
      cross_attention=encoded_BSD is not None,
      max_length=max_length,
    )
    x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="decoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = self.token_embedder.attend(x) / jnp.sqrt(cfg.d_model).astype(jnp.float32)
    else:
      kernel = self.param(
        "logits_dense",
        nn.with_logical_partitioning(
          nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"), ("embed", "vocab")
        ),
        (cfg.d_model, cfg.vocab_size),
        jnp.float32,
      )
      logits = layers.dot(
        x, kernel, cfg.activation_dtype, out_dtype=jnp.float32, kernels=cfg.kernels
      )
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def _segment_mask(q_seg_BT, k_seg_BS):
  if q_seg_BT is None or k_seg_BS is None:
    return True
  return q_seg_BT[:, None, :, None] == k_seg_BS[:, None, None, :]


class Transformer(nn.Module):
  """The whole network. `config.architecture` picks encoder-decoder or decoder-only.

  Methods (call through `apply(..., method=...)`):
    __call__      teacher-forced logits [B, T, V] (float32) for a feature-converter batch.
    encode        encoder output [B, S, D].
    decode        teacher-forced decoder logits given an encoder output.
    decode_step   cached decoding: logits for T new tokens at [cache_index, cache_index + T).
    delete_gate   MrT5's gate values G [B, S] (float32) of the encoder inputs.
    gate_pass     MrT5's layers before the gate and the gate: an `mrt5.GatePass`.
    encode_from_gate  `encode`'s result from a `gate_pass`, running only the later layers.

  With a delete gate (`config.delete_gate_layer`), `encode` returns an `mrt5.EncodedMemory`,
  which `decode` and `decode_step` take where they take the encoder output, and sows the gate
  [B, S] as `intermediates/delete_gate` (call with `mutable=['intermediates']` to read it for the
  regularizer; see `mrt5.gate_values`).
  """

  config: T5Config
  # MrT5 (a config with `delete_gate_layer`): 'soft' or 'hard' deletion in `encode`, and for
  # 'hard' the static number of encoder slots kept (None: S). `mrt5.hard_encode` sets
  # both for a batch.
  deletion: str = "soft"
  kept_length: int | None = None

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.d_model, cfg.activation_dtype)
    if cfg.architecture == "encoder_decoder":
      self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  @property
  def is_encoder_decoder(self) -> bool:
    return self.config.architecture == "encoder_decoder"

  def __call__(
    self,
    encoder_input_tokens=None,
    decoder_input_tokens=None,
    decoder_target_tokens=None,
    encoder_segment_ids=None,
    decoder_segment_ids=None,
    encoder_positions=None,
    decoder_positions=None,
    decoder_causal_attention=None,
    deterministic=True,
  ):
    # *_positions are accepted for the feature-converter contract; relative attention only
    # needs position differences inside a segment, which arange already gives.
    del encoder_positions, decoder_positions, decoder_target_tokens
    encoded = None
    if self.is_encoder_decoder:
      encoded = self.encode(encoder_input_tokens, encoder_segment_ids, deterministic)
    return self.decode(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      decoder_causal_attention,
      deterministic,
    )

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, deterministic=True):
    if self.config.delete_gate_layer is None:
      return self.encoder(encoder_input_tokens, encoder_segment_ids, deterministic=deterministic)
    memory = self.encoder(
      encoder_input_tokens,
      encoder_segment_ids,
      deterministic=deterministic,
      deletion=self.deletion,
      kept_length=self.kept_length,
    )
    if self.deletion == "soft":  # after hard deletion the gate is the compacted one
      self.sow("intermediates", "delete_gate", memory.gate_BS)
    return memory

  def delete_gate(self, encoder_input_tokens, encoder_segment_ids=None):
    return self.gate_pass(encoder_input_tokens, encoder_segment_ids).gate_BS

  def gate_pass(self, encoder_input_tokens, encoder_segment_ids=None):
    return self.encoder(encoder_input_tokens, encoder_segment_ids, gate_only=True)

  def encode_from_gate(self, gate_pass, deterministic=True):
    """`encode`'s memory from a finished `gate_pass` of the same batch: the layers before the
    gate are not run again (hard deletion's second call, `mrt5.hard_encode`)."""
    return self.encoder(
      None,
      deterministic=deterministic,
      deletion=self.deletion,
      kept_length=self.kept_length,
      gate_pass=gate_pass,
    )

  def decode(
    self,
    encoded,
    encoder_input_tokens,
    decoder_input_tokens,
    encoder_segment_ids=None,
    decoder_segment_ids=None,
    decoder_causal_attention=None,
    deterministic=True,
  ):
    T = decoder_input_tokens.shape[1]
    pos = jnp.arange(T)
    self_mask = (pos[None, :] <= pos[:, None])[None, None]  # [1, 1, T, T] causal
    if decoder_causal_attention is not None:  # prefix LM: bidirectional over the inputs
      prefix = decoder_causal_attention.astype(bool)
      self_mask = self_mask | (prefix[:, None, :, None] & prefix[:, None, None, :])
    self_mask = self_mask & _segment_mask(decoder_segment_ids, decoder_segment_ids)
    cross_mask, gate = None, None
    if isinstance(encoded, mrt5.EncodedMemory):  # the memory knows its own (kept) keys
      cross_mask = encoded.key_ok_BS[:, None, None, :] & _segment_mask(
        decoder_segment_ids, encoded.segment_ids_BS
      )
      encoded, gate = encoded.encoded_BSD, encoded.gate_BS
    elif encoded is not None:
      cross_mask = (encoder_input_tokens > 0)[:, None, None, :] & _segment_mask(
        decoder_segment_ids, encoder_segment_ids
      )
    return self.decoder(
      decoder_input_tokens,
      self_mask,
      encoded,
      cross_mask,
      deterministic=deterministic,
      cross_gate_BS=gate,
    )

  def decode_step(
    self,
    decoder_input_tokens_BT,
    cache_index,
    max_length: int,
    encoded=None,
    encoder_input_tokens=None,
    prefix_length_B=None,
  ):
    """Logits [B, T, V] for tokens at positions [cache_index, cache_index + T), using and
    updating the 'cache' collection (call with `mutable=['cache']`).

    The first call (on an empty cache) creates self-attention buffers of `max_length` and
    projects `encoded` once for cross-attention; later calls reuse them. `prefix_length_B`
    makes the first `prefix_length` positions mutually visible (prefix-LM prompts).
    """
    T = decoder_input_tokens_BT.shape[1]
    q_pos = cache_index + jnp.arange(T)
    k_pos = jnp.arange(max_length)
    self_mask = (k_pos[None, :] <= q_pos[:, None])[None, None]
    if prefix_length_B is not None:
      in_prefix_q = q_pos[None, :] < prefix_length_B[:, None]
      in_prefix_k = k_pos[None, :] < prefix_length_B[:, None]
      self_mask = self_mask | (in_prefix_q[:, None, :, None] & in_prefix_k[:, None, None, :])
    cross_mask, gate = None, None
    if isinstance(encoded, mrt5.EncodedMemory):
      cross_mask = encoded.key_ok_BS[:, None, None, :]
      encoded, gate = encoded.encoded_BSD, encoded.gate_BS
    elif encoded is not None:
      cross_mask = (encoder_input_tokens > 0)[:, None, None, :]
    return self.decoder(
      decoder_input_tokens_BT,
      self_mask,
      encoded,
      cross_mask,
      deterministic=True,
      decode=True,
      cache_index=cache_index,
      max_length=max_length,
      cross_gate_BS=gate,
    )
