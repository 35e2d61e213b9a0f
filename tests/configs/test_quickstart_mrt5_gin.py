"""configs/experiments/quickstart_mrt5.gin: the byte quickstart plus MrT5's gate and controller,
parsed by train.py's gin front end and built (abstractly) into the train state it would train."""

import gin
import jax
import pytest

import train
from models import partitioning
from models.network import Transformer
from trainer import mesh as mesh_lib
from trainer import optimizers
from trainer import state as state_lib

GIN = "configs/experiments/quickstart_mrt5.gin"


@pytest.fixture(autouse=True)
def _clean_gin():
  yield
  gin.clear_config()


def _train_kwargs(bindings=()):
  """The kwargs the run gin gives train_script.train (its configurable's bound values)."""
  train.parse_gin([GIN], list(bindings))
  names = ("model_config", "task_feature_lengths", "batch_size", "model_dir") + tuple(
    f"deletion_{k}" for k in ("target", "k_p", "k_i", "alpha0", "delay", "bucket")
  )
  return {n: gin.query_parameter(f"train_script.train.{n}") for n in names}


def _value(x):
  """A bound gin value: macros and configurable references evaluated."""
  while hasattr(x, "scoped_configurable_fn"):
    x = x.scoped_configurable_fn()
  return x


def test_quickstart_mrt5_is_the_byte_quickstart_plus_the_gate():
  kw = {k: _value(v) for k, v in _train_kwargs().items()}
  train.parse_gin(["configs/experiments/quickstart_byt5.gin"], [])
  byt5 = _value(gin.query_parameter("train_script.train.model_config"))
  cfg = kw["model_config"]
  assert cfg.replace(delete_gate_layer=None, use_softmax1=False) == byt5
  assert (cfg.delete_gate_layer, cfg.sigmoid_mask_scale, cfg.use_softmax1) == (3, -30.0, True)
  assert kw["model_dir"] == "runs/quickstart_mrt5"
  got = state_lib.DeletionConfig(
    *(kw[f"deletion_{k}"] for k in ("target", "k_p", "k_i", "alpha0", "delay"))
  )
  assert got == state_lib.DeletionConfig(target=0.4, k_p=0.5, k_i=1e-5, alpha0=0.0, delay=675)
  assert kw["deletion_bucket"] == 64
  # the train state it would train: the gated params and the controller (shapes only)
  placement = partitioning.Placement(partitioning.make_mesh(), "data_parallel")
  module, tx = Transformer(cfg), optimizers.make_optimizer("adafactor", optimizers.constant(0.01))
  example = mesh_lib.example_batch("encoder_decoder", True, kw["task_feature_lengths"], 8)
  shardings = state_lib.state_shardings(module, tx, example, placement)
  target = state_lib.abstract_state(module, tx, example, shardings)
  assert target["params"]["encoder"]["delete_gate"]["feed_forward"]["kernel"].shape == (192, 1)
  assert set(target[state_lib.PI_KEY]) == {"p", "i", "alpha"}
  assert jax.tree.leaves(target[state_lib.PI_KEY])[0].shape == ()


def test_the_controller_macros_override():
  kw = _train_kwargs(["DELETION_TARGET = 0.6", "DELETION_DELAY = 100", "DELETE_GATE_LAYER = 2"])
  assert (_value(kw["deletion_target"]), _value(kw["deletion_delay"])) == (0.6, 100)
  assert _value(kw["model_config"]).delete_gate_layer == 2
