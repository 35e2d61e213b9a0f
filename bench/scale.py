"""Pod-scale dry run: the train step compiled (never run) on a fake mesh of many devices.

  python -m bench.scale [--devices 64 --model-axis 8 --families t5_1_1,mt5,byt5
                         --sizes base,xl,xxl --rules data_parallel,fsdp,tensor,2d
                         --batch ROWS --lengths 512,114]

Each model gin (configs/models/<family>/<size>.gin, with `scan_layers=True` so compile time
does not grow with depth) is placed on a mesh per rule set: data_parallel and fsdp on
data=devices, tensor and 2d on data=devices/model-axis x model=model-axis. The state and the batch
are `jax.ShapeDtypeStruct`s with their shardings (nothing is allocated) and the step is the one
train.py jits (`trainer.loop.make_train_step_fn` over `trainer.state.state_shardings`), lowered
and compiled for the fake devices. Per device it reports:

- params and optimizer state (Adafactor, T5X's defaults): summed from each leaf's shard shape,
  beside the expectation from the rules by name (flax's resolution, before the shape-aware
  fallback skips axes that do not divide a dim): data_parallel = total, fsdp = total/devices,
  tensor = total/model for params with a heads/mlp/vocab dim, 2d = both;
- `fallback`: params the rules shard by name but that stay replicated, as their dims do not
  divide the mesh axes (e.g. 12 heads of relpos over 64 devices);
- XLA's memory analysis of the compiled step: arguments, outputs and temporaries; peak =
  arguments + outputs - donated aliases + temporaries, and the chip memories it fits;
- the collectives in the compiled HLO: static count and result bytes by kind (an op inside the
  scanned layer body counts once, though it runs once per layer).

The global batch defaults to one row per data-parallel device (`--batch` sets the global rows).
Run as a script, it fakes `--devices` CPU devices before jax starts. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import re
import sys

from models import runtime

if __name__ == "__main__":  # before JAX starts its backend: the fake pod's devices
  _n = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), None)
  if _n is None and "--devices" in sys.argv[:-1]:
    _n = sys.argv[sys.argv.index("--devices") + 1]
  runtime.configure(extra_xla_flags=(f"--xla_force_host_platform_device_count={_n or 64}",))

import flax.linen as nn
import jax
import numpy as np

from bench.util import emit_json, print_table
from models import partitioning
from models.config import T5Config
from models.network import Transformer
from trainer import loop, optimizers
from trainer import state as state_lib

GIB = 2**30
CHIPS_GIB = (16, 32, 80, 141)  # v5e/V100-16, V100-32/v4, A100/H100-80, H200
FAMILIES = ("t5_1_1", "mt5", "byt5")
SIZES = ("base", "xl", "xxl")
RULES = ("data_parallel", "fsdp", "tensor", "2d")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE_RE = re.compile(
  r"=\s*(?P<shape>.+?)\s+(?P<kind>" + "|".join(COLLECTIVES) + r")(?:-start)?\("
)
_ARRAY_RE = re.compile(r"\b(?P<dtype>pred|[a-z]+\d+)\[(?P<dims>[\d,]*)\]")
_HLO_BITS = {"pred": 8}  # HLO element types (f32, bf16, s32, u8, ...) end in their bit width


def model_config(family: str, size: str) -> T5Config:
  """configs/models/<family>/<size>.gin's MODEL_CONFIG, scanned over layers."""
  import gin  # only the command line touches gin

  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([f"configs/models/{family}/{size}.gin"], [])
    cfg = gin.query_parameter("MODEL_CONFIG/gin.macro.value").scoped_configurable_fn()
  finally:
    gin.clear_config()
  return cfg.replace(scan_layers=True)


def model_features(cfg: T5Config, lengths: tuple[int, int], batch: int) -> dict:
  """Shapes of the unpacked features seqio's converter makes ('encoder_decoder' for
  (inputs, targets), 'decoder_only' (a prefix LM of inputs + targets) for a decoder-only
  model), as `trainer.mesh.example_batch` gives them, without importing the input pipeline."""
  inputs, targets = lengths
  if cfg.architecture == "decoder_only":
    keys = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights")
    shapes = dict.fromkeys(keys + ("decoder_causal_attention",), inputs + targets)
  else:
    shapes = {"encoder_input_tokens": inputs}
    shapes |= dict.fromkeys(
      ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights"), targets
    )
  return {k: jax.ShapeDtypeStruct((batch, n), np.int32) for k, n in shapes.items()}


