"""Params from any checkpoint xt5 reads, whatever its format (temporary; replaced on merge)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np

from models import checkpoint as model_checkpoint
from models import convert
from models.config import T5Config
from trainer import checkpoints

CHECKPOINTS = "checkpoints"  # MODEL_DIR/checkpoints/<step>/
MODEL_CONFIG_JSON = "model_config.json"  # MODEL_DIR/model_config.json: T5Config.to_dict()

log = logging.getLogger("xt5")


def is_train_dir(path: str) -> bool:
  return bool(checkpoints.committed_steps(os.path.join(path, CHECKPOINTS)))


def checkpoint_kind(path: str) -> tuple[str, str]:
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  if is_train_dir(path):
    return path, "train"
  if os.path.isdir(os.path.join(path, model_checkpoint.PARAMS_DIR)):
    return path, "xt5"
  if os.path.isfile(os.path.join(path, "config.json")):
    return path, "hf"
  return path, "t5x"


def load_t5x_tree(path: str) -> dict:
  try:
    return convert.load_t5x_checkpoint(path)
  except Exception as e:
    raise ValueError(
      f"{path} is not a checkpoint xt5 can read: expected a training MODEL_DIR (with "
      f"{CHECKPOINTS}/), an xt5 checkpoint (params/ + config.json), a Hugging Face "
      f"directory (config.json + weights) or a T5X checkpoint ({e})"
    ) from e


def abstract_params(cfg: T5Config, shardings):
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, np.float32, sharding=sh),
    convert.param_shapes(cfg),
    shardings,
  )


def load_params(path: str, cfg: T5Config, shardings) -> Any:
  path, kind = checkpoint_kind(path)
  if kind == "train":
    with checkpoints.Checkpointer(os.path.join(path, CHECKPOINTS)) as ckpt:
      step, params = ckpt.restore_params(abstract_params(cfg, shardings))
    log.info("params of step %d from %s", step, ckpt.directory)
    return params
  if kind == "xt5":
    return model_checkpoint.load_params(path, cfg, shardings)
  if kind == "hf":
    _, params = convert.load_hf(
      path,
      scan_layers=cfg.scan_layers,
      dtype=cfg.dtype,
      remat_policy=cfg.remat_policy,
      dropout_rate=cfg.dropout_rate,
    )
    convert.check_params(params, cfg, f"Hugging Face checkpoint {path}")
  else:
    params = convert.params_from_t5x(load_t5x_tree(path), cfg)
  return jax.tree.map(jax.device_put, params, shardings)


def read_model_config(path: str) -> T5Config:
  path, kind = checkpoint_kind(path)
  if kind == "train":
    json_path = os.path.join(path, MODEL_CONFIG_JSON)
    if not os.path.isfile(json_path):
      raise ValueError(
        f"{path} has no {MODEL_CONFIG_JSON} (written by newer versions of "
        f"train.py): pass the model config explicitly"
      )
    with open(json_path) as f:
      return T5Config.from_dict(json.load(f))
  if kind == "xt5":
    return model_checkpoint.read_config(path)
  if kind == "hf":
    return convert.config_from_hf(convert.load_hf_config(path))
  return convert.config_from_t5x(load_t5x_tree(path))
