"""T5X checkpoints to xt5 params (and xt5 params to T5X's tree, for tests and exports).

  load_t5x_checkpoint(path) -> nested dict   orbax/tensorstore T5X dirs, or the older msgpack
                                             `checkpoint` file (tensorstore leaves resolved)
  params_from_t5x(t5x_tree, cfg) -> params   T5X `target` tree (scanned or not) -> xt5 tree
  params_to_t5x(params, cfg, scanned=False,  the inverse (`scalable`: T5X's scalable T5 names)
                scalable=False)
  config_from_t5x(t5x_tree, **overrides)     a `T5Config` with the shapes read off a T5X tree

Both of T5X's layouts are read: its T5 (examples/t5: 2-D attention kernels, one relative
position bias per stack; scanned stacks named `layers`) and its scalable T5, which umT5 was
trained with (examples/scalable_t5: 3-D attention kernels, a `relpos_bias` in every layer, so
`relative_attention_per_layer`; scanned stacks named after the stack, `encoder/encoder/...`).

`config_from_t5x` reads vocab, d_model, heads, head_dim, d_ff, layer counts, gated or not, tied
or not and per-layer position biases or not off the tree; the rest are T5 defaults (GEGLU when
gated else ReLU, 32 buckets, max distance 128, eps 1e-6). `params_from_t5x` returns exactly the
tree of `tree.param_shapes(cfg)` (float32 numpy, `cfg`'s layer layout) or raises
`CheckpointMismatchError` naming every missing, unexpected or wrongly shaped tensor.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import numpy as np

from models.config import T5Config
from models.formats.tree import (
  CheckpointMismatchError,
  Leaf,
  Params,
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
  unfreeze,
  unstack_layers,
)

# ----------------------------------------------------------------------------------------------
# The mapping

_T5X_ATTENTION = ("attention", "self_attention", "encoder_decoder_attention")


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How a T5X tree lays out its layers.

  scan: None (unrolled, `layers_{i}`), 'layers' (one stacked `layers` subtree per stack) or
    'stack' (scalable T5's stacked subtree named after its stack: `encoder/encoder/...`);
  fused: attention kernels 2-D ([d_model, heads*head_dim]; out [heads*head_dim, d_model], T5X's
    examples/t5) or 3-D as in xt5 ([d_model, heads, head_dim]; scalable T5).
  """

  scan: str | None = None
  fused: bool = True

  def layer_name(self, stack: str, xt5_name: str) -> str:
    """The T5X name of xt5's `layers` / `layers_{i}` element of `stack`."""
    return stack if self.scan == "stack" and xt5_name == "layers" else xt5_name


def _t5x_leaf(path: tuple[str, ...], layout: _Layout = _Layout()) -> Leaf:
  """T5X name ('/'-joined) and transform of one xt5 param path (unrolled or scanned: the
  `layers_{i}` element is kept as is, `layers` renamed as `layout` says)."""
  if len(path) >= 2:
    path = (path[0], layout.layer_name(path[0], path[1])) + path[2:]
  if path == ("decoder", "logits_dense"):
    return Leaf("decoder/logits_dense/kernel", "id")
  if len(path) >= 2 and path[-2] in _T5X_ATTENTION:
    kind = ("out" if path[-1] == "out" else "qkv") if layout.fused else "id"
    return Leaf(path_str(path + ("kernel",)), kind)
  if len(path) >= 2 and path[-2] == "mlp":
    return Leaf(path_str(path + ("kernel",)), "id")
  return Leaf(path_str(path), "id")


def _strip_t5x_wrappers(tree: Mapping) -> Mapping:
  """The `target` params tree of a whole T5X checkpoint (or the tree itself)."""
  if "optimizer" in tree and isinstance(tree["optimizer"], Mapping):  # msgpack version >= 2
    tree = tree["optimizer"]
  if "target" in tree and isinstance(tree["target"], Mapping):
    tree = tree["target"]
  return tree


def _t5x_layout(src: Mapping[str, np.ndarray]) -> _Layout:
  """The `_Layout` of a flat {T5X name: array} tree, read off its names and kernel ranks."""
  if any(re.match(r"^(encoder|decoder)/\1/", n) for n in src):
    scan = "stack"
  elif any("/layers/" in n for n in src):
    scan = "layers"
  else:
    scan = None
  query = [v for n, v in src.items() if n.endswith("/query/kernel")]
  fused = not query or np.ndim(query[0]) == (3 if scan else 2)
  return _Layout(scan, fused)


def _check_no_gate(cfg: T5Config):
  if cfg.delete_gate_layer is not None:
    raise ValueError(
      "T5X has no MrT5 delete gate: read a T5X ByT5 with the gateless config and add the gate "
      "(mrt5.add_delete_gate); write a gated model with to-hf (the MrT5 authors' layout) or as "
      "an xt5 checkpoint"
    )


