"""Hugging Face T5 checkpoints (`T5ForConditionalGeneration`: T5 / mT5 / ByT5;
`UMT5ForConditionalGeneration`: umT5; the MrT5 authors' `MrT5ForConditionalGeneration`) to and
from xt5.

Library API (pure functions, no files):
  config_from_hf(hf_config, **overrides) -> T5Config   from an HF config object or config.json
  hf_config_dict(cfg) -> dict                           HF config.json (T5 or UMT5)
  params_from_hf_state_dict(state_dict, cfg) -> params  HF names (numpy or torch) -> xt5 tree
  params_to_hf_state_dict(params, cfg) -> {name: arr}   xt5 tree -> HF names

Files:
  load_hf(hf_dir, **overrides) -> (cfg, params)  an HF `save_pretrained` dir
  load_hf_state_dict(hf_dir) -> {name: array}    model.safetensors or pytorch_model.bin, sharded
                                                 (`*.index.json`) or not; bf16/fp16 read too
  load_hf_config(hf_dir) -> dict                 its config.json
  save_hf(params, cfg, hf_dir)                   config.json, generation_config.json and
                                                 model.safetensors for `from_pretrained`
  is_hf_dir(path)                                a directory holding config.json

Every reader returns exactly the tree of `tree.param_shapes(cfg)` (float32 numpy, `cfg`'s layer
layout) or raises `CheckpointMismatchError` naming every missing, unexpected or wrongly shaped
tensor.

HF conventions handled here: torch Linear weights are [out, in] (q/k/v [heads*head_dim, d_model],
o [d_model, heads*head_dim]); relative_attention_bias lives in block 0 of each stack as
[buckets, heads] (T5), or in every block's self-attention (UMT5, model_type 'umt5': xt5's
`relative_attention_per_layer`); a tied model (T5.1.0) scales decoder output by d_model**-0.5
before the tied lm_head, which our network does when `logits_via_embedding`. transformers 5.x
forces `tie_word_embeddings=True` in every T5Config and records T5.1.0-ness as
`scale_decoder_outputs`; an untied model then keeps its own `lm_head.weight` in the checkpoint.

umT5 is untied (its own lm_head, no rescale: T5X's `logits_dense`, what config.json's
`tie_word_embeddings: false` means). transformers 5.x's UMT5Config forces
`tie_word_embeddings=True` and has no `scale_decoder_outputs`, so its UMT5ForConditionalGeneration
rescales the decoder output of every model, an untied one loaded with `from_pretrained`
included: its logits are then d_model**-0.5 times the checkpoint's (set `model.config.
tie_word_embeddings = False` after loading for the real model). Files and state dicts are the
same either way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from models.config import T5Config
from models.formats.tree import (
  LAYER_RE,
  CheckpointMismatchError,
  Leaf,
  Params,
  as_numpy,
  check_params,
  f32,
  flatten,
  foreign_shape,
  from_xt5,
  host,
  mismatch_message,
  param_shapes,
  path_str,
  stack_layers,
  to_xt5,
  unflatten,
  unstack_layers,
)

HF_WEIGHTS_SAFETENSORS = "model.safetensors"
HF_WEIGHTS_BIN = "pytorch_model.bin"
HF_CONFIG_JSON = "config.json"


def is_hf_dir(path: str) -> bool:
  """Whether `path` looks like an HF `save_pretrained` directory (holds config.json)."""
  return os.path.isfile(os.path.join(path, HF_CONFIG_JSON))


def _to_layout(flat_unrolled: Mapping[tuple[str, ...], np.ndarray], cfg: T5Config) -> Params:
  tree = unflatten(flat_unrolled)
  return stack_layers(tree, cfg.delete_gate_layer) if cfg.scan_layers else tree


# ----------------------------------------------------------------------------------------------
# Configs

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


_HF_MODEL_TYPES = ("t5", "mt5", "byt5", "umt5", "mrt5")


def _hf_is_umt5(hf: Mapping[str, Any]) -> bool:
  """Per-layer position biases: model_type 'umt5', or (early umT5 uploads, which lack it or say
  'mt5') a UMT5 architecture or `scalable_attention`."""
  archs = hf.get("architectures") or ()
  return (
    hf.get("model_type") == "umt5"
    or bool(hf.get("scalable_attention"))
    or any(str(a).startswith("UMT5") for a in archs)
  )


def config_from_hf(hf_config, **overrides) -> T5Config:
  """xt5 `T5Config` of an HF T5/mT5/ByT5/umT5 config (a `transformers` config or config.json
  dict). umT5 (model_type 'umt5', see `_hf_is_umt5`) sets `relative_attention_per_layer`.

  `overrides` set xt5-only fields (`scan_layers`, `dtype`, `remat_policy`, ...).
  """
  hf = _hf_config_as_dict(hf_config)
  model_type = hf.get("model_type", "t5")
  if model_type not in _HF_MODEL_TYPES:
    raise ValueError(
      f"model_type={model_type!r} is not supported (expected one of {_HF_MODEL_TYPES}; "
      "longt5 differs in architecture)"
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
    relative_attention_per_layer=_hf_is_umt5(hf),
    **_mrt5_fields_from_hf(hf, model_type),
  )
  fields.update(overrides)
  return T5Config(**fields)


def hf_config_dict(cfg: T5Config) -> dict:
  """config.json of the `T5ForConditionalGeneration` (or, with `relative_attention_per_layer`,
  the `UMT5ForConditionalGeneration`) that holds `cfg`'s params."""
  if cfg.architecture != "encoder_decoder":
    raise ValueError(
      f"architecture={cfg.architecture!r}: only encoder_decoder models have an HF T5 equivalent"
    )
  acts = tuple(cfg.mlp_activations)
  if acts not in _XT5_TO_HF_ACTIVATION:
    raise ValueError(f"mlp_activations={acts} has no HF feed_forward_proj equivalent")
  tied = bool(cfg.logits_via_embedding)
  umt5 = cfg.relative_attention_per_layer
  if umt5 and cfg.delete_gate_layer is not None:
    raise ValueError(
      "a gated umT5 (delete_gate_layer with relative_attention_per_layer) has no HF layout: "
      "the MrT5 authors' model is T5's; keep it as an xt5 checkpoint"
    )
  out = {
    "architectures": ["UMT5ForConditionalGeneration" if umt5 else "T5ForConditionalGeneration"],
    "model_type": "umt5" if umt5 else "t5",
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
    **_mrt5_hf_fields(cfg),
  }
  if umt5:  # UMT5Config has no such field (transformers 5 rescales whenever tied, see above)
    del out["scale_decoder_outputs"]
  return out