def mesh_shape(rules: str, devices: int, model_axis: int) -> dict[str, int]:
  if rules in ("tensor", "2d"):
    if devices % model_axis:
      raise ValueError(f"--model-axis {model_axis} does not divide --devices {devices}")
    return {"data": devices // model_axis, "model": model_axis}
  return {"data": devices, "model": 1}


def _nbytes(shape, dtype) -> int:
  return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def shard_bytes(abstract_tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
  return sum(
    _nbytes(x.sharding.shard_shape(x.shape), x.dtype) for x in jax.tree.leaves(abstract_tree)
  )


def by_name_specs(boxed, placement: partitioning.Placement):
  """PartitionSpec per param from the rules by logical name only (flax's resolution)."""
  return jax.tree.map(
    lambda x: nn.logical_to_mesh_axes(tuple(x.names), placement.axis_rules),
    boxed,
    is_leaf=lambda x: isinstance(x, nn.Partitioned),
  )


def _divisor(spec, mesh) -> int:
  axes = [
    a
    for entry in spec
    if entry is not None
    for a in ((entry,) if isinstance(entry, str) else entry)
  ]
  return int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64))


def param_report(boxed, shardings, placement: partitioning.Placement) -> dict:
  """Total and per-device param bytes, the by-name expectation, and the fallbacks."""
  values = jax.tree.leaves(partitioning.unbox(boxed))
  actual = jax.tree.leaves(shardings)
  expected = jax.tree.leaves(
    by_name_specs(boxed, placement), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
  )
  total = per_device = ideal = fallback = 0
  for x, sharding, spec in zip(values, actual, expected, strict=True):
    n = _nbytes(x.shape, x.dtype)
    total += n
    per_device += _nbytes(sharding.shard_shape(x.shape), x.dtype)
    ideal += n / _divisor(spec, placement.mesh)
    fallback += _divisor(spec, placement.mesh) > 1 and sharding.is_fully_replicated
  return {"total": total, "per_device": per_device, "expected": ideal, "fallback": fallback}


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {'count', 'bytes'}} of the collectives in an HLO module's text (result bytes)."""
  out = {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
  for m in _COLLECTIVE_RE.finditer(hlo_text):
    arrays = _ARRAY_RE.findall(m["shape"])
    size = sum(
      int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
      * (_HLO_BITS.get(dt) or int(re.sub(r"\D", "", dt)))
      // 8
      for dt, dims in arrays
    )
    out[m["kind"]]["count"] += 1
    out[m["kind"]]["bytes"] += size
  return out


def dry_run(
  cfg: T5Config, rules: str, shape: dict[str, int], lengths: tuple[int, int], batch: int | None
) -> dict:
  """Compiles the train step of `cfg` on a mesh of `shape` under `rules`; the report row."""
  n = int(np.prod(list(shape.values())))
  placement = partitioning.Placement(
    partitioning.make_mesh(shape, devices=jax.devices()[:n]), rules
  )
  batch = batch or placement.data_parallel_size
  module = Transformer(cfg)
  cfg_opt = loop.OptimizerConfig()
  tx = optimizers.make_optimizer(cfg_opt.optimizer, cfg_opt.learning_rate, cfg_opt.clip_grad_norm)
  example = model_features(cfg, lengths, batch)
  shardings = state_lib.state_shardings(module, tx, example, placement)
  state = state_lib.abstract_state(module, tx, example, shardings)
  step = loop.make_train_step_fn(module, tx, cfg_opt.learning_rate, shardings, placement)
  batch_in = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=placement.batch_sharding)
    for k, v in example.items()
  }
  compiled = step.lower(state, batch_in, jax.random.key(0)).compile()
  mem = compiled.memory_analysis()
  params = param_report(
    partitioning.abstract_params(module, example), shardings["params"], placement
  )
  peak = (
    mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    - mem.alias_size_in_bytes
    + mem.temp_size_in_bytes
  )
  return {
    "mesh": "x".join(f"{k}{v}" for k, v in shape.items() if v > 1 or k == "data"),
    "rules": rules,
    "batch": batch,
    "total_param_bytes": params["total"],
    "param_bytes": params["per_device"],
    "expected_param_bytes": params["expected"],
    "fallback_params": params["fallback"],
    "opt_bytes": shard_bytes(state["opt_state"]),
    "argument_bytes": mem.argument_size_in_bytes,
    "output_bytes": mem.output_size_in_bytes,
    "alias_bytes": mem.alias_size_in_bytes,
    "temp_bytes": mem.temp_size_in_bytes,
    "peak_bytes": peak,
    "fits_gib": [c for c in CHIPS_GIB if peak <= c * GIB],
    "collectives": collectives(compiled.as_text()),
  }


