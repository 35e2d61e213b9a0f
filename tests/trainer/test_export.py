"""trainer.export: a training run's newest good params as a Hugging Face or xt5 checkpoint."""

import jax
import numpy as np
import pytest

from models import formats
from tests.test_train import TINY, final_params, run_train
from trainer import export


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  run = tmp_path_factory.mktemp("export") / "run"
  run_train(run, train_steps=2)
  return run


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_export_writes_the_runs_newest_params(run, tmp_path, capsys, fmt):
  assert export.main([str(run), str(tmp_path / fmt), "--format", fmt]) == 0
  assert formats.detect(str(tmp_path / fmt)) == fmt
  assert formats.read_config(str(tmp_path / fmt)) == TINY
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  written = formats.load_params(str(tmp_path / fmt), TINY, sharding)
  step, trained = final_params(run)
  assert step == 2
  flat_written = jax.tree_util.tree_leaves_with_path(written)
  flat_trained = dict(jax.tree_util.tree_leaves_with_path(trained))
  assert len(flat_written) == len(flat_trained)
  for path, x in flat_written:
    np.testing.assert_array_equal(np.asarray(x), flat_trained[path], err_msg=str(path))


def test_export_of_a_damaged_run_names_the_file(run, tmp_path, capsys):
  from tests.test_train import _corrupt_copy

  flipped = _corrupt_copy(run, tmp_path / "corrupt")
  assert export.main([str(tmp_path / "corrupt"), str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: no usable checkpoint") and flipped in err[-1]
  assert not (tmp_path / "out").exists()


def test_models_formats_to_hf_points_a_training_run_to_export(run, tmp_path, capsys):
  from models.formats import __main__ as formats_cli

  assert formats_cli.main(["to-hf", str(run), str(tmp_path / "hf")]) == 1
  err = capsys.readouterr().err
  assert "is a training MODEL_DIR" in err and f"python -m trainer.export {run}" in err
