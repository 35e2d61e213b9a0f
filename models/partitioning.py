"""Every sharding decision of the project: the mesh, the logical-axis rules, and the shardings of
params, optimizer state and batches derived from them.

Mesh axes are ('data', 'model'), with 'replica' in front when it is > 1 (multi-slice / HSDP):
'replica' and 'data' both split the batch; FSDP shards params over 'data' only, so each replica
holds a full FSDP copy. Rule sets are data (`RULES`), written against all three axes; mesh axes a
mesh lacks are dropped when rules are resolved against it.

Logical names come from the network: params use 'vocab', 'embed', 'heads', 'kv', 'mlp',
'relpos_buckets', 'layers'; activations use 'batch', 'length', 'embed', 'heads', 'kv', 'mlp',
'vocab'. Rules are resolved with flax's semantics (`nn.logical_to_mesh_axes`): rules apply in
order, each array dim takes the first rule naming it, and a rule is skipped when its mesh axis is
already used by that array. That is why 'batch' comes first in every table: an activation
('batch', 'length', 'embed') gives 'data' to 'batch', and FSDP's ('embed', 'data') then finds
'data' taken and leaves 'embed' replicated. (With 'embed' first, 'embed' would take 'data' and
the batch would be replicated.) Params have no 'batch', so there 'embed' gets 'data'.

Params additionally resolve shape-aware: a rule whose mesh axes do not divide the dim is
skipped, so the next rule for that dim or a later alternative rule (e.g. FSDP's 'vocab'/'mlp'
→ 'data') applies instead. Activation constraints stay name-only (flax's), which GSPMD pads.

Activation constraints (`nn.with_logical_constraint`) take effect only when, at trace time, flax
sees rules (`nn.logical_axis_rules`) and jax has a mesh in context (`jax.set_mesh`; `with mesh:`
is deprecated and invisible to flax). `Placement.jit` bakes both into one jitted function;
flax's rules are not part of jax's jit cache key, so never call one plain `jax.jit` function
under two rule sets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MeshAxes = None | str | tuple[str, ...]
Rules = tuple[tuple[str, MeshAxes], ...]

BATCH = ("replica", "data")  # the batch splits over every data-parallel axis
_NOT_SHARDED = (("layers", None), ("length", None), ("relpos_buckets", None), ("kv", None))

# Order matters (see the module docstring): batch first, then a dim's preferred mesh axis, then
# alternatives used when a param lacks the preferred dim or its size does not divide the axis.
RULES: dict[str, Rules] = {
  "data_parallel": (
    ("batch", BATCH),
    ("vocab", None),
    ("embed", None),
    ("heads", None),
    ("mlp", None),
  )
  + _NOT_SHARDED,
  "fsdp": (
    ("batch", BATCH),
    ("embed", "data"),
    ("vocab", "data"),
    ("mlp", "data"),
    ("heads", "data"),
  )
  + _NOT_SHARDED,
  "tensor": (
    ("batch", BATCH),
    ("heads", "model"),
    ("mlp", "model"),
    ("vocab", "model"),
    ("embed", None),
  )
  + _NOT_SHARDED,
  "2d": (
    ("batch", BATCH),
    ("heads", "model"),
    ("mlp", "model"),
    ("vocab", "model"),
    ("embed", "data"),
    ("vocab", "data"),
    ("mlp", "data"),
    ("heads", "data"),
  )
  + _NOT_SHARDED,
}

# ----------------------------------------------------------------------------------------------
# Mesh


def make_mesh(
  shape: Mapping[str, int] | Sequence[int] | None = None,
  *,
  data: int = -1,
  model: int = 1,
  replica: int = 1,
  devices: Sequence[Any] | None = None,
) -> Mesh:
  """A mesh ('data', 'model'), or ('replica', 'data', 'model') when replica > 1, of Auto axes.

  `shape` may be a dict of those names or a tuple (data, model) / (replica, data, model);
  otherwise the keywords are used. One size may be -1: "all remaining devices".
  """
  if shape is not None:
    if isinstance(shape, Mapping):
      unknown = set(shape) - {"replica", "data", "model"}
      if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected replica/data/model")
      replica, data, model = shape.get("replica", 1), shape.get("data", -1), shape.get("model", 1)
    else:
      shape = tuple(shape)
      if len(shape) not in (2, 3):
        raise ValueError(f"mesh shape {shape}: expected (data, model) or (replica, data, model)")
      replica, data, model = (1,) + shape if len(shape) == 2 else shape
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  sizes = {"replica": int(replica), "data": int(data), "model": int(model)}
  free = [k for k, v in sizes.items() if v == -1]
  bad = [k for k, v in sizes.items() if v == 0 or v < -1]
  if len(free) > 1 or bad:
    raise ValueError(f"mesh shape {sizes}: sizes must be positive, with at most one -1")
  known = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if n % known:
      raise ValueError(
        f"mesh shape {sizes} does not divide the {n} devices ({n} is not a multiple of {known})"
      )
    sizes[free[0]] = n // known
  if math.prod(sizes.values()) != n:
    raise ValueError(
      f"mesh shape {sizes} needs {math.prod(sizes.values())} devices, but "
      f"{n} devices are available; the product of the sizes must equal the "
      f"device count"
    )
  names = ("data", "model") if sizes["replica"] == 1 else ("replica", "data", "model")
  return jax.make_mesh(
    tuple(sizes[k] for k in names), names, axis_types=(AxisType.Auto,) * len(names), devices=devices
  )


# ----------------------------------------------------------------------------------------------
# Rules


def _axes_on(axes: MeshAxes, mesh_axis_names) -> MeshAxes:
  if axes is None:
    return None
  kept = tuple(a for a in ((axes,) if isinstance(axes, str) else axes) if a in mesh_axis_names)
  return None if not kept else kept[0] if len(kept) == 1 else kept


def logical_axis_rules(rules: str | Sequence, mesh: Mesh | None = None) -> Rules:
  """The rule set named `rules` (or given as pairs), restricted to `mesh`'s axes."""
  if isinstance(rules, str):
    if rules not in RULES:
      raise ValueError(f"unknown partitioning rules {rules!r}; known: {sorted(RULES)}")
    rules = RULES[rules]
  rules = tuple((name, axes) for name, axes in rules)
  if any(name == "layers" and axes is not None for name, axes in rules):
    raise ValueError("the 'layers' (scan) axis must not be sharded")
  if mesh is None:
    return rules
  return tuple((name, _axes_on(axes, mesh.axis_names)) for name, axes in rules)


