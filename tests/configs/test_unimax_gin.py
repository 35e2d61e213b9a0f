"""configs/experiments/mono_unimax.gin: MIXTURE_OR_TASK_NAME is made by tasks.unimax_mixture with
a character budget that follows the run's macros."""

import gin
import pytest

import tasks
import train
from tasks import builtin, language_sampling


@pytest.fixture(autouse=True)
def _clean_gin():
  yield
  gin.clear_config()


def task_name(bindings=()):
  train.parse_gin(["configs/experiments/mono_unimax.gin"], list(bindings))
  return gin.query_parameter("MIXTURE_OR_TASK_NAME/gin.macro.value").scoped_configurable_fn()


def test_quickstart_macros_give_the_registered_mono_unimax():
  assert task_name() == "mono_unimax"
  assert gin.query_parameter("MODEL_DIR/gin.macro.value") == "runs/mono_unimax"
  assert tasks.get("mono_unimax").source.sampling == language_sampling.UniMax(
    builtin.UNIMAX_BUDGETS["mono"], 1.0
  )


def test_the_budget_follows_the_run():
  name = task_name(["TRAIN_STEPS = 2800", "tasks.unimax_mixture.max_epochs = 2.0"])
  assert name == "mono_unimax_11468800_2ep"
  assert tasks.get(name).source.sampling == language_sampling.UniMax(2800 * 16 * 128 * 2.0, 2.0)
