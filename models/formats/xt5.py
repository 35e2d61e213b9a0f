"""xt5's own checkpoint format: orbax params plus the config (the minimal, params-only checkpoint).

Layout of an xt5 checkpoint directory (what `python -m models.formats` and `save_checkpoint`
write):
  DIR/params/       orbax `StandardCheckpointer` checkpoint of the unboxed params tree
                    (float32, OCDBT; written to a temporary directory and renamed: atomic)
  DIR/config.json   `T5Config.to_dict()`
  DIR/model.gin     the same config as gin: `model_config.T5Config.<field> = value`, with the
                    dynamic-registration header of configs/models/*.gin and the MODEL_CONFIG macro

`load_params` accepts DIR or DIR/params, checks every tensor against the config (one error
naming each missing/unexpected/wrongly shaped tensor), converts between scanned and unrolled
layer layouts when the checkpoint and `cfg.scan_layers` differ, and restores straight onto
`shardings` when given (orbax needs the target shardings to restore onto a different device
count; docs/design.md, Known traps). `load_checkpoint` gives (config, params) together.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from models.config import T5Config
from models.formats.tree import (
  abstract_target,
  check_params,
  check_tree,
  flat_shapes,
  flatten,
  is_scanned,
  sharding_tree,
  stack_layers,
  unflatten,
  unfreeze,
  unstack_layers,
)

PARAMS_DIR = "params"
CONFIG_JSON = "config.json"
MODEL_GIN = "model.gin"

_GIN_HEADER = """\
# xt5 model config written by models/formats/xt5.py; include it or pass it with --gin_file.
from __gin__ import dynamic_registration
from models import config as model_config

MODEL_CONFIG = @model_config.T5Config()
"""


def is_xt5_dir(path: str) -> bool:
  """Whether `path` looks like an xt5 checkpoint directory (holds params/)."""
  return os.path.isdir(os.path.join(path, PARAMS_DIR))


def config_to_gin(cfg: T5Config) -> str:
  """Gin text binding every `T5Config` field (parses back to an equal config)."""
  lines = [_GIN_HEADER]
  for name, value in cfg.to_dict().items():
    if isinstance(value, list):
      value = tuple(value)
    lines.append(f"model_config.T5Config.{name} = {value!r}")
  return "\n".join(lines) + "\n"


def write_config_files(cfg: T5Config, directory: str):
  """DIR/config.json and DIR/model.gin of `cfg`."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, CONFIG_JSON), "w") as f:
    json.dump(cfg.to_dict(), f, indent=2)
    f.write("\n")
  with open(os.path.join(directory, MODEL_GIN), "w") as f:
    f.write(config_to_gin(cfg))


def read_config(directory: str) -> T5Config:
  """The `T5Config` of DIR/config.json."""
  path = os.path.join(directory, CONFIG_JSON)
  try:
    with open(path) as f:
      return T5Config.from_dict(json.load(f))
  except FileNotFoundError:
    raise
  except Exception as e:
    raise ValueError(f"cannot read xt5 config {path}: {e}") from e


def _params_path(directory: str) -> str:
  directory = os.path.abspath(directory)
  sub = os.path.join(directory, PARAMS_DIR)
  return sub if os.path.isdir(sub) else directory


def save_params(params, directory: str, *, force: bool = False):
  """Writes `params` (numpy or jax arrays) as an orbax checkpoint at `directory` (atomic).

  `directory` must not exist unless `force`.
  """
  import orbax.checkpoint as ocp

  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(directory), params, force=force)
    ckptr.wait_until_finished()


def _saved_shapes(path: str) -> dict[tuple[str, ...], tuple[int, ...]]:
  import orbax.checkpoint as ocp

  try:
    with ocp.StandardCheckpointer() as ckptr:
      meta = ckptr.metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    return {p: tuple(m.shape) for p, m in flatten(tree).items()}
  except Exception as e:
    raise ValueError(f"cannot read xt5 checkpoint {path}: {e}") from e


def load_params(directory: str, cfg: T5Config, shardings: Any = None):
  """Params of `cfg` (jax arrays, `cfg`'s layer layout) from an xt5 checkpoint.

  `shardings`: None (first device), one `jax.sharding.Sharding` for every leaf, or a tree of
  them matching `cfg`'s params tree.
  """
  import orbax.checkpoint as ocp

  path = _params_path(directory)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no xt5 checkpoint at {path}")
  saved = _saved_shapes(path)
  saved_scanned = is_scanned(unflatten(saved))
  check_tree(saved, flat_shapes(cfg.replace(scan_layers=saved_scanned)), f"xt5 checkpoint {path}")
  shardings = sharding_tree(shardings, cfg)
  try:
    if saved_scanned == cfg.scan_layers:  # straight onto the target shardings
      with ocp.StandardCheckpointer() as ckptr:
        return unfreeze(ckptr.restore(path, abstract_target(cfg, shardings)))
    # the other layer layout: restore as numpy, restack, then place
    as_numpy = unflatten(
      {p: ocp.RestoreArgs(restore_type=np.ndarray, dtype=np.float32) for p in saved}
    )
    host = unfreeze(ocp.PyTreeCheckpointer().restore(path, restore_args=as_numpy))
  except Exception as e:
    raise ValueError(f"cannot read xt5 checkpoint {path}: {e}") from e
  host = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), host)
  host = stack_layers(host, cfg.delete_gate_layer) if cfg.scan_layers else unstack_layers(host)
  return jax.tree_util.tree_map(jax.device_put, host, shardings)


def save_checkpoint(directory: str, cfg: T5Config, params, *, force: bool = False):
  """DIR/params (orbax), DIR/config.json and DIR/model.gin; params checked against `cfg`."""
  check_params(params, cfg, "params to save")
  os.makedirs(directory, exist_ok=True)
  save_params(params, os.path.join(directory, PARAMS_DIR), force=force)
  write_config_files(cfg, directory)


def load_checkpoint(directory: str, shardings: Any = None, **overrides):
  """(config, params) of an xt5 checkpoint directory; `overrides` replace config fields
  (e.g. `scan_layers=True`, `dtype='bfloat16'`)."""
  cfg = read_config(directory)
  if overrides:
    cfg = cfg.replace(**overrides)
  return cfg, load_params(directory, cfg, shardings)
