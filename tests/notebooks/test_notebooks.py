"""Every notebook in notebooks/ runs top to bottom with its small settings (XT5_NOTEBOOK_SMALL=1).

The notebooks assert what they show (identical losses across layouts, logits that match, ...),
so a green run here means their claims held, not only that no cell raised.
"""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED = {"quickstart", "data", "sharding", "checkpoints", "byte_models"}


def test_every_notebook_is_here():
  assert EXPECTED <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, (
        f"{path.name} has committed outputs; clear them (Jupyter: Edit > Clear Outputs "
        f"of All Cells) before committing"
      )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
  # The kernel inherits this environment: small settings, a scratch directory, a headless
  # plot backend, and no fake devices (a notebook that wants them sets XLA_FLAGS itself).
  monkeypatch.setenv("XT5_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("XT5_NOTEBOOK_DIR", str(tmp_path))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  flags = os.environ.get("XLA_FLAGS", "").split()
  monkeypatch.setenv(
    "XLA_FLAGS",
    " ".join(f for f in flags if not f.startswith("--xla_force_host_platform_device_count")),
  )
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(
    nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}
  )
  client.execute()