def _gib(b: float) -> str:
  return f"{b / GIB:.3g}"


def _csv(s: str) -> list[str]:
  return [x for x in s.split(",") if x]


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--devices", type=int, default=64, help="fake devices (at most jax's count)")
  p.add_argument("--model-axis", type=int, default=8, help="'model' size for tensor and 2d")
  p.add_argument("--families", default=",".join(FAMILIES))
  p.add_argument("--sizes", default=",".join(SIZES))
  p.add_argument("--rules", default=",".join(RULES))
  p.add_argument("--batch", type=int, default=None, help="global rows (default: 1 per data device)")
  p.add_argument("--lengths", default="512,114", help="inputs,targets")
  args = p.parse_args(argv)
  if args.devices > jax.device_count():
    raise SystemExit(
      f"--devices {args.devices}: jax has {jax.device_count()} devices (run as a script, or set "
      f"XLA_FLAGS=--xla_force_host_platform_device_count before jax starts)"
    )
  inputs, targets = (int(x) for x in args.lengths.split(","))
  rows = []
  for family in _csv(args.families):
    for size in _csv(args.sizes):
      cfg = model_config(family, size)
      for rules in _csv(args.rules):
        shape = mesh_shape(rules, args.devices, args.model_axis)
        row = {
          "model": f"{family}-{size}",
          **dry_run(cfg, rules, shape, (inputs, targets), args.batch),
        }
        rows.append(row)
        print(f"compiled {row['model']} {rules} on {row['mesh']}", file=sys.stderr, flush=True)
  print(
    f"train step compiled for {args.devices} fake devices, lengths {inputs}/{targets}, Adafactor; "
    f"GiB per device (params/opt from shard shapes; peak = XLA's args + outputs - aliases + temps)"
  )
  print_table(
    ["model", "rules", "mesh", "params", "expected", "fallback", "opt", "temp", "peak", "fits GiB"]
    + ["AR", "AG", "RS", "A2A", "CP", "coll GiB"],
    [
      [
        r["model"],
        r["rules"],
        r["mesh"],
        _gib(r["param_bytes"]),
        _gib(r["expected_param_bytes"]),
        r["fallback_params"],
        _gib(r["opt_bytes"]),
        _gib(r["temp_bytes"]),
        _gib(r["peak_bytes"]),
        ",".join(map(str, r["fits_gib"])) or "-",
      ]
      + [r["collectives"][k]["count"] for k in COLLECTIVES]
      + [_gib(sum(c["bytes"] for c in r["collectives"].values()))]
      for r in rows
    ],
  )
  emit_json(
    {
      "bench": "scale",
      "devices": args.devices,
      "lengths": [inputs, targets],
      "rows": [
        {
          "model": r["model"],
          "rules": r["rules"],
          "mesh": r["mesh"],
          "param_bytes": r["param_bytes"],
          "expected_param_bytes": round(r["expected_param_bytes"]),
          "opt_bytes": r["opt_bytes"],
          "temp_bytes": r["temp_bytes"],
          "peak_bytes": r["peak_bytes"],
          "fits_gib": r["fits_gib"],
          "collectives": {k: v["count"] for k, v in r["collectives"].items()},
        }
        for r in rows
      ],
    }
  )
  return rows


if __name__ == "__main__":
  main()
