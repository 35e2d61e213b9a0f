"""Building blocks of the T5 family: dense, norm, attention, MLP, relative position bias.

Every parameter is float32 and carries logical axis names; matmuls run in the config's activation
dtype and accumulate in float32 (`preferred_element_type`). Shapes in names: B batch, T query
length, S key length, D d_model, H heads, K head_dim, F d_ff, V vocab.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.config import T5Config

NEG_INF = -1e10  # big but finite: fully masked rows (padding) stay NaN-free

_attn_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
_mlp_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def _param(module: nn.Module, name: str, init, shape, axes):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def dot(x, kernel, dtype, contract_dims: int = 1, out_dtype=None):
  """x[..., in...] @ kernel[in..., out...]: operands in `dtype`, accumulated in float32, result
  in `out_dtype` (default `dtype`).

  The backward pass also multiplies in `dtype` (a custom VJP): plain autodiff would hand the
  transposed matmuls a float32 cotangent and run them at float32 speed, half the bf16 rate.
  Each gradient comes back in its primal's dtype (float32 for the params).
  """
  return _mixed_dot(x, kernel, jnp.dtype(dtype), contract_dims,
                    jnp.dtype(dtype if out_dtype is None else out_dtype))


def _dot_dims(x_ndim: int, contract_dims: int):
  return ((tuple(range(x_ndim - contract_dims, x_ndim)), tuple(range(contract_dims))), ((), ()))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _mixed_dot(x, kernel, dtype, contract_dims, out_dtype):
  return _mixed_dot_fwd(x, kernel, dtype, contract_dims, out_dtype)[0]


def _mixed_dot_fwd(x, kernel, dtype, contract_dims, out_dtype):
  x_c, k_c = x.astype(dtype), kernel.astype(dtype)
  y = jax.lax.dot_general(x_c, k_c, _dot_dims(x.ndim, contract_dims),
                          preferred_element_type=jnp.float32)
  # empty arrays carry the primal dtypes (residuals must be arrays) for the cotangents
  return y.astype(out_dtype), (x_c, k_c, jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype))


def _mixed_dot_bwd(dtype, contract_dims, out_dtype, residuals, g):
  x_c, k_c, x_like, kernel_like = residuals
  g = g.astype(dtype)
  n_batch = x_c.ndim - contract_dims  # x's leading (non-contracted) dims
  # dx[..., in] = g[..., out] . k[in, out]
  dx = jax.lax.dot_general(
      g, k_c, ((tuple(range(n_batch, g.ndim)), tuple(range(contract_dims, k_c.ndim))), ((), ())),
      preferred_element_type=jnp.float32)
  # dk[in, out] = x[..., in] . g[..., out], summed over the leading dims
  dk = jax.lax.dot_general(
      x_c, g, ((tuple(range(n_batch)), tuple(range(n_batch))), ((), ())),
      preferred_element_type=jnp.float32)
  return dx.astype(x_like.dtype), dk.astype(kernel_like.dtype)


_mixed_dot.defvjp(_mixed_dot_fwd, _mixed_dot_bwd)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, computed in float32."""
  epsilon: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
    return (x32 * scale).astype(self.dtype)


