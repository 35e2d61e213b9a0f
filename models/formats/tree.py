"""The params tree every format reads into and writes from, and the tools all formats share.

xt5 params are the plain (unboxed) pytree that `network.Transformer(cfg).init(...)['params']`
holds: nested dicts of float32 arrays, with `layers_{i}` subtrees, or one `layers` subtree whose
leaves carry a leading layer axis when `cfg.scan_layers` (an MrT5 encoder: `layers` before the
delete gate, `layers_after_gate` from it on). `param_shapes(cfg)` is that tree as
`jax.ShapeDtypeStruct`s (the target of every reader), `abstract_target(cfg, shardings)` the same
with float32 and shardings attached (what orbax restores onto), and `check_params` /
`check_tree` raise `CheckpointMismatchError` naming every missing, unexpected or wrongly shaped
tensor.

Also here: flat {path tuple: leaf} views (`flatten` / `unflatten`), the scanned <-> unrolled
layer layouts (`stack_layers` / `unstack_layers` / `is_scanned`), and the leaf transforms
between xt5's layout and a foreign checkpoint's (`Leaf`, `foreign_shape`, `to_xt5`, `from_xt5`)
that the Hugging Face and T5X mappings are written in.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from models.config import T5Config

Params = dict  # nested dict of arrays

LAYER_RE = re.compile(r"^layers_(\d+)$")
# scanned stacks, in layer order: MrT5's encoder continues `layers` in `layers_after_gate`
SCANNED_STACKS = ("layers", "layers_after_gate")


class CheckpointMismatchError(ValueError):
  """A checkpoint's tensors do not match the config: lists every offending tensor."""


# ----------------------------------------------------------------------------------------------
# The target tree


@functools.lru_cache(maxsize=32)
def _param_shapes_cached(cfg: T5Config):
  import jax
  import jax.numpy as jnp

  from models import partitioning
  from models.network import Transformer

  tokens = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  batch = {"encoder_input_tokens": tokens, "decoder_input_tokens": tokens}
  return partitioning.unbox(partitioning.abstract_params(Transformer(cfg), batch))


def param_shapes(cfg: T5Config) -> Params:
  """The params tree `Transformer(cfg)` initialises, as `jax.ShapeDtypeStruct` leaves: the
  unboxed `partitioning.abstract_params` of the model, cached per config."""
  return unfreeze(_param_shapes_cached(cfg))


def sharding_tree(shardings: Any, cfg: T5Config) -> Any:
  """A tree of shardings matching `cfg`'s params from None (the first device), one
  `jax.sharding.Sharding` (every leaf) or such a tree (returned as is)."""
  import jax

  if shardings is None:
    shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree_util.tree_map(lambda _: shardings, param_shapes(cfg))
  return shardings


def abstract_target(cfg: T5Config, shardings: Any = None) -> Params:
  """`param_shapes(cfg)` as float32 `jax.ShapeDtypeStruct`s carrying `shardings` (see
  `sharding_tree`): the target orbax restores a params tree onto."""
  import jax

  return jax.tree_util.tree_map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, np.float32, sharding=sh),
    param_shapes(cfg),
    sharding_tree(shardings, cfg),
  )


# ----------------------------------------------------------------------------------------------
# Nested <-> flat, and the layer layouts


def unfreeze(tree):
  """Plain nested dicts of any mapping tree (flax's FrozenDict, orbax's restored trees)."""
  if isinstance(tree, Mapping):
    return {k: unfreeze(v) for k, v in tree.items()}
  return tree