def _resolve(names, shape, rules: Rules, mesh: Mesh) -> P:
  """flax's logical→mesh resolution, skipping rules whose mesh axes do not divide the dim."""
  out: list[Any] = [None] * len(names)
  assigned = [n is None for n in names]
  used: set[str] = set()
  for name, axes in rules:
    if name not in names:
      continue
    i = names.index(name)
    if assigned[i]:
      continue
    axes_t = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    if used & set(axes_t):
      continue
    if shape is not None and shape[i] % math.prod(mesh.shape[a] for a in axes_t):
      continue
    out[i], assigned[i] = axes, True
    used |= set(axes_t)
  return P(*out)


def _is_boxed(x) -> bool:
  return isinstance(x, nn.Partitioned)


def unbox(tree):
  """Drops flax's partitioning boxes (no sharding constraint applied)."""
  return jax.tree.map(lambda x: x.value if _is_boxed(x) else x, tree, is_leaf=_is_boxed)


def _drop(spec: P, ndim: int, dim: int) -> P:
  full = tuple(spec) + (None,) * (ndim - len(spec))
  return P(*(full[:dim] + full[dim + 1 :]))


def opt_state_shardings(tx, abstract_params, param_shardings_tree) -> Any:
  """NamedSharding per optimizer-state leaf, found by matching each leaf to its param.

  A state leaf belongs to the param whose tree path ends its own path (optax states hold trees
  shaped like the params). Leaves shaped like their param get its spec; Adafactor's factored
  `v_row`/`v_col` drop the dim they were reduced over (optax's rule: the largest dim, resp. the
  second largest, from `np.argsort(shape)`); any other one-dim-shorter leaf drops the unique dim
  that fits. Everything else (counts, (1,) placeholders, hyperparams) is replicated.
  """
  abstract_params = unbox(abstract_params)
  state = jax.eval_shape(tx.init, abstract_params)
  leaves = jax.tree_util.tree_leaves_with_path(abstract_params)
  shardings = jax.tree_util.tree_leaves(param_shardings_tree)
  if len(leaves) != len(shardings):
    raise ValueError(f"{len(leaves)} params but {len(shardings)} param shardings")
  by_path = {tuple(path): (x.shape, s) for (path, x), s in zip(leaves, shardings)}
  lengths = sorted({len(p) for p in by_path}, reverse=True)
  mesh = shardings[0].mesh
  replicated = NamedSharding(mesh, P())

  def leaf_sharding(path, leaf):
    path = tuple(path)
    for k in lengths:
      if k <= len(path) and path[len(path) - k :] in by_path:
        pshape, psharding = by_path[path[len(path) - k :]]
        prefix = path[: len(path) - k]
        break
    else:
      return replicated
    shape, spec = tuple(leaf.shape), psharding.spec
    if shape == tuple(pshape):
      return psharding
    if len(shape) != len(pshape) - 1:
      return replicated
    fits = [d for d in range(len(pshape)) if pshape[:d] + pshape[d + 1 :] == shape]
    field = getattr(prefix[-1], "name", None) if prefix else None
    if field in ("v_row", "v_col") and len(pshape) >= 2:
      d1, d0 = np.argsort(pshape)[-2:]  # optax.adafactor: v_row drops d0, v_col drops d1
      fits = [d for d in fits if d == (d0 if field == "v_row" else d1)]
    specs = {_drop(spec, len(pshape), d) for d in fits}
    return NamedSharding(mesh, specs.pop()) if len(specs) == 1 else replicated

  return jax.tree_util.tree_map_with_path(leaf_sharding, state)