class Embed(nn.Module):
  vocab_size: int
  features: int
  dtype: jnp.dtype

  def setup(self):
    self.embedding = _param(self, "embedding", nn.initializers.normal(stddev=1.0),
                            (self.vocab_size, self.features), ("vocab", "embed"))

  def __call__(self, tokens):
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x):
    """Tied output projection: x @ embedding.T, float32 logits."""
    return jax.lax.dot_general(
        x.astype(self.dtype), self.embedding.astype(self.dtype),
        (((x.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------------------------
# Relative position bias


@functools.lru_cache(maxsize=None)
def _bucket_table(num_buckets: int, max_distance: int) -> np.ndarray:
  """Bucket of each distance 0..max_distance (one direction), computed as HF/T5 do in float32.

  A host-side table (instead of jnp.log at run time) keeps the bucket boundaries bit-identical
  to the reference implementations: XLA's log is not correctly rounded, and the formula floors
  values that land exactly on integers (distances 16, 32, 64, ...).
  """
  max_exact = num_buckets // 2
  n = np.arange(max_distance + 1)
  with np.errstate(divide="ignore"):
    large = max_exact + (
        np.log(n.astype(np.float32) / np.float32(max_exact))
        / np.float32(math.log(max_distance / max_exact))
        * np.float32(num_buckets - max_exact))
  large = np.minimum(np.where(n < max_exact, 0, large).astype(np.int64), num_buckets - 1)
  return np.where(n < max_exact, n, large).astype(np.int32)


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int,
                             max_distance: int):
  """T5's log-spaced bucket of `key_pos - query_pos` (int array, any shape)."""
  if bidirectional:
    num_buckets //= 2
    offset = jnp.where(relative_position > 0, num_buckets, 0)
    n = jnp.abs(relative_position)
  else:
    offset = 0
    n = jnp.maximum(-relative_position, 0)
  table = jnp.asarray(_bucket_table(num_buckets, max_distance))
  return offset + table[jnp.minimum(n, max_distance)]


class RelativePositionBias(nn.Module):
  """Per-head scalar bias from bucketed relative positions; one per stack, shared by its layers."""
  num_heads: int
  num_buckets: int
  max_distance: int
  bidirectional: bool

  @nn.compact
  def __call__(self, query_positions_T, key_positions_S):
    rel_embedding = _param(self, "rel_embedding",
                           nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                           (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
    buckets_TS = relative_position_bucket(
        key_positions_S[None, :] - query_positions_T[:, None], self.bidirectional,
        self.num_buckets, self.max_distance)
    # a gather: its gradient is a scatter-add into [H, buckets], far cheaper than contracting
    # the [T, S] gradient with a [T, S, buckets] one-hot.
    return jnp.take(rel_embedding, buckets_TS, axis=1)[None]  # [1, H, T, S]


# ----------------------------------------------------------------------------------------------
# Attention and MLP


class MultiHeadAttention(nn.Module):
  """Dot-product attention without 1/sqrt(K) scaling (T5 folds it into the query init).

  With `decode=True` the keys/values live in the 'cache' collection:
    * self-attention (`cache_index` given): this call's K/V are written at
      [cache_index, cache_index + T) of a [B, H, max_length, K] buffer, and the queries attend
      over the whole buffer (the caller's bias masks unwritten/future slots);
    * cross-attention (`cache_index` None): K/V are computed from `x_kv` on the first call and
      read back on later ones, so the encoder output is projected once per decode.
  """
  config: T5Config
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x_q_BTD, x_kv_BSD, bias_BHTS, cache_index=None, max_length=None):
    cfg = self.config
    dtype = cfg.activation_dtype
    H, K, D = cfg.num_heads, cfg.head_dim, cfg.d_model
    q_init = lambda *a: _attn_init(*a) / math.sqrt(K)
    query = _param(self, "query", q_init, (D, H, K), ("embed", "heads", "kv"))
    key = _param(self, "key", _attn_init, (D, H, K), ("embed", "heads", "kv"))
    value = _param(self, "value", _attn_init, (D, H, K), ("embed", "heads", "kv"))
    out = _param(self, "out", _attn_init, (H, K, D), ("heads", "kv", "embed"))

    q_BTHK = dot(x_q_BTD, query, dtype)
    q_BTHK = nn.with_logical_constraint(q_BTHK, ("batch", "length", "heads", "kv"))

    def project_kv(x_BSD):
      # head-major K/V: the decode caches keep this layout, so no per-step transposes.
      kv_axes = ("batch", "heads", "length", "kv")
      k = jnp.swapaxes(dot(x_BSD, key, dtype), 1, 2)
      v = jnp.swapaxes(dot(x_BSD, value, dtype), 1, 2)
      return nn.with_logical_constraint(k, kv_axes), nn.with_logical_constraint(v, kv_axes)

    if self.decode and cache_index is not None:  # cached self-attention
      B = x_q_BTD.shape[0]
      k_new, v_new = project_kv(x_kv_BSD)
      cached_k = self.variable("cache", "cached_key", jnp.zeros, (B, H, max_length, K), dtype)
      cached_v = self.variable("cache", "cached_value", jnp.zeros, (B, H, max_length, K), dtype)
      start = (0, 0, cache_index, 0)
      cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_new, start)
      cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_new, start)
      k_BHSK, v_BHSK = cached_k.value, cached_v.value
    elif self.decode:  # cached cross-attention
      if self.has_variable("cache", "cached_key"):
        k_BHSK = self.get_variable("cache", "cached_key")
        v_BHSK = self.get_variable("cache", "cached_value")
      else:
        k_BHSK, v_BHSK = project_kv(x_kv_BSD)
        self.put_variable("cache", "cached_key", k_BHSK)
        self.put_variable("cache", "cached_value", v_BHSK)
    else:
      k_BHSK, v_BHSK = project_kv(x_kv_BSD)

    # logits stored in `dtype` (T5X's default), softmax in float32: in bf16 this halves the
    # traffic of the largest tensors, [B, H, T, S].
    logits_BHTS = jnp.einsum("bthk,bhsk->bhts", q_BTHK, k_BHSK,
                             preferred_element_type=jnp.float32).astype(dtype)
    logits_BHTS = logits_BHTS.astype(jnp.float32)
    if bias_BHTS is not None:
      logits_BHTS = logits_BHTS + bias_BHTS
    weights_BHTS = jax.nn.softmax(logits_BHTS, axis=-1).astype(dtype)
    if not self.deterministic and cfg.dropout_rate > 0:
      weights_BHTS = nn.Dropout(cfg.dropout_rate)(weights_BHTS, deterministic=False)
    ctx_BTHK = jnp.einsum("bhts,bhsk->bthk", weights_BHTS, v_BHSK,
                          preferred_element_type=jnp.float32).astype(dtype)
    ctx_BTHK = nn.with_logical_constraint(ctx_BTHK, ("batch", "length", "heads", "kv"))
    return dot(ctx_BTHK, out, dtype, contract_dims=2)


class MLP(nn.Module):
  """Gated (GEGLU: gelu * linear) or plain (ReLU) feed-forward block."""
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BTD):
    cfg = self.config
    dtype = cfg.activation_dtype
    acts = cfg.mlp_activations
    h_BTF = None
    for i, act in enumerate(acts):
      name = "wi" if len(acts) == 1 else f"wi_{i}"
      wi = _param(self, name, _mlp_init, (cfg.d_model, cfg.d_ff), ("embed", "mlp"))
      # the activation runs on the float32 accumulator, before rounding to `dtype`
      y = _activation(act)(dot(x_BTD, wi, dtype, out_dtype=jnp.float32))
      h_BTF = y if h_BTF is None else h_BTF * y
    h_BTF = nn.with_logical_constraint(h_BTF.astype(dtype), ("batch", "length", "mlp"))
    if not self.deterministic and cfg.dropout_rate > 0:
      h_BTF = nn.Dropout(cfg.dropout_rate)(h_BTF, deterministic=False)
    wo = _param(self, "wo", _mlp_init, (cfg.d_ff, cfg.d_model), ("mlp", "embed"))
    return dot(h_BTF, wo, dtype)


def _activation(name: str):
  return {
      "relu": jax.nn.relu,
      # tanh approximation: what T5X's nn.gelu and HF's "gated-gelu" (gelu_new) compute.
      "gelu": functools.partial(jax.nn.gelu, approximate=True),
      "silu": jax.nn.silu,
      "linear": lambda x: x,
  }[name]
