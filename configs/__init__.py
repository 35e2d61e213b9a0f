"""Gin files, not code: `models/<family>/<size>.gin` (network shapes), later `runs/` and
`experiments/`.

Gin paths such as `include 'configs/models/mt5/_family.gin'` resolve from any working directory
through this package (gin maps `configs/models/mt5/` to the module `configs.models.mt5`), so every
folder holding gin files needs an (empty) `__init__.py`; without one gin 0.5 crashes with a
TypeError when the working directory is not the repo root.
"""

import pathlib

CONFIG_DIR = pathlib.Path(__file__).resolve().parent


def repo_root() -> pathlib.Path:
  """The folder holding `configs/`; a gin search path for entry points that want one."""
  return CONFIG_DIR.parent