def _model_inputs(module: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
  accepted = inspect.signature(type(module).__call__).parameters
  return {k: v for k, v in batch.items() if k in accepted and k != "deterministic"}


def abstract_params(module: nn.Module, example_batch: Mapping[str, Any]) -> Any:
  """Boxed params of `module` as ShapeDtypeStructs (nothing computed or allocated)."""
  inputs = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype)
    for k, v in _model_inputs(module, example_batch).items()
  }
  return jax.eval_shape(lambda rng, x: module.init(rng, **x)["params"], jax.random.key(0), inputs)


# ----------------------------------------------------------------------------------------------
# Placement: a mesh and the rules that map logical axes onto it


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where a model runs: a mesh and the logical-axis rules (a `RULES` name or pairs) on it.

  Every sharding of the project derives from this one value: params (`param_shardings`),
  batches (`batch_sharding`), and traced activation constraints (`jit`, `context`).
  """

  mesh: Mesh
  rules: str | Sequence = "data_parallel"

  @functools.cached_property
  def axis_rules(self) -> Rules:
    """The rules restricted to the mesh's axes (what flax's logical constraints see)."""
    return logical_axis_rules(self.rules, self.mesh)

  @property
  def data_parallel_size(self) -> int:
    """How many ways the batch is split: the mesh's data (x replica) devices."""
    return self.mesh.shape.get("data", 1) * self.mesh.shape.get("replica", 1)

  def round_batch_size(self, batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the data-parallel devices (eval/infer pad)."""
    n = self.data_parallel_size
    return -(-batch_size // n) * n

  def logical_specs(self, boxed_tree) -> Any:
    """PartitionSpec per param (tree shaped like the unboxed params); unboxed leaves
    replicated."""

    def spec(x):
      if not _is_boxed(x):
        return P()
      return _resolve(tuple(x.names), getattr(x.value, "shape", None), self.axis_rules, self.mesh)

    return jax.tree.map(spec, boxed_tree, is_leaf=_is_boxed)

  def param_shardings(self, boxed_tree) -> Any:
    """NamedSharding per param for boxed params, concrete or abstract (`abstract_params`)."""
    return jax.tree.map(
      lambda s: NamedSharding(self.mesh, s),
      self.logical_specs(boxed_tree),
      is_leaf=lambda x: isinstance(x, P),
    )

  @property
  def batch_sharding(self) -> NamedSharding:
    """Sharding of every [B, L] feature-converter array (use it as a pytree prefix)."""
    return NamedSharding(self.mesh, nn.logical_to_mesh_axes(("batch", "length"), self.axis_rules))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @contextlib.contextmanager
  def context(self):
    """Context in which traced `nn.with_logical_constraint`s shard over the mesh by the rules."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.axis_rules):
      yield

  def jit(self, fn, **jit_kwargs):
    """`jax.jit(fn, **jit_kwargs)` whose trace sees the mesh and rules (activation constraints).

    The rules are entered inside the traced function, so they belong to this jitted function
    and cannot leak into (or from) another one's cache: flax's rules are not part of jax's jit
    cache key. The mesh is set around each call (`jax.set_mesh`), so call it from Python, not
    from inside another jitted function.
    """
    rules, mesh = self.axis_rules, self.mesh

    @functools.wraps(fn)
    def with_rules(*args, **kwargs):
      with nn.logical_axis_rules(rules):
        return fn(*args, **kwargs)

    jitted = jax.jit(with_rules, **jit_kwargs)

    @functools.wraps(fn)
    def call(*args, **kwargs):
      with jax.set_mesh(mesh):
        return jitted(*args, **kwargs)

    def lower(*args, **kwargs):
      with jax.set_mesh(mesh):
        return jitted.lower(*args, **kwargs)

    call.lower = lower
    return call

  def init_params(self, module: nn.Module, rng, example_batch: Mapping[str, Any]):
    """Unboxed params initialised directly into their shardings; returns (params, shardings).

    Only shapes/dtypes of `example_batch` matter (arrays or ShapeDtypeStructs).
    """
    shapes = {
      k: (tuple(v.shape), jnp.dtype(v.dtype))
      for k, v in _model_inputs(module, example_batch).items()
    }
    shardings = self.param_shardings(abstract_params(module, example_batch))

    def init(rng):
      inputs = {k: jnp.zeros(s, d) for k, (s, d) in shapes.items()}
      return unbox(module.init(rng, **inputs)["params"])

    return self.jit(init, out_shardings=shardings)(rng), shardings
