"""Training stream and evaluation batches (trainer/data.py)."""

import numpy as np
import pytest

import tests.copy_tasks  # noqa: F401  (registers test_copy)
from trainer import data

CONFIG = data.DatasetConfig("test_copy", {"inputs": 32, "targets": 32}, batch_size=4, seed=7)


def _take(stream, n):
  return [next(stream) for _ in range(n)]


def test_resumed_stream_sees_exactly_the_remaining_batches():
  straight = _take(data.TrainStream(CONFIG), 7)
  first = data.TrainStream(CONFIG)
  _take(first, 3)
  saved = first.state()
  assert saved["batches_consumed"] == 3
  skip, note = data.TrainStream.start_batch(saved, CONFIG)
  assert (skip, note) == (3, "")
  resumed = _take(data.TrainStream(CONFIG, skip), 4)
  for a, b in zip(straight[3:], resumed):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_changed_data_config_restarts_the_stream_with_a_note():
  saved = data.TrainStream(CONFIG).state()
  saved["batches_consumed"] = 5
  other = data.DatasetConfig("test_copy", {"inputs": 32, "targets": 32}, batch_size=4, seed=8)
  skip, note = data.TrainStream.start_batch(saved, other)
  assert skip == 0 and "training data changed" in note
  assert data.TrainStream.start_batch(None, CONFIG) == (0, "")


def test_eval_batches_cover_the_split_once_zero_padded():
  n = len(tests.copy_tasks.TEXTS["validation"])  # 12 examples, batches of 5
  batches = list(
    data.eval_batches("test_copy", "validation", {"inputs": 32, "targets": 32}, 5, pack=False)
  )
  assert [len(b["encoder_input_tokens"]) for b in batches] == [5, 5, 5]
  rows = np.concatenate([b["decoder_target_tokens"] for b in batches])
  assert (rows.sum(axis=1) > 0).sum() == n and not rows[n:].any()
  capped = list(
    data.eval_batches(
      "test_copy", "validation", {"inputs": 32, "targets": 32}, 5, pack=False, max_batches=1
    )
  )
  assert len(capped) == 1


def test_per_host_batch_size(monkeypatch):
  assert data.per_host_batch_size(8) == 8
  monkeypatch.setattr(data.jax, "process_count", lambda: 3)
  with pytest.raises(ValueError, match="not divisible by the 3 processes"):
    data.per_host_batch_size(8)


def test_hosts_read_disjoint_shards_that_cover_the_data(monkeypatch):
  """Two processes (patched) each read their own rows; together, the one-process rows."""
  config = data.DatasetConfig(
    "test_copy", {"inputs": 32, "targets": 32}, batch_size=4, pack=False, shuffle=False
  )
  rows = {}
  monkeypatch.setattr(data.jax, "process_count", lambda: 2)
  for i in range(2):
    monkeypatch.setattr(data.jax, "process_index", lambda i=i: i)
    batches = _take(data.TrainStream(config), 64)  # 128 rows: one pass over half of 256
    rows[i] = {tuple(r) for b in batches for r in b["encoder_input_tokens"]}
  assert rows[0] and rows[1] and not rows[0] & rows[1]
  assert len(rows[0] | rows[1]) == len(tests.copy_tasks.TEXTS["train"])
