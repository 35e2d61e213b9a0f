"""Matmul FLOPs of the network: the numerator of MFU and of the benchmarks' GFLOP/s."""

from __future__ import annotations

from models.config import T5Config


def forward_matmul_flops(
  cfg: T5Config, batch: int, inputs_length: int, targets_length: int
) -> float:
  """FLOPs (2 per multiply-add) of every matmul in one teacher-forced forward pass.

  Counts projections, attention scores and mixing, MLPs and the logits; ignores elementwise
  work, norms and softmax (a few percent at T5 shapes). Decoder-only models ignore
  `inputs_length` (their one sequence is `targets_length` long).
  """
  D, F, V, inner = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.num_heads * cfg.head_dim
  n_mlp_mats = len(cfg.mlp_activations) + 1
  n_enc, n_dec = batch * inputs_length, batch * targets_length

  def projections(n_query, n_kv):  # q and out on the queries, k and v on the keys
    return 2 * D * inner * (2 * n_query + 2 * n_kv)

  def scores_and_mix(q_len, k_len):
    return 2 * 2 * batch * q_len * k_len * inner

  def mlp(n):
    return 2 * n * D * F * n_mlp_mats

  decoder_layer = (
    projections(n_dec, n_dec) + scores_and_mix(targets_length, targets_length) + mlp(n_dec)
  )
  total = cfg.num_decoder_layers * decoder_layer + 2 * n_dec * D * V
  if cfg.architecture == "encoder_decoder":
    encoder_layer = (
      projections(n_enc, n_enc) + scores_and_mix(inputs_length, inputs_length) + mlp(n_enc)
    )
    cross = projections(n_dec, n_enc) + scores_and_mix(targets_length, inputs_length)
    total += cfg.num_encoder_layers * encoder_layer + cfg.num_decoder_layers * cross
  return float(total)


def train_step_matmul_flops(
  cfg: T5Config, batch: int, inputs_length: int, targets_length: int
) -> float:
  """Forward + backward (the backward pass does two matmuls per forward one)."""
  return 3 * forward_matmul_flops(cfg, batch, inputs_length, targets_length)
