"""Checkpoint conversion: Hugging Face T5 and T5X checkpoints to and from xt5 params.

xt5 params are the plain (unboxed) pytree that `network.Transformer(cfg).init(...)['params']`
holds: nested dicts of float32 arrays, with `layers_{i}` subtrees, or one `layers` subtree whose
leaves carry a leading layer axis when `cfg.scan_layers`. Every function here produces exactly
that tree (checked leaf by leaf against `param_shapes(cfg)`), or raises `CheckpointMismatchError`
naming every missing, unexpected or wrongly shaped tensor.

Library API (pure functions, no files):
  config_from_hf(hf_config, **overrides) -> T5Config   from an HF config object or config.json
  hf_config_dict(cfg) -> dict                           config.json of T5ForConditionalGeneration
  params_from_hf_state_dict(state_dict, cfg) -> params  HF names (numpy or torch) -> xt5 tree
  params_to_hf_state_dict(params, cfg) -> {name: arr}   xt5 tree -> HF names
  params_from_t5x(t5x_tree, cfg) -> params              T5X `target` tree (scanned or not)
  params_to_t5x(params, cfg, scanned=False) -> tree     the inverse (tests, exports)
  config_from_t5x(t5x_tree, **overrides) -> T5Config    shapes read off a T5X tree
  stack_layers(params) / unstack_layers(params)         scanned <-> unrolled layout
  param_shapes(cfg) -> tree of jax.ShapeDtypeStruct     the tree every function targets
  check_params(params, cfg)                             raises naming every mismatch

Files:
  load_hf(hf_dir, **overrides) -> (cfg, params)  an HF `save_pretrained` dir
  load_hf_state_dict(hf_dir) -> {name: array}    model.safetensors or pytorch_model.bin, sharded
                                                 (`*.index.json`) or not; bf16/fp16 read too
  save_hf(params, cfg, hf_dir)                   config.json, generation_config.json and
                                                 model.safetensors for `from_pretrained`
  load_t5x_checkpoint(path) -> nested dict       orbax/tensorstore T5X dirs, or the older msgpack
                                                 `checkpoint` file (tensorstore leaves resolved)
  from_hf / from_t5x / to_hf                     the commands below, as functions

Command line (`python -m models.convert ...`):
  from-hf  HF_DIR  OUT_DIR [--scan_layers] [--dtype bfloat16]
  from-t5x T5X_CHECKPOINT_DIR OUT_DIR [--config CONFIG.json|MODEL.gin] [--scan_layers] ...
           Without --config the shapes are read off the checkpoint (vocab, d_model, heads,
           head_dim, d_ff, layer counts, gated or not, tied or not); the rest are T5 defaults
           (GEGLU when gated else ReLU, 32 buckets, max distance 128, eps 1e-6). --config takes
           an xt5 config.json (`T5Config.to_dict`) or a gin file binding MODEL_CONFIG, such as
           configs/models/mt5/small.gin or an OUT_DIR/model.gin (needs gin-config).
  to-hf    XT5_DIR HF_DIR                       XT5_DIR as written by from-hf / from-t5x.
  --scan_layers / --dtype set those config fields; from-hf keeps the HF config's dropout_rate.
  Exit status 1 with a one-line `error: ...` (naming the file or tensors) on bad input.

xt5 checkpoint layout written by from-hf / from-t5x (see models/checkpoint.py):
  OUT_DIR/params/       orbax StandardCheckpointer checkpoint of the params tree (atomic write)
  OUT_DIR/config.json   `T5Config.to_dict()`
  OUT_DIR/model.gin     the same config as gin bindings of `model_config.T5Config`
Load with `checkpoint.load_params(OUT_DIR, cfg)` (or `checkpoint.load_checkpoint(OUT_DIR)` for
config and params together); `T5Config.from_dict(json.load(open(OUT_DIR/config.json)))`.

HF conventions handled here: torch Linear weights are [out, in] (q/k/v [heads*head_dim, d_model],
o [d_model, heads*head_dim]); relative_attention_bias lives in block 0 of each stack as
[buckets, heads]; a tied model (T5.1.0) scales decoder output by d_model**-0.5 before the tied
lm_head, which our network does when `logits_via_embedding`. transformers 5.x forces
`tie_word_embeddings=True` in every T5Config and records T5.1.0-ness as `scale_decoder_outputs`;
an untied model then keeps its own `lm_head.weight` in the checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from models.config import T5Config

Params = dict  # nested dict of arrays

HF_WEIGHTS_SAFETENSORS = "model.safetensors"
HF_WEIGHTS_BIN = "pytorch_model.bin"


class CheckpointMismatchError(ValueError):
  """A checkpoint's tensors do not match the config: lists every offending tensor."""


# ----------------------------------------------------------------------------------------------
# The target tree


@functools.lru_cache(maxsize=32)
def _param_shapes_cached(cfg: T5Config):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from models.network import Transformer

  tokens = jnp.ones((1, 2), jnp.int32)

  def init():
    return Transformer(cfg).init(
      jax.random.PRNGKey(0), encoder_input_tokens=tokens, decoder_input_tokens=tokens
    )["params"]

  return nn.unbox(jax.eval_shape(init))


def param_shapes(cfg: T5Config) -> Params:
  """The params tree `Transformer(cfg)` initialises, as `jax.ShapeDtypeStruct` leaves."""
  return _unfreeze(_param_shapes_cached(cfg))