def flatten(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  """{path tuple: leaf} of a nested mapping."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> Params:
  """The nested dict of a {path tuple: leaf} mapping."""
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def path_str(path) -> str:
  return "/".join(path)


def unstack_layers(params: Params) -> Params:
  """Scanned layout (`layers`, then `layers_after_gate`, with a leading layer axis) -> unrolled
  (`layers_{i}`, numbered on across the two). Views."""
  out, first = {}, 0
  for name in SCANNED_STACKS:
    if isinstance(params.get(name), Mapping):
      flat = flatten(params[name])
      n = {np.shape(x)[0] for x in flat.values()}
      if len(n) != 1:
        raise CheckpointMismatchError(f"scanned {name!r} leaves disagree on the layer count: {n}")
      n = n.pop()
      for i in range(n):
        out[f"layers_{first + i}"] = unflatten({p: x[i] for p, x in flat.items()})
      first += n
  for k, v in params.items():
    if k in SCANNED_STACKS and isinstance(v, Mapping):
      continue
    out[k] = unstack_layers(v) if isinstance(v, Mapping) else v
  return out


def stack_layers(params: Params, gate_layer: int | None = None) -> Params:
  """Unrolled layout (`layers_{i}`) -> scanned (`layers`, leading layer axis), as numpy. With
  `gate_layer` (MrT5's `delete_gate_layer`), the stack holding `delete_gate` is split there:
  layers before it in `layers`, the rest in `layers_after_gate`."""
  out = {}
  layer_ids = sorted(int(m.group(1)) for k in params if (m := LAYER_RE.match(k)))
  if layer_ids:
    if layer_ids != list(range(len(layer_ids))):
      raise CheckpointMismatchError(f"layers are not numbered 0..n-1: {layer_ids}")
    split = gate_layer if gate_layer is not None and "delete_gate" in params else len(layer_ids)
    for name, ids in zip(SCANNED_STACKS, (layer_ids[:split], layer_ids[split:])):
      if ids:
        flats = [flatten(params[f"layers_{i}"]) for i in ids]
        out[name] = unflatten({p: np.stack([np.asarray(f[p]) for f in flats]) for p in flats[0]})
  for k, v in params.items():
    if LAYER_RE.match(k):
      continue
    out[k] = stack_layers(v, gate_layer) if isinstance(v, Mapping) else v
  return out


def is_scanned(params: Params) -> bool:
  """Whether a params tree has the scanned (`layers`) layout."""
  return any(
    isinstance(sub, Mapping) and any(name in sub for name in SCANNED_STACKS)
    for sub in params.values()
  )


# ----------------------------------------------------------------------------------------------
# Leaf transforms: foreign layout <-> xt5 layout. Every one works on trailing axes so it also
# applies to a stack of layers.


@dataclasses.dataclass(frozen=True)
class Leaf:
  """How one xt5 leaf is stored in a foreign checkpoint."""

  name: str  # the foreign tensor name
  kind: str  # 'id', 'T' (swap last two axes), 'qkv' (in, H*K), 'out' (H*K, out), 'hf_qkv', 'hf_out'


def foreign_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
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


def to_xt5(kind: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """A foreign leaf in xt5's layout (`shape`)."""
  if kind == "id":
    return x
  if kind == "T" or kind == "hf_qkv" or kind == "hf_out":
    x = np.swapaxes(x, -1, -2)
  return x.reshape(shape)


def from_xt5(kind: str, x: np.ndarray) -> np.ndarray:
  """An xt5 leaf in the foreign layout."""
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


def as_numpy(x) -> np.ndarray:
  """numpy view/copy of a numpy, jax or torch array (torch bf16 goes through float32)."""
  if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
    x = x.detach().cpu()
    if str(x.dtype) in ("torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e5m2"):
      x = x.float()
    return x.numpy()
  return np.asarray(x)


def f32(x) -> np.ndarray:
  return np.asarray(as_numpy(x), dtype=np.float32)


def host(params):
  """`params` with numpy leaves."""
  import jax

  return jax.tree_util.tree_map(as_numpy, params)


# ----------------------------------------------------------------------------------------------
# Shape checks


def mismatch_message(what: str, missing, unexpected, bad_shapes, limit: int = 40) -> str:
  """`missing` [(name, shape)], `unexpected` [(name, shape)], `bad_shapes` [(name, expected,
  found)] as one message, at most `limit` lines a section."""
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


def _shape(x) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def check_tree(
  shapes: Mapping[tuple[str, ...], tuple], want: Mapping[tuple[str, ...], tuple], what: str
):
  """`shapes`/`want`: flat {path: shape}. Raises naming every difference."""
  missing = [(path_str(p), s) for p, s in sorted(want.items()) if p not in shapes]
  unexpected = [(path_str(p), s) for p, s in sorted(shapes.items()) if p not in want]
  bad = [
    (path_str(p), tuple(want[p]), tuple(s))
    for p, s in sorted(shapes.items())
    if p in want and tuple(s) != tuple(want[p])
  ]
  if missing or unexpected or bad:
    raise CheckpointMismatchError(mismatch_message(what, missing, unexpected, bad))


def flat_shapes(cfg: T5Config) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{path: shape} of `param_shapes(cfg)`: the `want` of `check_tree`."""
  return {p: tuple(s.shape) for p, s in flatten(param_shapes(cfg)).items()}


def check_params(params: Params, cfg: T5Config, what: str = "params"):
  """Raises `CheckpointMismatchError` unless `params` (arrays or anything with `.shape`) has
  exactly `cfg`'s tree and shapes."""
  check_tree({p: _shape(v) for p, v in flatten(params).items()}, flat_shapes(cfg), what)