# MrT5 (the authors' `MrT5Config`, model_type 'mrt5'): its constructor's defaults, for fields a
# config.json may leave out. The authors' T5 baseline is a model_type 't5' with `use_softmax1`.
_MRT5_HF_DEFAULTS = dict(
  sigmoid_mask_scale=-10.0,
  gate_layer_norm=True,
  deletion_threshold=None,
  delete_gate_layer=2,
  use_softmax1=False,
)


def _mrt5_fields_from_hf(hf: Mapping[str, Any], model_type: str) -> dict:
  out = {"use_softmax1": bool(hf.get("use_softmax1") or False)}
  if model_type != "mrt5":
    return out
  deletion_type = hf.get("deletion_type")
  if deletion_type not in (None, "scaled_sigmoid"):
    raise ValueError(
      f"MrT5 deletion_type={deletion_type!r} is not supported (only the learned "
      "'scaled_sigmoid' gate)"
    )
  d = {k: hf.get(k, v) for k, v in _MRT5_HF_DEFAULTS.items()}
  d["sigmoid_mask_scale"] = float(d["sigmoid_mask_scale"])
  d["use_softmax1"] = bool(d["use_softmax1"])
  d["gate_layer_norm"] = bool(d["gate_layer_norm"])
  if d["deletion_threshold"] is not None:
    d["deletion_threshold"] = float(d["deletion_threshold"])
  return d