def _unfreeze(tree):
  if isinstance(tree, Mapping):
    return {k: _unfreeze(v) for k, v in tree.items()}
  return tree


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> Params:
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def _path_str(path) -> str:
  return "/".join(path)


_LAYER_RE = re.compile(r"^layers_(\d+)$")


def unstack_layers(params: Params) -> Params:
  """Scanned layout (`layers` with a leading layer axis) -> unrolled (`layers_{i}`). Views."""
  out = {}
  for k, v in params.items():
    if k == "layers" and isinstance(v, Mapping):
      flat = _flatten(v)
      n = {np.shape(x)[0] for x in flat.values()}
      if len(n) != 1:
        raise CheckpointMismatchError(f"scanned 'layers' leaves disagree on the layer count: {n}")
      for i in range(n.pop()):
        out[f"layers_{i}"] = _unflatten({p: x[i] for p, x in flat.items()})
    elif isinstance(v, Mapping):
      out[k] = unstack_layers(v)
    else:
      out[k] = v
  return out


def stack_layers(params: Params) -> Params:
  """Unrolled layout (`layers_{i}`) -> scanned (`layers`, leading layer axis), as numpy."""
  out = {}
  layer_ids = sorted(int(m.group(1)) for k in params if (m := _LAYER_RE.match(k)))
  if layer_ids:
    if layer_ids != list(range(len(layer_ids))):
      raise CheckpointMismatchError(f"layers are not numbered 0..n-1: {layer_ids}")
    flats = [_flatten(params[f"layers_{i}"]) for i in layer_ids]
    out["layers"] = _unflatten({p: np.stack([np.asarray(f[p]) for f in flats]) for p in flats[0]})
  for k, v in params.items():
    if _LAYER_RE.match(k):
      continue
    out[k] = stack_layers(v) if isinstance(v, Mapping) else v
  return out


def is_scanned(params: Params) -> bool:
  """Whether a params tree has the scanned (`layers`) layout."""
  return any(isinstance(sub, Mapping) and "layers" in sub for sub in params.values())


def _to_layout(flat_unrolled: Mapping[tuple[str, ...], np.ndarray], cfg: T5Config) -> Params:
  tree = _unflatten(flat_unrolled)
  return stack_layers(tree) if cfg.scan_layers else tree


# ----------------------------------------------------------------------------------------------
# Leaf transforms: source layout <-> xt5 layout. Every one works on trailing axes so it also
# applies to a stack of layers.


@dataclasses.dataclass(frozen=True)
class _Leaf:
  """How one xt5 leaf is stored in a foreign checkpoint."""

  name: str  # the foreign tensor name
  kind: str  # 'id', 'T' (swap last two axes), 'qkv' (in, H*K), 'out' (H*K, out), 'hf_qkv', 'hf_out'


