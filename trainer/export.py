"""Command line: the params of a training run (its newest good step), or of any checkpoint
train.py reads, written as an xt5 or a Hugging Face checkpoint.

  python -m trainer.export MODEL_DIR OUT_DIR [--format hf|xt5]

`hf` writes config.json, generation_config.json and model.safetensors for
`T5ForConditionalGeneration.from_pretrained(OUT_DIR)`; `xt5` writes params/, config.json and
model.gin (what `python -m models.formats from-hf` writes). Exit status 1 with a one-line
`error: ...` on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from models.config import T5Config
from models.formats import hf, xt5
from trainer import checkpoints
from trainer import params as params_lib

FORMATS = ("hf", "xt5")


def export(path: str, out_dir: str, fmt: str = "hf") -> T5Config:
  """Writes the params of `path` (see `trainer.params.load_params`) to `out_dir` as `fmt`."""
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
  cfg = params_lib.read_model_config(path)
  params = params_lib.load_params(path, cfg, None)
  if fmt == "hf":
    hf.save_hf(params, cfg, out_dir)
  else:
    xt5.save_checkpoint(out_dir, cfg, params)
  return cfg


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m trainer.export",
    description="Write a training run's newest good params as a Hugging Face or xt5 checkpoint.",
  )
  parser.add_argument("path", help="a training MODEL_DIR, or any checkpoint train.py reads")
  parser.add_argument("out_dir")
  parser.add_argument("--format", choices=FORMATS, default="hf")
  args = parser.parse_args(argv)
  try:
    cfg = export(args.path, args.out_dir, args.format)
  except (ValueError, FileNotFoundError, checkpoints.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.out_dir}: {json.dumps(cfg.to_dict())}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