def _mrt5_hf_fields(cfg: T5Config) -> dict:
  if cfg.delete_gate_layer is None:
    return {"use_softmax1": True} if cfg.use_softmax1 else {}
  return {
    "architectures": ["MrT5ForConditionalGeneration"],
    "model_type": "mrt5",
    "deletion_type": "scaled_sigmoid",
    "delete_gate_layer": cfg.delete_gate_layer,
    "sigmoid_mask_scale": cfg.sigmoid_mask_scale,
    # written out: the authors' hard deletion compares against it
    "deletion_threshold": cfg.gate_threshold,
    "gate_layer_norm": cfg.gate_layer_norm,
    "use_softmax1": cfg.use_softmax1,
    "use_gumbel_noise": False,
  }


# ----------------------------------------------------------------------------------------------
# State dicts


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


def _hf_leaf(path: tuple[str, ...], cfg: T5Config | None = None) -> Leaf:
  """HF name and transform of one unrolled xt5 param path."""
  if path[:2] == ("encoder", "delete_gate"):  # MrT5: the gate lives in its layer's HF block
    prefix = f"encoder.block.{cfg.delete_gate_layer}.delete_gate"
    return {
      ("layer_norm", "scale"): Leaf(f"{prefix}.layer_norm.weight", "id"),
      ("feed_forward", "kernel"): Leaf(f"{prefix}.feed_forward.weight", "T"),
      ("feed_forward", "bias"): Leaf(f"{prefix}.feed_forward.bias", "id"),
    }[path[2:]]
  if path == ("token_embedder", "embedding"):
    return Leaf("shared.weight", "id")
  if path == ("decoder", "logits_dense"):
    return Leaf("lm_head.weight", "T")
  stack = path[0]
  if path[1:] == ("relpos_bias", "rel_embedding"):
    return Leaf(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "T")
  if path[1:] in (("encoder_norm", "scale"), ("decoder_norm", "scale")):
    return Leaf(f"{stack}.final_layer_norm.weight", "id")
  m = LAYER_RE.match(path[1])
  if m and path[2:] == ("relpos_bias", "rel_embedding"):  # UMT5: one per layer
    return Leaf(
      f"{stack}.block.{m.group(1)}.layer.0.SelfAttention.relative_attention_bias.weight", "T"
    )
  subs = _HF_ENC_SUB if stack == "encoder" else _HF_DEC_SUB
  if m and path[2] in subs:
    prefix = f"{stack}.block.{m.group(1)}.{subs[path[2]]}"
    if path[3:] == ("scale",):
      return Leaf(prefix + ".weight", "id")
    if path[2] == "mlp":
      return Leaf(f"{prefix}.{path[3]}.weight", "T")
    name, kind = _HF_ATTN_LEAF[path[3]]
    return Leaf(f"{prefix}.{name}.weight", kind)
  raise AssertionError(f"no HF name for xt5 param {path_str(path)}")


def _hf_specs(cfg: T5Config):
  """[(xt5 unrolled path, xt5 shape, Leaf)] for every param of `cfg`."""
  if cfg.architecture != "encoder_decoder":
    raise ValueError(f"architecture={cfg.architecture!r}: HF T5 checkpoints are encoder-decoder")
  flat = flatten(param_shapes(cfg.replace(scan_layers=False)))
  return [(p, tuple(s.shape), _hf_leaf(p, cfg)) for p, s in sorted(flat.items())]