def _foreign_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape the foreign checkpoint stores for an xt5 leaf of `shape`."""
  if kind == "id":
    return tuple(shape)
  if kind == "T":
    return tuple(shape[:-2]) + (shape[-1], shape[-2])
  if kind == "qkv":  # [.., D, H, K] -> [.., D, H*K]
    return tuple(shape[:-2]) + (shape[-2] * shape[-1],)
  if kind == "out":  # [.., H, K, D] -> [.., H*K, D]
    return tuple(shape[:-3]) + (shape[-3] * shape[-2], shape[-1])
  if kind == "hf_qkv":  # [D, H, K] -> [H*K, D]
    return (shape[-2] * shape[-1], shape[-3])
  if kind == "hf_out":  # [H, K, D] -> [D, H*K]
    return (shape[-1], shape[-3] * shape[-2])
  raise AssertionError(kind)


def _to_xt5(kind: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if kind == "id":
    return x
  if kind == "T" or kind == "hf_qkv" or kind == "hf_out":
    x = np.swapaxes(x, -1, -2)
  return x.reshape(shape)


def _from_xt5(kind: str, x: np.ndarray) -> np.ndarray:
  if kind == "id":
    return x
  if kind == "T":
    return np.swapaxes(x, -1, -2)
  if kind == "qkv":
    return x.reshape(x.shape[:-2] + (-1,))
  if kind == "out":
    return x.reshape(x.shape[:-3] + (-1, x.shape[-1]))
  if kind == "hf_qkv":
    return np.swapaxes(x.reshape(x.shape[:-2] + (-1,)), -1, -2)
  if kind == "hf_out":
    return np.swapaxes(x.reshape(x.shape[:-3] + (-1, x.shape[-1])), -1, -2)
  raise AssertionError(kind)


def _as_numpy(x) -> np.ndarray:
  """numpy view/copy of a numpy, jax or torch array (torch bf16 goes through float32)."""
  if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
    x = x.detach().cpu()
    if str(x.dtype) in ("torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e5m2"):
      x = x.float()
    return x.numpy()
  return np.asarray(x)


def _f32(x) -> np.ndarray:
  return np.asarray(_as_numpy(x), dtype=np.float32)


def _mismatch_message(what: str, missing, unexpected, bad_shapes, limit: int = 40) -> str:
  lines = [f"{what} does not match the config:"]

  def section(title, items, fmt):
    if items:
      lines.append(f"  {title} ({len(items)}):")
      for it in list(items)[:limit]:
        lines.append("    " + fmt(it))
      if len(items) > limit:
        lines.append(f"    ... and {len(items) - limit} more")

  section("missing tensors", missing, lambda m: f"{m[0]}: expected shape {m[1]}")
  section(
    "tensors with the wrong shape",
    bad_shapes,
    lambda m: f"{m[0]}: expected shape {m[1]}, found {m[2]}",
  )
  section("unexpected tensors", unexpected, lambda m: f"{m[0]}: shape {m[1]}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Hugging Face


_HF_ACTIVATIONS = {
  "relu": ("relu",),
  "gated-gelu": ("gelu", "linear"),  # HF maps gated-gelu to gelu_new (tanh): what we compute
  "gated-gelu_new": ("gelu", "linear"),
  "gated-gelu_pytorch_tanh": ("gelu", "linear"),
  "gelu_new": ("gelu",),
  "gelu_pytorch_tanh": ("gelu",),
  "gated-silu": ("silu", "linear"),
  "silu": ("silu",),
  "gated-relu": ("relu", "linear"),
}
_XT5_TO_HF_ACTIVATION = {
  ("relu",): "relu",
  ("gelu", "linear"): "gated-gelu",
  ("gelu",): "gelu_new",
  ("silu", "linear"): "gated-silu",
  ("silu",): "silu",
  ("relu", "linear"): "gated-relu",
}


def _hf_tied(hf: Mapping[str, Any]) -> bool:
  """Whether an HF T5 config describes a T5.1.0-style tied, rescaled output layer."""
  if hf.get("scale_decoder_outputs") is not None:  # transformers >= 5
    return bool(hf["scale_decoder_outputs"])
  return bool(hf.get("tie_word_embeddings", True))  # transformers 4.x: default True


def _hf_config_as_dict(hf_config) -> dict:
  if isinstance(hf_config, Mapping):
    return dict(hf_config)
  d = hf_config.to_dict()
  # to_dict of transformers 5 keeps scale_decoder_outputs; make sure it is there.
  if hasattr(hf_config, "scale_decoder_outputs"):
    d["scale_decoder_outputs"] = hf_config.scale_decoder_outputs
  return d


def config_from_hf(hf_config, **overrides) -> T5Config:
  """xt5 `T5Config` of an HF T5/mT5/ByT5 config (a `transformers` config or config.json dict).

  `overrides` set xt5-only fields (`scan_layers`, `dtype`, `remat_policy`, ...).
  """
  hf = _hf_config_as_dict(hf_config)
  model_type = hf.get("model_type", "t5")
  if model_type not in ("t5", "mt5", "byt5"):
    raise ValueError(
      f"model_type={model_type!r} is not supported (t5, mt5 only; umt5/longt5 "
      "differ in architecture)"
    )
  if hf.get("is_encoder_decoder", True) is False:
    raise ValueError("only encoder-decoder T5 configs can be converted")
  proj = hf.get("feed_forward_proj", "relu")
  if proj not in _HF_ACTIVATIONS:
    raise ValueError(
      f"feed_forward_proj={proj!r} is not supported; known: {sorted(_HF_ACTIVATIONS)} "
      "(plain 'gelu' is the exact erf GELU; xt5's gelu is the tanh approximation)"
    )
  num_layers = hf.get("num_layers", 6)
  fields = dict(
    vocab_size=hf["vocab_size"],
    d_model=hf["d_model"],
    num_heads=hf["num_heads"],
    head_dim=hf["d_kv"],
    d_ff=hf["d_ff"],
    num_encoder_layers=num_layers,
    num_decoder_layers=hf.get("num_decoder_layers") or num_layers,
    mlp_activations=_HF_ACTIVATIONS[proj],
    logits_via_embedding=_hf_tied(hf),
    dropout_rate=float(hf.get("dropout_rate", 0.1)),
    relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
    relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
    layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
  )
  fields.update(overrides)
  return T5Config(**fields)


def hf_config_dict(cfg: T5Config) -> dict:
  """config.json of the `T5ForConditionalGeneration` that holds `cfg`'s params."""
  if cfg.architecture != "encoder_decoder":
    raise ValueError(
      f"architecture={cfg.architecture!r}: only encoder_decoder models have an HF T5 equivalent"
    )
  acts = tuple(cfg.mlp_activations)
  if acts not in _XT5_TO_HF_ACTIVATION:
    raise ValueError(f"mlp_activations={acts} has no HF feed_forward_proj equivalent")
  tied = bool(cfg.logits_via_embedding)
  return {
    "architectures": ["T5ForConditionalGeneration"],
    "model_type": "t5",
    "vocab_size": cfg.vocab_size,
    "d_model": cfg.d_model,
    "d_kv": cfg.head_dim,
    "d_ff": cfg.d_ff,
    "num_layers": cfg.num_encoder_layers,
    "num_decoder_layers": cfg.num_decoder_layers,
    "num_heads": cfg.num_heads,
    "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
    "relative_attention_max_distance": cfg.relative_attention_max_distance,
    "dropout_rate": cfg.dropout_rate,
    "layer_norm_epsilon": cfg.layer_norm_epsilon,
    "initializer_factor": 1.0,
    "feed_forward_proj": _XT5_TO_HF_ACTIVATION[acts],
    "is_encoder_decoder": True,
    "use_cache": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
    # transformers 4.x reads tie_word_embeddings; 5.x reads scale_decoder_outputs (and unties
    # lm_head whenever the checkpoint holds one that differs from `shared`).
    "tie_word_embeddings": tied,
    "scale_decoder_outputs": tied,
    "torch_dtype": "float32",
  }


