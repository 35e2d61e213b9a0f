"""`prepare()`'s lock: concurrent callers (e.g. pytest-xdist workers) wait for each other."""

import fcntl
import threading

import pytest

import tasks.corpora as corpora


def test_prepare_waits_for_the_lock(tmp_path, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # once it runs, the fetch fails at once
  outcome = {}

  def run():
    try:
      corpora.prepare(tmp_path, progress=False)
    except corpora.CorpusFetchError as e:
      outcome["error"] = e

  with open(tmp_path / ".prepare.lock", "w") as held:
    fcntl.flock(held, fcntl.LOCK_EX)
    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=0.5)
    assert worker.is_alive() and not outcome  # blocked on the lock, nothing fetched
    fcntl.flock(held, fcntl.LOCK_UN)
  worker.join(timeout=30)
  assert not worker.is_alive()
  assert "is not on PATH" in str(outcome["error"])
  assert not corpora.is_prepared(tmp_path)
  with pytest.raises(corpora.CorpusNotPreparedError):
    corpora.require_prepared("test", tmp_path)
