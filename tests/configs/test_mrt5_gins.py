"""configs/models/mrt5: ByT5's shapes plus the delete gate; gate.gin adds one to any ByT5 gin."""

import dataclasses

import gin
import pytest

import configs  # noqa: F401  (gin finds the files through the package)
from models import config as model_config


@pytest.fixture(autouse=True)
def _foreign_cwd(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)


def load(files, bindings=()):
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(list(files), list(bindings))
    return gin.query_parameter("MODEL_CONFIG/gin.macro.value").scoped_configurable_fn()
  finally:
    gin.clear_config()


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large"])
def test_mrt5_is_byt5_plus_the_gate(size):
  mrt5 = load([f"configs/models/mrt5/{size}.gin"])
  byt5 = load([f"configs/models/byt5/{size}.gin"])
  gate_fields = ("delete_gate_layer", "sigmoid_mask_scale", "deletion_threshold", "use_softmax1")
  assert dataclasses.replace(mrt5, **{f: getattr(byt5, f) for f in gate_fields}) == byt5
  assert mrt5.delete_gate_layer == (1 if size == "tiny" else 3)
  assert (mrt5.sigmoid_mask_scale, mrt5.gate_threshold) == (-30.0, -15.0)
  assert mrt5.use_softmax1 and mrt5.gate_layer_norm
  assert isinstance(mrt5, model_config.T5Config)


def test_gate_gin_adds_a_gate_to_any_byt5_gin():
  cfg = load(
    ["configs/models/byt5/xl.gin", "configs/models/mrt5/gate.gin"], ["DELETE_GATE_LAYER = 5"]
  )
  assert (cfg.d_model, cfg.num_encoder_layers, cfg.delete_gate_layer) == (2560, 36, 5)