_HF_ENC_SUB = {
  "pre_attention_layer_norm": "layer.0.layer_norm",
  "attention": "layer.0.SelfAttention",
  "pre_mlp_layer_norm": "layer.1.layer_norm",
  "mlp": "layer.1.DenseReluDense",
}
_HF_DEC_SUB = {
  "pre_self_attention_layer_norm": "layer.0.layer_norm",
  "self_attention": "layer.0.SelfAttention",
  "pre_cross_attention_layer_norm": "layer.1.layer_norm",
  "encoder_decoder_attention": "layer.1.EncDecAttention",
  "pre_mlp_layer_norm": "layer.2.layer_norm",
  "mlp": "layer.2.DenseReluDense",
}
_HF_ATTN_LEAF = {
  "query": ("q", "hf_qkv"),
  "key": ("k", "hf_qkv"),
  "value": ("v", "hf_qkv"),
  "out": ("o", "hf_out"),
}


def _hf_leaf(path: tuple[str, ...]) -> _Leaf:
  """HF name and transform of one unrolled xt5 param path."""
  if path == ("token_embedder", "embedding"):
    return _Leaf("shared.weight", "id")
  if path == ("decoder", "logits_dense"):
    return _Leaf("lm_head.weight", "T")
  stack = path[0]
  if path[1:] == ("relpos_bias", "rel_embedding"):
    return _Leaf(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "T")
  if path[1:] in (("encoder_norm", "scale"), ("decoder_norm", "scale")):
    return _Leaf(f"{stack}.final_layer_norm.weight", "id")
  m = _LAYER_RE.match(path[1])
  subs = _HF_ENC_SUB if stack == "encoder" else _HF_DEC_SUB
  if m and path[2] in subs:
    prefix = f"{stack}.block.{m.group(1)}.{subs[path[2]]}"
    if path[3:] == ("scale",):
      return _Leaf(prefix + ".weight", "id")
    if path[2] == "mlp":
      return _Leaf(f"{prefix}.{path[3]}.weight", "T")
    name, kind = _HF_ATTN_LEAF[path[3]]
    return _Leaf(f"{prefix}.{name}.weight", kind)
  raise AssertionError(f"no HF name for xt5 param {_path_str(path)}")


def _hf_specs(cfg: T5Config):
  """[(xt5 unrolled path, xt5 shape, _Leaf)] for every param of `cfg`."""
  if cfg.architecture != "encoder_decoder":
    raise ValueError(f"architecture={cfg.architecture!r}: HF T5 checkpoints are encoder-decoder")
  flat = _flatten(param_shapes(cfg.replace(scan_layers=False)))
  return [(p, tuple(s.shape), _hf_leaf(p)) for p, s in sorted(flat.items())]


# Names HF checkpoints may carry that are aliases of `shared.weight` (tied in the HF model).
_HF_EMBED_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Unused tensors that HF itself skips on load (`_keys_to_ignore_on_load_unexpected`): the
# original t5-small/base/... checkpoints carry a cross-attention bias nothing reads.
_HF_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def params_from_hf_state_dict(
  state_dict: Mapping[str, Any], cfg: T5Config, *, lm_head_from_shared: bool = False
) -> Params:
  """xt5 params (float32 numpy, `cfg`'s layout) from an HF `T5ForConditionalGeneration` state
  dict of numpy arrays or torch tensors.

  `shared.weight` may instead be present only as `encoder.embed_tokens.weight` /
  `decoder.embed_tokens.weight`. An untied `cfg` needs `lm_head.weight` unless
  `lm_head_from_shared` (an HF model saved with its head tied to `shared` but unscaled, which
  transformers 5 does to a T5.1.1 model built from a config). A tied `cfg` ignores an
  `lm_head.weight` equal to `shared.weight` and rejects a different one.
  """
  sd = dict(state_dict)
  if "shared.weight" not in sd:
    for alias in _HF_EMBED_ALIASES:
      if alias in sd:
        sd["shared.weight"] = sd[alias]
        break
  if lm_head_from_shared and not cfg.logits_via_embedding and "lm_head.weight" not in sd:
    if "shared.weight" in sd:
      sd["lm_head.weight"] = sd["shared.weight"]
  used = set(_HF_EMBED_ALIASES) | set(_HF_IGNORED)
  if cfg.logits_via_embedding and "lm_head.weight" in sd:
    head, shared = sd["lm_head.weight"], sd.get("shared.weight")
    if (
      shared is not None
      and tuple(head.shape) == tuple(shared.shape)
      and not np.array_equal(_as_numpy(head), _as_numpy(shared))
    ):
      raise CheckpointMismatchError(
        "the config ties the output layer to the embedding (T5.1.0, logits_via_embedding), "
        "but the checkpoint's lm_head.weight differs from shared.weight; convert it as an "
        "untied model (tie_word_embeddings=false) instead"
      )
    used.add("lm_head.weight")

  missing, bad, out = [], [], {}
  for path, shape, leaf in _hf_specs(cfg):
    want = _foreign_shape(leaf.kind, shape)
    if leaf.name not in sd:
      missing.append((leaf.name, want))
      continue
    used.add(leaf.name)
    got = tuple(sd[leaf.name].shape)
    if got != want:
      bad.append((leaf.name, want, got))
      continue
    out[path] = _to_xt5(leaf.kind, _f32(sd[leaf.name]), shape)
  unexpected = [(k, tuple(v.shape)) for k, v in sorted(sd.items()) if k not in used]
  if missing or bad or unexpected:
    raise CheckpointMismatchError(_mismatch_message("HF state dict", missing, unexpected, bad))
  return _to_layout(out, cfg)


