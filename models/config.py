"""The one config object every network in the T5 family is built from.

Variants differ by field values, never by code: T5.1.0 is ReLU + tied logits, T5.1.1/mT5 are
GEGLU + untied, ByT5 is GEGLU with a deep encoder and a shallow decoder, umT5 is mT5 with a
relative position bias in every layer (`relative_attention_per_layer`). Gin files under
`configs/models/` bind these fields; this module knows nothing of gin.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

# A prefix LM is a decoder-only model fed `decoder_causal_attention` (T5X convention).
ARCHITECTURES = ("encoder_decoder", "decoder_only")
REMAT_POLICIES = ("none", "full", "minimal")
MLP_ACTIVATIONS = ("relu", "gelu", "silu", "linear")
# How matmuls and attention are computed (models/layers.py, `resolve_kernels`): 'cpu' is tuned for
# XLA:CPU (custom backward passes), 'reference' is plain autodiff and jax.nn.dot_product_attention
# (what GPU/TPU compilers fuse best), 'auto' picks 'cpu' on a CPU backend and 'reference' elsewhere.
# Params are the same for all three.
KERNELS = ("auto", "cpu", "reference")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shapes and options of a T5-family Transformer.

  Defaults are T5.1.1-small. `dtype` is the activation dtype; params are always float32.
  """

  vocab_size: int = 32128
  d_model: int = 512
  num_heads: int = 6
  head_dim: int = 64
  d_ff: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  # ('gelu', 'linear') is GEGLU (T5.1.1, mT5, ByT5); ('relu',) is T5.1.0's plain ReLU MLP.
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  # T5.1.0 ties the output projection to the token embedding (and rescales by 1/sqrt(d_model)).
  logits_via_embedding: bool = False
  dropout_rate: float = 0.0
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  # umT5 / T5X's scalable T5: every layer's self-attention has its own relative position bias
  # (`{stack}/layers_{i}/relpos_bias`); off, one bias per stack (`{stack}/relpos_bias`) is shared
  # by its layers. Cross-attention has none either way.
  relative_attention_per_layer: bool = False
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"
  architecture: str = "encoder_decoder"
  scan_layers: bool = False
  remat_policy: str = "none"
  kernels: str = "auto"
  # MrT5 token deletion (models/mrt5.py): a delete gate on the input of encoder layer
  # `delete_gate_layer` (None: no gate, the plain model). G = sigmoid_mask_scale * sigmoid(-logit)
  # biases attention keys from that layer on; hard deletion drops tokens with G <= threshold
  # (None: sigmoid_mask_scale / 2). use_softmax1 puts an extra 1 in every softmax denominator.
  delete_gate_layer: int | None = None
  sigmoid_mask_scale: float = -30.0
  deletion_threshold: float | None = None
  gate_layer_norm: bool = True
  use_softmax1: bool = False

  def __post_init__(self):
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f"architecture={self.architecture!r}; expected one of {ARCHITECTURES}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
    if self.kernels not in KERNELS:
      raise ValueError(f"kernels={self.kernels!r}; expected one of {KERNELS}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype={self.dtype!r}; expected 'float32' or 'bfloat16'")
    for act in self.mlp_activations:
      if act not in MLP_ACTIVATIONS:
        raise ValueError(
          f"unknown MLP activation {act!r} in mlp_activations; expected one of {MLP_ACTIVATIONS}"
        )
    self._check_delete_gate()
    # gin hands lists where a tuple is declared; normalise so configs compare and hash.
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))

  def _check_delete_gate(self):
    if self.delete_gate_layer is None:
      return
    E, L = self.num_encoder_layers, self.delete_gate_layer
    if self.architecture != "encoder_decoder":
      raise ValueError("delete_gate_layer needs architecture='encoder_decoder'; unset it")
    if not 0 <= L < E:
      raise ValueError(
        f"delete_gate_layer={L}; expected 0 <= delete_gate_layer < {E} (encoder layers)"
      )
    if not self.sigmoid_mask_scale < 0:
      raise ValueError(
        f"sigmoid_mask_scale={self.sigmoid_mask_scale}; it must be negative (paper: -30)"
      )
    t = self.gate_threshold
    if not self.sigmoid_mask_scale <= t < 0:
      raise ValueError(
        f"deletion_threshold={t}; expected sigmoid_mask_scale ({self.sigmoid_mask_scale}) <= it < 0"
      )

  @property
  def gate_threshold(self) -> float:
    """G at or below which hard deletion drops a token (default sigmoid_mask_scale / 2)."""
    if self.deletion_threshold is None:
      return self.sigmoid_mask_scale / 2
    return float(self.deletion_threshold)

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.head_dim

  def replace(self, **changes) -> T5Config:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> T5Config:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown T5Config fields {unknown}; known: {sorted(names)}")
    d = dict(d)
    if "mlp_activations" in d:
      d["mlp_activations"] = tuple(d["mlp_activations"])
    return cls(**d)
