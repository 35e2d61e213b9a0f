"""models.formats itself: which format a path holds, and params / config read from any of them."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from models import formats
from models.formats import hf, t5x, tree, xt5
from tests.models.formats.conftest import GATED, assert_trees_equal, random_params


@pytest.fixture(scope="module")
def checkpoints_of_every_format(tmp_path_factory):
  """{kind: path} of GATED's random params in each format, and the params."""
  root = tmp_path_factory.mktemp("formats")
  params = random_params(GATED)
  xt5.save_checkpoint(str(root / "xt5"), GATED, params)
  hf.save_hf(params, GATED, str(root / "hf"))
  (root / "t5x").mkdir()
  import orbax.checkpoint as ocp

  target = t5x.params_to_t5x(params, GATED, scanned=True)
  ocp.PyTreeCheckpointer().save(str(root / "t5x" / "checkpoint_3"), {"target": target})
  paths = {"xt5": root / "xt5", "hf": root / "hf", "t5x": root / "t5x" / "checkpoint_3"}
  return {k: str(v) for k, v in paths.items()}, params


def test_detect(checkpoints_of_every_format, tmp_path):
  paths, _ = checkpoints_of_every_format
  for kind, path in paths.items():
    assert formats.detect(path) == kind
  assert formats.detect(str(tmp_path)) == "t5x"  # anything else: the T5X reader decides
  with pytest.raises(FileNotFoundError, match=f"checkpoint path {tmp_path / 'nope'} does not"):
    formats.detect(str(tmp_path / "nope"))


@pytest.mark.parametrize("kind", ["xt5", "hf", "t5x"])
def test_load_params_and_read_config_of_every_format(checkpoints_of_every_format, kind):
  paths, params = checkpoints_of_every_format
  assert formats.read_config(paths[kind]) == GATED
  scanned = GATED.replace(scan_layers=True)
  first = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  for cfg, want in ((GATED, params), (scanned, tree.stack_layers(params))):
    for shardings in (None, first, tree.sharding_tree(None, cfg)):
      got = formats.load_params(paths[kind], cfg, shardings)
      assert all(x.sharding == first for x in jax.tree.leaves(got))
      assert_trees_equal(got, want)
  with pytest.raises(tree.CheckpointMismatchError, match="wi_0"):
    formats.load_params(paths[kind], GATED.replace(d_ff=48))


def test_unreadable_path_names_what_was_expected(tmp_path):
  (tmp_path / "junk").write_bytes(np.arange(4).tobytes())
  for read in (lambda p: formats.load_params(p, GATED), formats.read_config):
    with pytest.raises(formats.UnknownFormatError) as e:
      read(str(tmp_path))
    msg = str(e.value)
    assert msg.startswith(
      f"{tmp_path} is not a checkpoint xt5 can read: expected {formats.EXPECTED}"
    )
    assert "not a T5X checkpoint directory" in msg and e.value.path == str(tmp_path)