def params_to_hf_state_dict(params: Params, cfg: T5Config) -> dict[str, np.ndarray]:
  """HF `T5ForConditionalGeneration` state dict (float32 numpy, contiguous) of xt5 params.

  Holds `shared.weight` once (HF ties the embed_tokens aliases) and `lm_head.weight` only for
  untied models.
  """
  check_params(params, cfg, "xt5 params")
  flat = _flatten(unstack_layers(_host(params)))
  specs = _hf_specs(cfg)
  return {
    leaf.name: np.ascontiguousarray(_from_xt5(leaf.kind, _f32(flat[p]))) for p, _, leaf in specs
  }


def _host(params):
  import jax

  return jax.tree_util.tree_map(_as_numpy, params)


def _shape(x) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def _check_tree(
  shapes: Mapping[tuple[str, ...], tuple], want: Mapping[tuple[str, ...], tuple], what: str
):
  """`shapes`/`want`: flat {path: shape}. Raises naming every difference."""
  missing = [(_path_str(p), s) for p, s in sorted(want.items()) if p not in shapes]
  unexpected = [(_path_str(p), s) for p, s in sorted(shapes.items()) if p not in want]
  bad = [
    (_path_str(p), tuple(want[p]), tuple(s))
    for p, s in sorted(shapes.items())
    if p in want and tuple(s) != tuple(want[p])
  ]
  if missing or unexpected or bad:
    raise CheckpointMismatchError(_mismatch_message(what, missing, unexpected, bad))


def check_params(params: Params, cfg: T5Config, what: str = "params"):
  """Raises `CheckpointMismatchError` unless `params` (arrays or anything with `.shape`) has
  exactly `cfg`'s tree and shapes."""
  want = {p: tuple(s.shape) for p, s in _flatten(param_shapes(cfg)).items()}
  _check_tree({p: _shape(v) for p, v in _flatten(params).items()}, want, what)


# ----------------------------------------------------------------------------------------------
# HF files


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import safe_open

  try:
    out = {}
    with safe_open(path, framework="numpy") as f:
      keys = list(f.keys())
      bf16 = [k for k in keys if f.get_slice(k).get_dtype() == "BF16"]
      for k in keys:
        if k not in bf16:
          out[k] = f.get_tensor(k)
    if bf16:  # numpy has no bfloat16: read those bytes ourselves (ml_dtypes ships with jax).
      out.update(_read_safetensors_raw(path, bf16))
    return out
  except Exception as e:  # safetensors raises its own error types
    raise ValueError(f"cannot read safetensors file {path}: {e}") from e


def _read_safetensors_raw(path: str, keys) -> dict[str, np.ndarray]:
  import ml_dtypes

  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
  base = 8 + n
  mm = np.memmap(path, dtype=np.uint8, mode="r")
  out = {}
  for k in keys:
    info = header[k]
    assert info["dtype"] == "BF16", info
    start, end = info["data_offsets"]
    out[k] = mm[base + start : base + end].view(ml_dtypes.bfloat16).reshape(info["shape"])
  return out


def _read_torch_bin(path: str) -> dict[str, Any]:
  import torch

  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise ValueError(f"cannot read torch checkpoint file {path}: {e}") from e
  if not isinstance(sd, Mapping):
    raise ValueError(f"torch checkpoint file {path} holds a {type(sd).__name__}, not a state dict")
  return dict(sd)


def load_hf_state_dict(hf_dir: str) -> dict[str, Any]:
  """All tensors of an HF `save_pretrained` directory (safetensors preferred over .bin)."""
  for weights, reader in (
    (HF_WEIGHTS_SAFETENSORS, _read_safetensors),
    (HF_WEIGHTS_BIN, _read_torch_bin),
  ):
    single = os.path.join(hf_dir, weights)
    index = single + ".index.json"
    if os.path.exists(single):
      return reader(single)
    if os.path.exists(index):
      try:
        with open(index) as f:
          weight_map = json.load(f)["weight_map"]
      except Exception as e:
        raise ValueError(f"cannot read shard index {index}: {e}") from e
      sd = {}
      for shard in sorted(set(weight_map.values())):
        sd.update(reader(os.path.join(hf_dir, shard)))
      return sd
  raise FileNotFoundError(
    f"{hf_dir} holds no {HF_WEIGHTS_SAFETENSORS} or {HF_WEIGHTS_BIN} (nor sharded *.index.json)"
  )


def load_hf_config(hf_dir: str) -> dict:
  path = os.path.join(hf_dir, "config.json")
  try:
    with open(path) as f:
      return json.load(f)
  except Exception as e:
    raise ValueError(f"cannot read HF config {path}: {e}") from e


