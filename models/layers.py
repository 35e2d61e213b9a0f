"""Building blocks of the T5 family: dense, norm, attention, MLP, relative position bias.

Every parameter is float32 and carries logical axis names; matmuls run in the config's activation
dtype and accumulate in float32 (`preferred_element_type`). Array names end in their axes, by
the one legend of docs/design.md (B batch, T query length, S key length, H heads, K head dim, ...).

Matmuls and attention come in two kernels (`T5Config.kernels`, resolved at trace time by
`resolve_kernels`): 'cpu', custom backward passes tuned for XLA:CPU, and 'reference', plain
autodiff and `jax.nn.dot_product_attention`, which GPU/TPU compilers fuse. Both take the same
params and keep the same numerics: float32 accumulation, float32 softmax.
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


def resolve_kernels(kernels: str = "auto") -> str:
  """'cpu' or 'reference' for a `T5Config.kernels` value: 'auto' is 'cpu' when JAX's default
  backend is the CPU, else 'reference'. Called at trace time, so one config serves both."""
  if kernels == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "reference"
  if kernels not in ("cpu", "reference"):
    raise ValueError(f"kernels={kernels!r}; expected 'auto', 'cpu' or 'reference'")
  return kernels


def dot(x, kernel, dtype, contract_dims: int = 1, out_dtype=None, kernels: str = "auto"):
  """x[..., in...] @ kernel[in..., out...]: operands in `dtype`, accumulated in float32, result
  in `out_dtype` (default `dtype`).

  With the 'cpu' kernels the backward pass also multiplies in `dtype` (a custom VJP): on XLA:CPU
  plain autodiff hands the transposed matmuls a float32 cotangent and runs them at float32 speed,
  half the bf16 rate. Each gradient comes back in its primal's dtype (float32 for the params).
  The 'reference' kernels leave the backward pass to autodiff, which accelerators fuse.
  """
  dtype = jnp.dtype(dtype)
  out_dtype = jnp.dtype(dtype if out_dtype is None else out_dtype)
  if resolve_kernels(kernels) == "reference":
    y = jax.lax.dot_general(
      x.astype(dtype),
      kernel.astype(dtype),
      _dot_dims(x.ndim, contract_dims),
      preferred_element_type=jnp.float32,
    )
    return y.astype(out_dtype)
  return _mixed_dot(x, kernel, dtype, contract_dims, out_dtype)


def _dot_dims(x_ndim: int, contract_dims: int):
  return ((tuple(range(x_ndim - contract_dims, x_ndim)), tuple(range(contract_dims))), ((), ()))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _mixed_dot(x, kernel, dtype, contract_dims, out_dtype):
  return _mixed_dot_fwd(x, kernel, dtype, contract_dims, out_dtype)[0]


def _mixed_dot_fwd(x, kernel, dtype, contract_dims, out_dtype):
  x_c, k_c = x.astype(dtype), kernel.astype(dtype)
  y = jax.lax.dot_general(
    x_c, k_c, _dot_dims(x.ndim, contract_dims), preferred_element_type=jnp.float32
  )
  # empty arrays carry the primal dtypes (residuals must be arrays) for the cotangents
  return y.astype(out_dtype), (x_c, k_c, jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype))


def _mixed_dot_bwd(dtype, contract_dims, out_dtype, residuals, g):
  x_c, k_c, x_like, kernel_like = residuals
  g = g.astype(dtype)
  n_batch = x_c.ndim - contract_dims  # x's leading (non-contracted) dims
  # dx[..., in] = g[..., out] . k[in, out]
  dx = jax.lax.dot_general(
    g,
    k_c,
    ((tuple(range(n_batch, g.ndim)), tuple(range(contract_dims, k_c.ndim))), ((), ())),
    preferred_element_type=jnp.float32,
  )
  # dk[in, out] = x[..., in] . g[..., out], summed over the leading dims
  dk = jax.lax.dot_general(
    x_c,
    g,
    ((tuple(range(n_batch)), tuple(range(n_batch))), ((), ())),
    preferred_element_type=jnp.float32,
  )
  return dx.astype(x_like.dtype), dk.astype(kernel_like.dtype)


_mixed_dot.defvjp(_mixed_dot_fwd, _mixed_dot_bwd)


def dot_product_attention(
  q_BTHK,
  k_BHSK,
  v_BHSK,
  bias_BHTS,
  dtype,
  keep_BHTS=None,
  dropout_rate: float = 0.0,
  kernels: str = "auto",
  softmax1: bool = False,
):
  """softmax(q·k + bias) · v for one layer, with T5X's roundings, and a backward pass of its own.

  `bias_BHTS` is None, an array or a tuple of arrays, each broadcastable to [B, H, T, S] and
  summed (keeping the mask and the position bias apart lets each take its gradient in its own
  shape: the [1, H, T, S] position bias is summed over the batch here, per layer). `keep_BHTS`
  is a dropout mask on the weights (kept entries scaled by 1/(1 - dropout_rate)).

  Why a custom VJP: autodiff gives the backward matmuls float32 cotangents (float32 speed in a
  bf16 model), and two of them, dV = Wᵀ·g and dK = dLᵀ·q, contract the query axis, which
  XLA:CPU's fast dot (YNNPACK) cannot take as a left operand, so they fell to its slow Eigen dot.
  Here they multiply in `dtype` and contract the query axis through `_contract_queries`.
  With `kernels` resolving to 'reference', it is `_reference_attention` instead (autodiff).
  `softmax1` adds 1 to the softmax's denominator (`softmax_1`, MrT5): a row may then attend to
  nothing. Its backward pass has the same form as softmax's, w * (dw - Σ w·dw).
  """
  biases = (
    ()
    if bias_BHTS is None
    else (tuple(bias_BHTS) if isinstance(bias_BHTS, (tuple, list)) else (bias_BHTS,))
  )
  if resolve_kernels(kernels) == "reference":
    return _reference_attention(
      q_BTHK, k_BHSK, v_BHSK, biases, keep_BHTS, jnp.dtype(dtype), float(dropout_rate), softmax1
    )
  return _attention(
    q_BTHK, k_BHSK, v_BHSK, biases, keep_BHTS, jnp.dtype(dtype), float(dropout_rate), softmax1
  )


def softmax_1(logits, axis=-1):
  """exp(x_i) / (1 + Σ_j exp(x_j)) in float32: softmax with an extra zero logit. Shifted by
  max(max_j x_j, 0), so neither the terms nor the extra 1 overflow."""
  logits = logits.astype(jnp.float32)
  m = jax.lax.stop_gradient(jnp.maximum(jnp.max(logits, axis=axis, keepdims=True), 0.0))
  e = jnp.exp(logits - m)
  return e / (jnp.sum(e, axis=axis, keepdims=True) + jnp.exp(-m))


def _softmax(logits, softmax1: bool):
  return softmax_1(logits, axis=-1) if softmax1 else jax.nn.softmax(logits, axis=-1)


def _reference_attention(q_BTHK, k_BHSK, v_BHSK, biases, keep_BHTS, dtype, rate, softmax1=False):
  """The attention by autodiff: `jax.nn.dot_product_attention` (T5 scales nothing: scale=1) with
  the biases summed into one float32 bias; with a dropout mask, a plain softmax attention.

  Either way q·k accumulates in float32, the bias is added in float32 and the softmax runs in
  float32; the weights are rounded to `dtype` for the product with v. Unlike the 'cpu' kernel,
  the logits are not rounded to `dtype` before the bias is added (exact in float32). jax.nn has
  no softmax_1, so `softmax1` takes the plain path too.
  """
  bias = functools.reduce(jnp.add, biases).astype(jnp.float32) if biases else None
  q_BTHK, k_BHSK, v_BHSK = (a.astype(dtype) for a in (q_BTHK, k_BHSK, v_BHSK))
  if keep_BHTS is None and not softmax1:
    # jax.nn's layout is length-major for keys/values too: [B, S, H, K]
    return jax.nn.dot_product_attention(
      q_BTHK,
      jnp.swapaxes(k_BHSK, 1, 2),
      jnp.swapaxes(v_BHSK, 1, 2),
      bias=None if bias is None else bias.reshape((1,) * (4 - bias.ndim) + bias.shape),
      scale=1.0,
    ).astype(dtype)
  logits_BHTS = jnp.einsum("bthk,bhsk->bhts", q_BTHK, k_BHSK, preferred_element_type=jnp.float32)
  if bias is not None:
    logits_BHTS = logits_BHTS + bias
  w_BHTS = _dropped(_softmax(logits_BHTS, softmax1).astype(dtype), keep_BHTS, rate)
  return jnp.einsum("bhts,bhsk->bthk", w_BHTS, v_BHSK, preferred_element_type=jnp.float32).astype(
    dtype
  )


def _dropped(w_BHTS, keep_BHTS, rate):
  """nn.Dropout's arithmetic: kept entries divided by the keep rate, in w's dtype."""
  if keep_BHTS is None:
    return w_BHTS
  return jnp.where(
    keep_BHTS, w_BHTS / jnp.asarray(1.0 - rate, w_BHTS.dtype), jnp.zeros((), w_BHTS.dtype)
  )


def _contract_queries(a_BHTS, x_BTHK):
  """Σ_t a[b,h,t,s] · x[b,t,h,k] → [B, H, S, K], float32.

  Written with the query axis split in two halves G (t = T/2 · g + t'): XLA canonicalises a dot
  over two contracting axes by transposing both operands into [batch, M, K]·[batch, K, N], which
  YNNPACK runs; a single query axis stays a slower Eigen dot, which also rejects bf16 operands
  with a float32 result. Odd lengths multiply in float32 (exact for bf16 inputs).
  """
  B, H, T, S = a_BHTS.shape
  K = x_BTHK.shape[-1]
  if T % 2:
    return jnp.einsum("bhts,bthk->bhsk", a_BHTS.astype(jnp.float32), x_BTHK.astype(jnp.float32))
  # the barrier keeps XLA's simplifier from folding the split back into one axis
  a_BHGTS, x_BGTHK = jax.lax.optimization_barrier(
    (a_BHTS.reshape(B, H, 2, T // 2, S), x_BTHK.reshape(B, 2, T // 2, H, K))
  )
  return jnp.einsum("bhgts,bgthk->bhsk", a_BHGTS, x_BGTHK, preferred_element_type=jnp.float32)


def _heads_to_length_major(x_BHTK):
  """[B, H, T, K] → [B, T, H, K] after the product: asked for directly ("…->bthk"), XLA computes
  the transposed product, which YNNPACK declines (leaving a slower Eigen float32 dot)."""
  return jnp.swapaxes(x_BHTK, 1, 2)


def _sum_to_shape(x, shape):
  """Sums x's broadcast axes so it has `shape` (the gradient of a broadcast).

  A broadcast leading (batch) axis is summed by halving, x[:n/2] + x[n/2:] until one row is
  left: as a reduction, XLA:CPU merged the position-bias gradients of all layers into one slow
  YNNPACK reduce over that axis.
  """
  while shape[0] == 1 and x.shape[0] > 1:
    n = x.shape[0] // 2
    half = x[:n] + x[n : 2 * n]
    x = half.at[:1].add(x[2 * n :]) if x.shape[0] % 2 else half  # an odd row joins row 0
  axes = tuple(i for i, (n, m) in enumerate(zip(x.shape, shape)) if m == 1 and n != 1)
  return jnp.sum(x, axis=axes, keepdims=True).reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _attention(q_BTHK, k_BHSK, v_BHSK, biases, keep_BHTS, dtype, rate, softmax1):
  return _attention_fwd(q_BTHK, k_BHSK, v_BHSK, biases, keep_BHTS, dtype, rate, softmax1)[0]


def _attention_fwd(q_BTHK, k_BHSK, v_BHSK, biases, keep_BHTS, dtype, rate, softmax1):
  # logits rounded to `dtype` (T5X's default), softmax in float32: in bf16 this halves the
  # traffic of the largest tensors, [B, H, T, S].
  logits_BHTS = jnp.einsum(
    "bthk,bhsk->bhts", q_BTHK, k_BHSK, preferred_element_type=jnp.float32
  ).astype(dtype)
  logits_BHTS = logits_BHTS.astype(jnp.float32)
  if biases:
    # the terms summed first, then added: HF's order (position bias + mask, then + scores)
    logits_BHTS = logits_BHTS + functools.reduce(jnp.add, biases)
  w_BHTS = _softmax(logits_BHTS, softmax1).astype(dtype)
  ctx_BHTK = jnp.einsum(
    "bhts,bhsk->bhtk", _dropped(w_BHTS, keep_BHTS, rate), v_BHSK, preferred_element_type=jnp.float32
  ).astype(dtype)
  return _heads_to_length_major(ctx_BHTK), (q_BTHK, k_BHSK, v_BHSK, biases, keep_BHTS, w_BHTS)


def _attention_bwd(dtype, rate, softmax1, residuals, g_BTHK):
  q_BTHK, k_BHSK, v_BHSK, biases, keep_BHTS, w_BHTS = residuals
  g_BTHK = g_BTHK.astype(dtype)
  dv_BHSK = _contract_queries(_dropped(w_BHTS, keep_BHTS, rate), g_BTHK)
  dw_BHTS = _dropped(
    jnp.einsum("bthk,bhsk->bhts", g_BTHK, v_BHSK, preferred_element_type=jnp.float32),
    keep_BHTS,
    rate,
  )
  # softmax backward on the (rounded) weights the forward pass kept (softmax_1's has this form)
  w32_BHTS = w_BHTS.astype(jnp.float32)
  dlogits_BHTS = w32_BHTS * (dw_BHTS - jnp.sum(dw_BHTS * w32_BHTS, axis=-1, keepdims=True))
  dl_BHTS = dlogits_BHTS.astype(dtype)
  dq_BTHK = _heads_to_length_major(
    jnp.einsum("bhts,bhsk->bhtk", dl_BHTS, k_BHSK, preferred_element_type=jnp.float32)
  )
  dk_BHSK = _contract_queries(dl_BHTS, q_BTHK)
  dbiases = tuple(_sum_to_shape(dlogits_BHTS, b.shape).astype(b.dtype) for b in biases)
  return (
    dq_BTHK.astype(q_BTHK.dtype),
    dk_BHSK.astype(k_BHSK.dtype),
    dv_BHSK.astype(v_BHSK.dtype),
    dbiases,
    None,
  )


_attention.defvjp(_attention_fwd, _attention_bwd)


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
    self.embedding = _param(
      self,
      "embedding",
      nn.initializers.normal(stddev=1.0),
      (self.vocab_size, self.features),
      ("vocab", "embed"),
    )

  def __call__(self, tokens):
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x):
    """Tied output projection: x @ embedding.T, float32 logits."""
    return jax.lax.dot_general(
      x.astype(self.dtype),
      self.embedding.astype(self.dtype),
      (((x.ndim - 1,), (1,)), ((), ())),
      preferred_element_type=jnp.float32,
    )


# ----------------------------------------------------------------------------------------------
# Relative position bias


@functools.cache
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
      * np.float32(num_buckets - max_exact)
    )
  large = np.minimum(np.where(n < max_exact, 0, large).astype(np.int64), num_buckets - 1)
  return np.where(n < max_exact, n, large).astype(np.int32)


def relative_position_bucket(
  relative_position, bidirectional: bool, num_buckets: int, max_distance: int
):
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


def _toeplitz(v_HJ, T: int, S: int):
  """[H, T, S] with out[h, t, s] = v[h, s - t + T - 1], for v of length J = T + S - 1.

  Built by tiling v with period J + 1 and re-reading it in rows of J, so each row starts one
  step further back. Its gradient is then a pad, reshape and sum over T, which XLA fuses into one
  pass; the gradient of a [T, S] gather is a scatter-add that XLA:CPU runs after a strided
  reorder of the whole [H, T, S] gradient.
  """
  H, J = v_HJ.shape
  tiled = jnp.tile(jnp.pad(v_HJ, ((0, 0), (0, 1))), (1, T))  # [H, T * (J + 1)]
  # row t, column j holds v[(j - t) mod (J + 1)]; columns T - 1 + s never wrap
  return tiled[:, : T * J].reshape(H, T, J)[:, :, T - 1 :]


class RelativePositionBias(nn.Module):
  """Per-head scalar bias from bucketed relative positions: one per stack, shared by its layers,
  or one per layer (`T5Config.relative_attention_per_layer`, umT5)."""

  num_heads: int
  num_buckets: int
  max_distance: int
  bidirectional: bool

  @nn.compact
  def __call__(self, query_length=None, key_length=None, query_offset=0, positions_BS=None):
    """Bias [1, H, T, S] for queries at positions query_offset + [0, T) and keys at [0, S);
    or, given `positions_BS` (self-attention among tokens at these original positions, as MrT5's
    hard deletion keeps them), [B, H, S, S] and the lengths are unused."""
    rel_embedding = _param(
      self,
      "rel_embedding",
      nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
      (self.num_heads, self.num_buckets),
      ("heads", "relpos_buckets"),
    )
    if positions_BS is not None:
      distances_BSS = positions_BS[:, None, :] - positions_BS[:, :, None]  # key - query
      buckets_BSS = relative_position_bucket(
        distances_BSS, self.bidirectional, self.num_buckets, self.max_distance
      )
      return jnp.moveaxis(jnp.take(rel_embedding, buckets_BSS, axis=1), 0, 1)
    T, S = query_length, key_length
    # the bias depends only on key - query, so gather one value per distance: -(T-1)..S-1
    distances_J = jnp.arange(T + S - 1) - (T - 1) - query_offset
    buckets_J = relative_position_bucket(
      distances_J, self.bidirectional, self.num_buckets, self.max_distance
    )
    return _toeplitz(jnp.take(rel_embedding, buckets_J, axis=1), T, S)[None]


# ----------------------------------------------------------------------------------------------
# Attention and MLP


class MultiHeadAttention(nn.Module):
  """Dot-product attention without 1/sqrt(K) scaling (T5 folds it into the query init).

  With `decode=True` the keys/values live in the 'cache' collection:
    * self-attention (`cache_index` given): this call's K/V are written at
      [cache_index, cache_index + T) of a [B, H, max_length, K] buffer, and the queries attend
      over the whole buffer (the caller's bias masks unwritten/future slots);
    * cross-attention (`cache_index` None): K/V are computed from `x_kv` on the first call and
      read back on later ones, so the encoder output is projected once per decode. The cache
      may hold fewer rows than the queries: each K/V row then serves `B / rows` consecutive
      query rows (beam search keeps one row per example for all its beams), and `bias_BHTS`
      has the cache's rows (or 1).
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

    B, T = x_q_BTD.shape[:2]
    kernels = cfg.kernels
    q_BTHK = dot(x_q_BTD, query, dtype, kernels=kernels)
    q_BTHK = nn.with_logical_constraint(q_BTHK, ("batch", "length", "heads", "kv"))

    def project_kv(x_BSD):
      # head-major K/V: the decode caches keep this layout, so no per-step transposes.
      kv_axes = ("batch", "heads", "length", "kv")
      k = jnp.swapaxes(dot(x_BSD, key, dtype, kernels=kernels), 1, 2)
      v = jnp.swapaxes(dot(x_BSD, value, dtype, kernels=kernels), 1, 2)
      return nn.with_logical_constraint(k, kv_axes), nn.with_logical_constraint(v, kv_axes)

    if self.decode and cache_index is not None:  # cached self-attention
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

    group = B // k_BHSK.shape[0]
    if group > 1:
      # cached K/V rows shared by `group` consecutive query rows (the beams of one example):
      # their queries attend as one longer query block, so the K/V are read once, not per beam.
      q_BTHK = q_BTHK.reshape(B // group, group * T, H, K)
    keep_BHTS = None
    if not self.deterministic and cfg.dropout_rate > 0:
      keep_BHTS = jax.random.bernoulli(
        self.make_rng("dropout"), 1.0 - cfg.dropout_rate, (B, H, T, k_BHSK.shape[2])
      )
    ctx_BTHK = dot_product_attention(
      q_BTHK,
      k_BHSK,
      v_BHSK,
      bias_BHTS,
      dtype,
      keep_BHTS,
      cfg.dropout_rate,
      kernels,
      cfg.use_softmax1,
    ).reshape(B, T, H, K)
    ctx_BTHK = nn.with_logical_constraint(ctx_BTHK, ("batch", "length", "heads", "kv"))
    return dot(ctx_BTHK, out, dtype, contract_dims=2, kernels=kernels)


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
      y = _activation(act)(dot(x_BTD, wi, dtype, out_dtype=jnp.float32, kernels=cfg.kernels))
      h_BTF = y if h_BTF is None else h_BTF * y
    h_BTF = nn.with_logical_constraint(h_BTF.astype(dtype), ("batch", "length", "mlp"))
    if not self.deterministic and cfg.dropout_rate > 0:
      h_BTF = nn.Dropout(cfg.dropout_rate)(h_BTF, deterministic=False)
    wo = _param(self, "wo", _mlp_init, (cfg.d_ff, cfg.d_model), ("mlp", "embed"))
    return dot(h_BTF, wo, dtype, kernels=cfg.kernels)


def _activation(name: str):
  return {
    "relu": jax.nn.relu,
    # tanh approximation: what T5X's nn.gelu and HF's "gated-gelu" (gelu_new) compute.
    "gelu": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
    "linear": lambda x: x,
  }[name]