def params_from_t5x(t5x_tree: Mapping, cfg: T5Config) -> Params:
  """xt5 params (float32 numpy, `cfg`'s layout) from a T5X params tree.

  Accepts the whole restored checkpoint (`{'target': ..., 'state': ...}`, or msgpack's
  `{'optimizer': {'target': ...}}`) or just the target tree, scanned (one stacked subtree per
  stack, `layers` or, as T5X's scalable T5 / umT5 name it, `encoder/encoder` and
  `decoder/decoder`; layer axis at position 1 of every leaf) or unrolled (`layers_{i}`).
  Attention kernels are 2-D in T5X's T5 ([d_model, heads*head_dim], out [heads*head_dim,
  d_model]) and 3-D in scalable T5 (as in xt5); dense kernels sit under `.../kernel`. A
  `relative_attention_per_layer` config (umT5, scalable T5) reads each layer's
  `.../relpos_bias/rel_embedding`. Raises `CheckpointMismatchError` naming every mismatch.
  """
  _check_no_gate(cfg)
  src = {path_str(p): v for p, v in flatten(_strip_t5x_wrappers(t5x_tree)).items()}
  layout = _t5x_layout(src)
  expected = flatten(param_shapes(cfg.replace(scan_layers=layout.scan is not None)))
  missing, bad, out, used = [], [], {}, set()
  for path, sds in sorted(expected.items()):
    shape = tuple(sds.shape)
    leaf = _t5x_leaf(path, layout)
    in_layers = "layers" in path
    if in_layers:  # T5X stacks at axis 1; xt5 at axis 0
      want = foreign_shape(leaf.kind, shape[1:])
      want = want[:1] + (shape[0],) + want[1:]
    else:
      want = foreign_shape(leaf.kind, shape)
    if leaf.name not in src:
      missing.append((leaf.name, want))
      continue
    used.add(leaf.name)
    got = tuple(np.shape(src[leaf.name]))
    if got != want:
      bad.append((leaf.name, want, got))
      continue
    x = f32(src[leaf.name])
    if in_layers:
      x = np.moveaxis(x, 1, 0)
    out[path] = to_xt5(leaf.kind, x, shape)
  unexpected = [(k, tuple(np.shape(v))) for k, v in sorted(src.items()) if k not in used]
  if missing or bad or unexpected:
    raise CheckpointMismatchError(mismatch_message("T5X checkpoint", missing, unexpected, bad))
  tree = unflatten(out)
  if (layout.scan is not None) != cfg.scan_layers:
    tree = stack_layers(tree) if cfg.scan_layers else unstack_layers(tree)
  return tree


def params_to_t5x(
  params: Params, cfg: T5Config, scanned: bool = False, scalable: bool = False
) -> Params:
  """T5X target tree (float32 numpy) of xt5 params; `scanned` puts layers on axis 1.

  `scalable`: T5X's scalable T5 layout (3-D attention kernels; scanned, `encoder/encoder/...`)
  instead of T5X's T5 (2-D kernels; scanned, `encoder/layers/...`).
  """
  _check_no_gate(cfg)
  check_params(params, cfg, "xt5 params")
  params = host(params)
  params = stack_layers(params) if scanned else unstack_layers(params)
  layout = _Layout(("stack" if scalable else "layers") if scanned else None, fused=not scalable)
  out = {}
  for path, x in flatten(params).items():
    leaf = _t5x_leaf(path, layout)
    y = from_xt5(leaf.kind, f32(x))
    if "layers" in path:
      y = np.moveaxis(y, 0, 1)
    out[tuple(leaf.name.split("/"))] = np.ascontiguousarray(y)
  return unflatten(out)


def config_from_t5x(t5x_tree: Mapping, **overrides) -> T5Config:
  """A `T5Config` with the shapes of a T5X params tree; the rest T5 defaults (see module doc).

  `overrides` win over what is read off the tree (e.g. `mlp_activations`, `scan_layers`).
  """
  src = {path_str(p): v for p, v in flatten(_strip_t5x_wrappers(t5x_tree)).items()}
  layout = _t5x_layout(src)

  def shape(name):
    if name not in src:
      raise CheckpointMismatchError(f"T5X checkpoint has no {name}; cannot infer the config")
    return tuple(np.shape(src[name]))

  def layer(stack):  # the T5X name of the stack's (first) layer
    return layout.layer_name(stack, "layers" if layout.scan else "layers_0")

  def count_layers(stack):
    if layout.scan:
      for n in src:
        if n.startswith(f"{stack}/{layer(stack)}/"):
          return shape(n)[1]
      return 0
    return len({n.split("/")[1] for n in src if re.match(rf"^{stack}/layers_\d+/", n)})

  encoder_decoder = any(n.startswith("encoder/") for n in src)
  vocab, d_model = shape("token_embedder/embedding")
  dec = f"decoder/{layer('decoder')}"
  per_layer = "decoder/relpos_bias/rel_embedding" not in src and (
    f"{dec}/relpos_bias/rel_embedding" in src
  )
  relpos = shape(
    f"{dec}/relpos_bias/rel_embedding" if per_layer else "decoder/relpos_bias/rel_embedding"
  )
  heads, buckets = relpos[0], relpos[-1]  # [heads, (layers,) buckets]
  query = shape(f"{dec}/self_attention/query/kernel")
  gated = f"{dec}/mlp/wi_0/kernel" in src
  d_ff = shape(f"{dec}/mlp/{'wi_0' if gated else 'wi'}/kernel")[-1]
  fields = dict(
    vocab_size=vocab,
    d_model=d_model,
    num_heads=heads,
    head_dim=query[-1] // heads if layout.fused else query[-1],
    d_ff=d_ff,
    num_encoder_layers=count_layers("encoder") if encoder_decoder else 0,
    num_decoder_layers=count_layers("decoder"),
    mlp_activations=("gelu", "linear") if gated else ("relu",),
    logits_via_embedding="decoder/logits_dense/kernel" not in src,
    relative_attention_num_buckets=buckets,
    relative_attention_per_layer=per_layer,
    architecture="encoder_decoder" if encoder_decoder else "decoder_only",
  )
  fields.update(overrides)
  return T5Config(**fields)


# ----------------------------------------------------------------------------------------------
# Files


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
      return unfreeze(_orbax_restore_numpy(path))
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
    restore_args = unflatten(
      {
        p: ocp.RestoreArgs(restore_type=np.ndarray)
        if type(m).__name__ == "ArrayMetadata"
        else ocp.RestoreArgs()
        for p, m in flatten(meta).items()
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
