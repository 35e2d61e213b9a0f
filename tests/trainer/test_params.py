"""Params and model config from any checkpoint train.py reads (trainer/params.py): a training
MODEL_DIR's newest committed step, else whatever models.formats reads."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from models.config import T5Config
from models.formats import hf, tree, xt5
from trainer import checkpoints, params

CFG = T5Config(
  vocab_size=64,
  d_model=16,
  num_heads=2,
  head_dim=8,
  d_ff=32,
  num_encoder_layers=2,
  num_decoder_layers=1,
  dropout_rate=0.0,
  dtype="float32",
)
SHARDING = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def random_params(cfg, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda s: rng.standard_normal(s.shape).astype(np.float32), tree.param_shapes(cfg)
  )


def assert_equal(got, want):
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got), want)


def write_model_dir(model_dir, steps, with_config=True):
  """A MODEL_DIR as train.py leaves it: committed steps of a train state, model_config.json."""
  with checkpoints.Checkpointer(str(model_dir / params.CHECKPOINTS)) as ckpt:
    for step, p in steps.items():
      state = {"step": np.int32(step), "params": jax.device_put(p)}
      ckpt.save(step, state, {}, wait=True)
  if with_config:
    (model_dir / params.MODEL_CONFIG_JSON).write_text(json.dumps(CFG.to_dict()))


def test_model_dir_gives_its_newest_step(tmp_path, caplog):
  first, newest = random_params(CFG, 0), random_params(CFG, 1)
  write_model_dir(tmp_path / "run", {2: first, 4: newest})
  assert params.is_train_dir(str(tmp_path / "run"))
  assert params.read_model_config(str(tmp_path / "run")) == CFG
  shardings = jax.tree.map(lambda _: SHARDING, tree.param_shapes(CFG))
  with caplog.at_level("INFO", logger="trainer.params"):
    got = params.load_params(str(tmp_path / "run"), CFG, shardings)
  assert "params of step 4" in caplog.text
  assert_equal(got, newest)
  target = params.abstract_target(CFG, shardings)
  assert jax.tree.map(lambda s: (s.shape, s.dtype), target) == jax.tree.map(
    lambda x: (x.shape, x.dtype), got
  )


def test_model_dir_without_model_config(tmp_path):
  write_model_dir(tmp_path / "old", {1: random_params(CFG, 0)}, with_config=False)
  with pytest.raises(ValueError, match="has no model_config.json .*pass the model config"):
    params.read_model_config(str(tmp_path / "old"))
  assert not params.is_train_dir(str(tmp_path))  # no committed step


def test_initial_checkpoint_from_hugging_face_and_xt5(tmp_path):
  p = random_params(CFG, 0)
  hf.save_hf(p, CFG, str(tmp_path / "hf"))
  xt5.save_checkpoint(str(tmp_path / "xt5"), CFG, p)
  shardings = jax.tree.map(lambda _: SHARDING, p)
  for path in ("hf", "xt5"):
    assert params.read_model_config(str(tmp_path / path)) == CFG
    assert_equal(params.load_params(str(tmp_path / path), CFG, shardings), p)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    params.load_params(str(tmp_path / "nope"), CFG, shardings)


def test_unreadable_path_lists_a_model_dir_too(tmp_path):
  (tmp_path / "notes.txt").write_text("not a checkpoint")
  for read in (lambda p: params.load_params(p, CFG, SHARDING), params.read_model_config):
    with pytest.raises(ValueError) as e:
      read(str(tmp_path))
    assert str(e.value).startswith(
      f"{tmp_path} is not a checkpoint xt5 can read: expected a training MODEL_DIR (with "
      "checkpoints/), an xt5 checkpoint (params/ + config.json), a Hugging Face directory "
      "(config.json + weights) or a T5X checkpoint ("
    )


def test_an_mrt5_run_starts_from_a_checkpoint_without_a_gate(tmp_path):
  """The paper's recipe: continued pretraining from ByT5 adds only the gate; a checkpoint that
  has a gate loads as it is."""
  plain = random_params(CFG, 3)
  xt5.save_checkpoint(str(tmp_path / "byt5"), CFG, plain)
  gated_cfg = CFG.replace(delete_gate_layer=1)
  shardings = tree.sharding_tree(SHARDING, gated_cfg)
  got = jax.tree.map(
    np.asarray, params.load_initial_params(str(tmp_path / "byt5"), gated_cfg, shardings)
  )
  gate = got["encoder"]["delete_gate"]
  assert gate["feed_forward"]["bias"].tolist() == [1.0]
  assert jax.tree.map(np.shape, got) == jax.tree.map(np.shape, tree.param_shapes(gated_cfg))
  assert_equal(
    {**got, "encoder": {k: v for k, v in got["encoder"].items() if k != "delete_gate"}}, plain
  )

  trained = random_params(gated_cfg, 4)
  xt5.save_checkpoint(str(tmp_path / "mrt5"), gated_cfg, trained)
  assert_equal(params.load_initial_params(str(tmp_path / "mrt5"), gated_cfg, shardings), trained)
