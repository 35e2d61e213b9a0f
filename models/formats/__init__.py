"""Checkpoint formats xt5 reads and writes, a module each:

  xt5   xt5's own: DIR/params/ (orbax) + DIR/config.json + DIR/model.gin
  hf    Hugging Face `T5ForConditionalGeneration` / `UMT5ForConditionalGeneration` directories
        (config.json + safetensors / .bin)
  t5x   T5X `checkpoint_N` directories of its T5 or scalable T5 / umT5 (orbax / tensorstore, or
        the older msgpack file)

and `tree`, the params tree all of them read into and write from (`param_shapes(cfg)`, the
layer layouts, `check_params`, `CheckpointMismatchError`).

`detect(path)` names the format of a path; `load_params(path, cfg, shardings)` and
`read_config(path)` read any of them. `python -m models.formats from-hf|to-hf|from-t5x ...`
converts between them on the command line (see __main__.py).
"""

from __future__ import annotations

import os
from typing import Any

from models.config import T5Config
from models.formats import hf, t5x, tree, xt5

# What a path may be, in the words of UnknownFormatError (callers reading more kinds extend it).
EXPECTED = (
  "an xt5 checkpoint (params/ + config.json), a Hugging Face directory (config.json + weights) "
  "or a T5X checkpoint"
)


class UnknownFormatError(ValueError):
  """A path none of the formats reads (the T5X reader, tried last, failed on it)."""

  def __init__(self, path: str, reason: str, expected: str = EXPECTED):
    self.path, self.reason = path, reason
    super().__init__(f"{path} is not a checkpoint xt5 can read: expected {expected} ({reason})")


def _resolve(path: str) -> str:
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  return path


def detect(path: str) -> str:
  """The format of a checkpoint path: 'xt5' (a directory with params/), 'hf' (one with
  config.json) or, for anything else, 't5x' (whose reader decides). FileNotFoundError when
  `path` does not exist."""
  path = _resolve(path)
  if xt5.is_xt5_dir(path):
    return "xt5"
  if hf.is_hf_dir(path):
    return "hf"
  return "t5x"


def _load_t5x_tree(path: str) -> dict:
  try:
    return t5x.load_t5x_checkpoint(path)
  except Exception as e:
    raise UnknownFormatError(path, str(e)) from e


def _layout(cfg: T5Config) -> dict:
  """The xt5-only config fields an HF config cannot say, taken from `cfg`."""
  return {
    "scan_layers": cfg.scan_layers,
    "dtype": cfg.dtype,
    "remat_policy": cfg.remat_policy,
    "dropout_rate": cfg.dropout_rate,
    "kernels": cfg.kernels,
  }


def load_params(path: str, cfg: T5Config, shardings: Any = None) -> Any:
  """Params of `cfg` (its layer layout) placed on `shardings`, from a checkpoint of any format.

  `shardings`: None (first device), one `jax.sharding.Sharding` for every leaf, or a tree of
  them matching `cfg`'s params tree. Raises `tree.CheckpointMismatchError` naming every tensor
  that does not match `cfg`, `UnknownFormatError` for a path no format reads.
  """
  import jax

  path = _resolve(path)
  kind = detect(path)
  if kind == "xt5":
    return xt5.load_params(path, cfg, shardings)
  if kind == "hf":
    _, params = hf.load_hf(path, **_layout(cfg))
    tree.check_params(params, cfg, f"Hugging Face checkpoint {path}")
  else:
    params = t5x.params_from_t5x(_load_t5x_tree(path), cfg)
  return jax.tree.map(jax.device_put, params, tree.sharding_tree(shardings, cfg))


def read_config(path: str) -> T5Config:
  """The model config of a checkpoint: an xt5 checkpoint's config.json, a Hugging Face
  config.json, or inferred from a T5X checkpoint's parameter shapes (which reads the whole T5X
  checkpoint)."""
  path = _resolve(path)
  kind = detect(path)
  if kind == "xt5":
    return xt5.read_config(path)
  if kind == "hf":
    return hf.config_from_hf(hf.load_hf_config(path))
  return t5x.config_from_t5x(_load_t5x_tree(path))
