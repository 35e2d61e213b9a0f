"""Params and model config from any checkpoint train.py reads, whatever its format.

A path is a training MODEL_DIR (one with committed steps in MODEL_DIR/checkpoints/: its newest
good step's params, restored with `checkpoints.Checkpointer.restore_params`, and the
MODEL_DIR/model_config.json train.py writes), else anything `models.formats` reads: an xt5
checkpoint, a Hugging Face T5 directory or a T5X checkpoint. `abstract_target(cfg, shardings)`
is the float32, sharded params tree a restore targets.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from models import formats
from models.config import T5Config
from models.formats.tree import abstract_target
from trainer import checkpoints

CHECKPOINTS = "checkpoints"  # MODEL_DIR/checkpoints/<step>/
MODEL_CONFIG_JSON = "model_config.json"  # MODEL_DIR/model_config.json: T5Config.to_dict()

# What load_params and read_model_config accept, in the words of their errors.
EXPECTED = f"a training MODEL_DIR (with {CHECKPOINTS}/), {formats.EXPECTED}"

log = logging.getLogger(__name__)


def is_train_dir(path: str) -> bool:
  """Whether `path` is a training MODEL_DIR with at least one committed checkpoint."""
  return bool(checkpoints.committed_steps(os.path.join(path, CHECKPOINTS)))


def _any_format(read, path: str, *args):
  try:
    return read(path, *args)
  except formats.UnknownFormatError as e:
    raise formats.UnknownFormatError(e.path, e.reason, EXPECTED) from e.__cause__


def load_params(path: str, cfg: T5Config, shardings: Any) -> Any:
  """Params of `cfg` placed on `shardings`, from any checkpoint xt5 reads: a training
  MODEL_DIR (its newest good step), an xt5 checkpoint (`python -m models.formats`), a Hugging
  Face T5 directory, or a T5X checkpoint."""
  path = os.path.abspath(os.path.expanduser(path))
  if is_train_dir(path):
    with checkpoints.Checkpointer(os.path.join(path, CHECKPOINTS)) as ckpt:
      step, params = ckpt.restore_params(abstract_target(cfg, shardings))
    log.info("params of step %d from %s", step, ckpt.directory)
    return params
  return _any_format(formats.load_params, path, cfg, shardings)


def load_initial_params(path: str, cfg: T5Config, shardings: Any) -> Any:
  """`load_params` for a run's INITIAL_CHECKPOINT_PATH. An MrT5 config (`delete_gate_layer`)
  started from a checkpoint without a gate (ByT5: the paper's continued pretraining) gets the
  checkpoint's params plus a freshly initialised gate (`models.mrt5.add_delete_gate`)."""
  if cfg.delete_gate_layer is None or read_model_config(path).delete_gate_layer is not None:
    return load_params(path, cfg, shardings)
  import jax
  import numpy as np

  from models import mrt5

  plain = load_params(path, cfg.replace(delete_gate_layer=None), None)
  gated = mrt5.add_delete_gate(jax.tree.map(np.asarray, plain), cfg)
  log.info("%s has no delete gate: starting from its params and a fresh gate", path)
  return jax.tree.map(jax.device_put, gated, shardings)


def read_model_config(path: str) -> T5Config:
  """The model config stored with a checkpoint: a training MODEL_DIR's model_config.json, an
  xt5 checkpoint's config.json, a Hugging Face config.json, or inferred from a T5X
  checkpoint's parameter shapes (which reads the whole T5X checkpoint once more)."""
  path = os.path.abspath(os.path.expanduser(path))
  if is_train_dir(path):
    json_path = os.path.join(path, MODEL_CONFIG_JSON)
    if not os.path.isfile(json_path):
      raise ValueError(
        f"{path} has no {MODEL_CONFIG_JSON} (written by newer versions of "
        f"train.py): pass the model config explicitly"
      )
    with open(json_path) as f:
      return T5Config.from_dict(json.load(f))
  return _any_format(formats.read_config, path)
