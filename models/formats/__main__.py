"""Command line: convert T5-family checkpoints between Hugging Face, T5X and xt5.

  python -m models.formats from-hf  HF_DIR  OUT_DIR [--scan_layers] [--dtype bfloat16]
  python -m models.formats from-t5x T5X_CHECKPOINT_DIR OUT_DIR [--config CONFIG.json|MODEL.gin]
                                    [--scan_layers] [--dtype bfloat16]
  python -m models.formats to-hf    XT5_DIR HF_DIR

from-hf and from-t5x write an xt5 checkpoint (OUT_DIR/params/, config.json, model.gin; see
xt5.py); to-hf reads one (as written by from-hf / from-t5x) and writes config.json,
generation_config.json and model.safetensors for `T5ForConditionalGeneration.from_pretrained`
(`UMT5ForConditionalGeneration` for a model with per-layer position biases: umT5).
from-hf reads T5, mT5, ByT5 and umT5 (model_type 'umt5') directories. from-t5x reads T5X's T5
and scalable T5 / umT5 checkpoints; without --config it reads the shapes off the checkpoint
(see t5x.py); --config takes an xt5 config.json (`T5Config.to_dict`) or a gin file binding
MODEL_CONFIG, such as configs/models/umt5/small.gin or an OUT_DIR/model.gin (needs gin-config,
imported here only).
--scan_layers / --dtype set those config fields; from-hf keeps the HF config's dropout_rate.
Exit status 1 with a one-line `error: ...` (naming the file or tensors) on bad input.

`from_hf`, `from_t5x` and `to_hf` are the commands as functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from models.config import T5Config
from models.formats import hf, t5x, xt5


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
  cfg, params = hf.load_hf(hf_dir, **overrides)
  xt5.save_checkpoint(out_dir, cfg, params)
  return cfg


def to_hf(xt5_dir: str, hf_dir: str) -> T5Config:
  """xt5 checkpoint dir -> HF dir that `T5ForConditionalGeneration.from_pretrained` (umT5:
  `UMT5ForConditionalGeneration`) loads."""
  if os.path.isdir(os.path.join(xt5_dir, "checkpoints")) and not xt5.is_xt5_dir(xt5_dir):
    raise ValueError(
      f"{xt5_dir} is a training MODEL_DIR, not an xt5 checkpoint: write its newest step with "
      f"python -m trainer.export {xt5_dir} {hf_dir}"
    )
  cfg, params = xt5.load_checkpoint(xt5_dir)
  hf.save_hf(params, cfg, hf_dir)
  return cfg


def from_t5x(t5x_dir: str, out_dir: str, config: str | None = None, **overrides) -> T5Config:
  """T5X checkpoint dir -> xt5 checkpoint dir. `config`: config.json / gin, else inferred."""
  tree = t5x.load_t5x_checkpoint(t5x_dir)
  if config:
    cfg = _config_from_file(config)
    if overrides:
      cfg = cfg.replace(**overrides)
  else:
    cfg = t5x.config_from_t5x(tree, **overrides)
  params = t5x.params_from_t5x(tree, cfg)
  xt5.save_checkpoint(out_dir, cfg, params)
  return cfg


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m models.formats",
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