def load_hf(hf_dir: str, **overrides) -> tuple[T5Config, Params]:
  """(xt5 config, params) of an HF T5 `save_pretrained` directory."""
  hf_cfg = load_hf_config(hf_dir)
  cfg = config_from_hf(hf_cfg, **overrides)
  # transformers 5 saves a T5.1.1 model built from a config with lm_head tied to `shared` (and
  # unscaled), so no lm_head.weight in the file; HF then computes logits with `shared`.
  lm_head_from_shared = bool(hf_cfg.get("tie_word_embeddings", True)) and not _hf_tied(hf_cfg)
  sd = load_hf_state_dict(hf_dir)
  return cfg, params_from_hf_state_dict(sd, cfg, lm_head_from_shared=lm_head_from_shared)


def save_hf(params: Params, cfg: T5Config, hf_dir: str):
  """Writes config.json, generation_config.json and model.safetensors for
  `T5ForConditionalGeneration.from_pretrained(hf_dir)`."""
  from safetensors.numpy import save_file

  sd = params_to_hf_state_dict(params, cfg)
  os.makedirs(hf_dir, exist_ok=True)
  save_file(sd, os.path.join(hf_dir, HF_WEIGHTS_SAFETENSORS), metadata={"format": "pt"})
  with open(os.path.join(hf_dir, "config.json"), "w") as f:
    json.dump(hf_config_dict(cfg), f, indent=2, sort_keys=True)
  with open(os.path.join(hf_dir, "generation_config.json"), "w") as f:
    json.dump({"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}, f, indent=2)


# ----------------------------------------------------------------------------------------------
# T5X


_T5X_ATTENTION = ("attention", "self_attention", "encoder_decoder_attention")


def _t5x_leaf(path: tuple[str, ...]) -> _Leaf:
  """T5X name ('/'-joined, unrolled) and transform of one xt5 param path (unrolled or scanned:
  the `layers` / `layers_{i}` element is kept as is)."""
  if path == ("decoder", "logits_dense"):
    return _Leaf("decoder/logits_dense/kernel", "id")
  if len(path) >= 2 and path[-2] in _T5X_ATTENTION:
    kind = "out" if path[-1] == "out" else "qkv"
    return _Leaf(_path_str(path + ("kernel",)), kind)
  if len(path) >= 2 and path[-2] == "mlp":
    return _Leaf(_path_str(path + ("kernel",)), "id")
  return _Leaf(_path_str(path), "id")


def _strip_t5x_wrappers(tree: Mapping) -> Mapping:
  """The `target` params tree of a whole T5X checkpoint (or the tree itself)."""
  if "optimizer" in tree and isinstance(tree["optimizer"], Mapping):  # msgpack version >= 2
    tree = tree["optimizer"]
  if "target" in tree and isinstance(tree["target"], Mapping):
    tree = tree["target"]
  return tree


def _t5x_is_scanned(flat_names) -> bool:
  return any("/layers/" in n for n in flat_names)


def params_from_t5x(t5x_tree: Mapping, cfg: T5Config) -> Params:
  """xt5 params (float32 numpy, `cfg`'s layout) from a T5X params tree.

  Accepts the whole restored checkpoint (`{'target': ..., 'state': ...}`, or msgpack's
  `{'optimizer': {'target': ...}}`) or just the target tree, scanned (one `layers` subtree,
  layer axis at position 1 of every leaf) or unrolled (`layers_{i}`). Attention kernels are
  2-D in T5X ([d_model, heads*head_dim], out [heads*head_dim, d_model]); dense kernels sit
  under `.../kernel`. Raises `CheckpointMismatchError` naming every mismatch.
  """
  src = {_path_str(p): v for p, v in _flatten(_strip_t5x_wrappers(t5x_tree)).items()}
  scanned_src = _t5x_is_scanned(src)
  expected = _flatten(param_shapes(cfg.replace(scan_layers=scanned_src)))
  missing, bad, out, used = [], [], {}, set()
  for path, sds in sorted(expected.items()):
    shape = tuple(sds.shape)
    leaf = _t5x_leaf(path)
    in_layers = "layers" in path
    if in_layers:  # T5X stacks at axis 1; xt5 at axis 0
      want = _foreign_shape(leaf.kind, shape[1:])
      want = want[:1] + (shape[0],) + want[1:]
    else:
      want = _foreign_shape(leaf.kind, shape)
    if leaf.name not in src:
      missing.append((leaf.name, want))
      continue
    used.add(leaf.name)
    got = tuple(np.shape(src[leaf.name]))
    if got != want:
      bad.append((leaf.name, want, got))
      continue
    x = _f32(src[leaf.name])
    if in_layers:
      x = np.moveaxis(x, 1, 0)
    out[path] = _to_xt5(leaf.kind, x, shape)
  unexpected = [(k, tuple(np.shape(v))) for k, v in sorted(src.items()) if k not in used]
  if missing or bad or unexpected:
    raise CheckpointMismatchError(_mismatch_message("T5X checkpoint", missing, unexpected, bad))
  tree = _unflatten(out)
  if scanned_src != cfg.scan_layers:
    tree = stack_layers(tree) if cfg.scan_layers else unstack_layers(tree)
  return tree


def params_to_t5x(params: Params, cfg: T5Config, scanned: bool = False) -> Params:
  """T5X target tree (float32 numpy) of xt5 params; `scanned` puts layers on axis 1."""
  check_params(params, cfg, "xt5 params")
  params = _host(params)
  params = stack_layers(params) if scanned else unstack_layers(params)
  out = {}
  for path, x in _flatten(params).items():
    leaf = _t5x_leaf(path)
    y = _from_xt5(leaf.kind, _f32(x))
    if "layers" in path:
      y = np.moveaxis(y, 0, 1)
    out[tuple(leaf.name.split("/"))] = np.ascontiguousarray(y)
  return _unflatten(out)


def config_from_t5x(t5x_tree: Mapping, **overrides) -> T5Config:
  """A `T5Config` with the shapes of a T5X params tree; the rest T5 defaults (see module doc).

  `overrides` win over what is read off the tree (e.g. `mlp_activations`, `scan_layers`).
  """
  src = {_path_str(p): v for p, v in _flatten(_strip_t5x_wrappers(t5x_tree)).items()}
  scanned = _t5x_is_scanned(src)

  def shape(name):
    if name not in src:
      raise CheckpointMismatchError(f"T5X checkpoint has no {name}; cannot infer the config")
    return tuple(np.shape(src[name]))

  def count_layers(stack):
    if scanned:
      for n in src:
        if n.startswith(f"{stack}/layers/"):
          return shape(n)[1]
      return 0
    return len({n.split("/")[1] for n in src if re.match(rf"^{stack}/layers_\d+/", n)})

  encoder_decoder = any(n.startswith("encoder/") for n in src)
  vocab, d_model = shape("token_embedder/embedding")
  heads, buckets = shape("decoder/relpos_bias/rel_embedding")
  layer = "layers" if scanned else "layers_0"
  inner = shape(f"decoder/{layer}/self_attention/query/kernel")[-1]
  gated = f"decoder/{layer}/mlp/wi_0/kernel" in src
  d_ff = shape(f"decoder/{layer}/mlp/{'wi_0' if gated else 'wi'}/kernel")[-1]
  fields = dict(
    vocab_size=vocab,
    d_model=d_model,
    num_heads=heads,
    head_dim=inner // heads,
    d_ff=d_ff,
    num_encoder_layers=count_layers("encoder") if encoder_decoder else 0,
    num_decoder_layers=count_layers("decoder"),
    mlp_activations=("gelu", "linear") if gated else ("relu",),
    logits_via_embedding="decoder/logits_dense/kernel" not in src,
    relative_attention_num_buckets=buckets,
    architecture="encoder_decoder" if encoder_decoder else "decoder_only",
  )
  fields.update(overrides)
  return T5Config(**fields)


def _is_orbax_dir(path: str) -> bool:
  return os.path.isdir(path) and any(
    os.path.exists(os.path.join(path, n))
    for n in ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "_sharding")
  )


def load_t5x_checkpoint(path: str) -> dict:
  """The nested dict (numpy leaves) of a T5X checkpoint directory (`.../checkpoint_N`).

  Orbax-written directories (OCDBT or per-array tensorstore, with `_METADATA`) are read with
  `orbax.checkpoint.PyTreeCheckpointer`; the older T5X format (a msgpack `checkpoint` file whose
  large leaves are tensorstore specs relative to the directory) is read with flax + tensorstore.
  Pass the result to `params_from_t5x` / `config_from_t5x`.
  """
  path = os.path.abspath(path)
  if os.path.isfile(path) and os.path.basename(path) == "checkpoint":
    return _load_t5x_msgpack(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no T5X checkpoint at {path}")
  if _is_orbax_dir(path):
    try:
      return _unfreeze(_orbax_restore_numpy(path))
    except Exception as e:
      raise ValueError(f"cannot read T5X (orbax) checkpoint {path}: {e}") from e
  msgpack_file = os.path.join(path, "checkpoint")
  if os.path.isfile(msgpack_file):
    return _load_t5x_msgpack(msgpack_file)
  raise FileNotFoundError(
    f"{path} is not a T5X checkpoint directory (no orbax metadata, no msgpack 'checkpoint' file)"
  )


def _orbax_restore_numpy(path: str):
  """Restores an orbax PyTree checkpoint as host numpy arrays, ignoring the saved shardings
  (a TPU-pod T5X checkpoint restores on one CPU host)."""
  import orbax.checkpoint as ocp

  ckptr = ocp.PyTreeCheckpointer()
  try:
    meta = ckptr.metadata(path)
    meta = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
    restore_args = _unflatten(
      {
        p: ocp.RestoreArgs(restore_type=np.ndarray)
        if type(m).__name__ == "ArrayMetadata"
        else ocp.RestoreArgs()
        for p, m in _flatten(meta).items()
      }
    )
  except Exception:  # metadata-less (old) orbax layouts: let orbax decide
    return ckptr.restore(path)
  return ckptr.restore(path, restore_args=restore_args)


def _is_ts_spec(x) -> bool:
  return isinstance(x, Mapping) and "driver" in x and ("kvstore" in x or "path" in x)


def _load_t5x_msgpack(file: str) -> dict:
  from flax import serialization

  try:
    with open(file, "rb") as f:
      contents = serialization.msgpack_restore(f.read())
  except Exception as e:
    raise ValueError(f"cannot read T5X msgpack checkpoint file {file}: {e}") from e
  ckpt_dir = os.path.dirname(file)

  def resolve(x, name):
    if _is_ts_spec(x):
      return _read_ts_leaf(dict(x), ckpt_dir, name)
    if isinstance(x, Mapping):
      return {k: resolve(v, f"{name}/{k}" if name else k) for k, v in x.items()}
    return x

  return resolve(contents, "")


def _read_ts_leaf(spec: dict, ckpt_dir: str, name: str) -> np.ndarray:
  import copy

  import tensorstore as ts

  spec = copy.deepcopy(spec)
  meta = spec.get("metadata", {})
  for k in ("chunks", "compressor"):  # as T5X does: open whatever chunking was written
    meta.pop(k, None)
  kv = spec.get("kvstore")
  if isinstance(kv, Mapping):
    spec["kvstore"] = {"driver": "file", "path": os.path.join(ckpt_dir, kv["path"])}
  else:  # tensorstore < 0.1.14 layout: the path sits at the top level
    spec["path"] = os.path.join(ckpt_dir, spec["path"])
  try:
    return np.asarray(ts.open(spec, open=True).result().read().result())
  except Exception as e:
    raise ValueError(f"cannot read tensor {name} of T5X checkpoint {ckpt_dir}: {e}") from e


# ----------------------------------------------------------------------------------------------
# Command line


def _config_from_file(path: str) -> T5Config:
  """A `T5Config` from an xt5 config.json or a model gin file (binding MODEL_CONFIG)."""
  if path.endswith(".json"):
    try:
      with open(path) as f:
        return T5Config.from_dict(json.load(f))
    except Exception as e:
      raise ValueError(f"cannot read xt5 config {path}: {e}") from e
  import gin  # only the command line touches gin

  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([path], [])
    cfg = gin.query_parameter("MODEL_CONFIG/gin.macro.value").scoped_configurable_fn()
  finally:
    gin.clear_config()
  if not isinstance(cfg, T5Config):
    raise ValueError(f"{path}: MODEL_CONFIG is a {type(cfg).__name__}, not a T5Config")
  return cfg


def _overrides(args) -> dict:
  out = {}
  if getattr(args, "scan_layers", False):
    out["scan_layers"] = True
  if getattr(args, "dtype", None):
    out["dtype"] = args.dtype
  return out


def from_hf(hf_dir: str, out_dir: str, **overrides) -> T5Config:
  """HF `save_pretrained` dir -> xt5 checkpoint dir (params/, config.json, model.gin)."""
  from models import checkpoint

  cfg, params = load_hf(hf_dir, **overrides)
  checkpoint.save_checkpoint(out_dir, cfg, params)
  return cfg


def to_hf(xt5_dir: str, hf_dir: str) -> T5Config:
  """xt5 checkpoint dir -> HF dir that `T5ForConditionalGeneration.from_pretrained` loads."""
  from models import checkpoint

  cfg, params = checkpoint.load_checkpoint(xt5_dir)
  save_hf(params, cfg, hf_dir)
  return cfg


def from_t5x(t5x_dir: str, out_dir: str, config: str | None = None, **overrides) -> T5Config:
  """T5X checkpoint dir -> xt5 checkpoint dir. `config`: config.json / gin, else inferred."""
  from models import checkpoint

  tree = load_t5x_checkpoint(t5x_dir)
  if config:
    cfg = _config_from_file(config)
    if overrides:
      cfg = cfg.replace(**overrides)
  else:
    cfg = config_from_t5x(tree, **overrides)
  params = params_from_t5x(tree, cfg)
  checkpoint.save_checkpoint(out_dir, cfg, params)
  return cfg


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m models.convert",
    description="Convert T5-family checkpoints between Hugging Face, T5X and xt5.",
  )
  sub = parser.add_subparsers(dest="command", required=True)

  def layout_flags(p):
    p.add_argument(
      "--scan_layers",
      action="store_true",
      help="write the scanned layout (one stacked `layers` subtree per stack)",
    )
    p.add_argument(
      "--dtype",
      choices=("float32", "bfloat16"),
      help="activation dtype recorded in the config (params stay float32)",
    )

  p = sub.add_parser("from-hf", help="HF save_pretrained dir -> xt5 checkpoint dir")
  p.add_argument("hf_dir")
  p.add_argument("out_dir")
  layout_flags(p)
  p = sub.add_parser("from-t5x", help="T5X checkpoint_N dir -> xt5 checkpoint dir")
  p.add_argument("t5x_dir")
  p.add_argument("out_dir")
  p.add_argument("--config", help="xt5 config.json or model gin; default: read off the shapes")
  layout_flags(p)
  p = sub.add_parser("to-hf", help="xt5 checkpoint dir -> HF dir (config.json, safetensors)")
  p.add_argument("xt5_dir")
  p.add_argument("hf_dir")
  args = parser.parse_args(argv)

  try:
    if args.command == "from-hf":
      cfg = from_hf(args.hf_dir, args.out_dir, **_overrides(args))
      dest = args.out_dir
    elif args.command == "from-t5x":
      cfg = from_t5x(args.t5x_dir, args.out_dir, args.config, **_overrides(args))
      dest = args.out_dir
    else:
      cfg = to_hf(args.xt5_dir, args.hf_dir)
      dest = args.hf_dir
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {dest}: {json.dumps(cfg.to_dict())}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