# Names HF checkpoints may carry that are aliases of `shared.weight` (tied in the HF model).
_HF_EMBED_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Unused tensors that HF itself skips on load (`_keys_to_ignore_on_load_unexpected`): the
# original t5-small/base/... checkpoints carry a cross-attention bias nothing reads.
_HF_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def params_from_hf_state_dict(
  state_dict: Mapping[str, Any], cfg: T5Config, *, lm_head_from_shared: bool = False
) -> Params:
  """xt5 params (float32 numpy, `cfg`'s layout) from an HF `T5ForConditionalGeneration` (or,
  with `relative_attention_per_layer`, `UMT5ForConditionalGeneration`) state dict of numpy
  arrays or torch tensors.

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
      and not np.array_equal(as_numpy(head), as_numpy(shared))
    ):
      raise CheckpointMismatchError(
        "the config ties the output layer to the embedding (T5.1.0, logits_via_embedding), "
        "but the checkpoint's lm_head.weight differs from shared.weight; convert it as an "
        "untied model (tie_word_embeddings=false) instead"
      )
    used.add("lm_head.weight")

  missing, bad, out = [], [], {}
  for path, shape, leaf in _hf_specs(cfg):
    want = foreign_shape(leaf.kind, shape)
    if leaf.name not in sd:
      missing.append((leaf.name, want))
      continue
    used.add(leaf.name)
    got = tuple(sd[leaf.name].shape)
    if got != want:
      bad.append((leaf.name, want, got))
      continue
    out[path] = to_xt5(leaf.kind, f32(sd[leaf.name]), shape)
  unexpected = [(k, tuple(v.shape)) for k, v in sorted(sd.items()) if k not in used]
  if missing or bad or unexpected:
    raise CheckpointMismatchError(mismatch_message("HF state dict", missing, unexpected, bad))
  return _to_layout(out, cfg)


def params_to_hf_state_dict(params: Params, cfg: T5Config) -> dict[str, np.ndarray]:
  """HF `T5ForConditionalGeneration` / `UMT5ForConditionalGeneration` state dict (float32 numpy,
  contiguous) of xt5 params.

  Holds `shared.weight` once (HF ties the embed_tokens aliases) and `lm_head.weight` only for
  untied models.
  """
  check_params(params, cfg, "xt5 params")
  flat = flatten(unstack_layers(host(params)))
  specs = _hf_specs(cfg)
  return {
    leaf.name: np.ascontiguousarray(from_xt5(leaf.kind, f32(flat[p]))) for p, _, leaf in specs
  }


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
  path = os.path.join(hf_dir, HF_CONFIG_JSON)
  try:
    with open(path) as f:
      return json.load(f)
  except Exception as e:
    raise ValueError(f"cannot read HF config {path}: {e}") from e


def load_hf(hf_dir: str, **overrides) -> tuple[T5Config, Params]:
  """(xt5 config, params) of an HF T5 or UMT5 `save_pretrained` directory."""
  hf_cfg = load_hf_config(hf_dir)
  cfg = config_from_hf(hf_cfg, **overrides)
  # transformers 5 saves a T5.1.1 model built from a config with lm_head tied to `shared` (and
  # unscaled), so no lm_head.weight in the file; HF then computes logits with `shared`.
  lm_head_from_shared = bool(hf_cfg.get("tie_word_embeddings", True)) and not _hf_tied(hf_cfg)
  sd = load_hf_state_dict(hf_dir)
  return cfg, params_from_hf_state_dict(sd, cfg, lm_head_from_shared=lm_head_from_shared)


def save_hf(params: Params, cfg: T5Config, hf_dir: str):
  """Writes config.json, generation_config.json and model.safetensors for
  `T5ForConditionalGeneration.from_pretrained(hf_dir)` (`UMT5ForConditionalGeneration` with
  `relative_attention_per_layer`)."""
  from safetensors.numpy import save_file

  sd = params_to_hf_state_dict(params, cfg)
  os.makedirs(hf_dir, exist_ok=True)
  save_file(sd, os.path.join(hf_dir, HF_WEIGHTS_SAFETENSORS), metadata={"format": "pt"})
  with open(os.path.join(hf_dir, HF_CONFIG_JSON), "w") as f:
    json.dump(hf_config_dict(cfg), f, indent=2, sort_keys=True)
  with open(os.path.join(hf_dir, "generation_config.json"), "w") as f:
    json.dump({"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}, f, indent=2)
