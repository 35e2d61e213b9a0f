"""Training stream and evaluation batches (trainer/data.py)."""

import functools

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import tasks
import tests.copy_tasks  # noqa: F401  (registers test_copy)
from tasks import language_sampling, registry
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


# Resume from the saved tf.data iterator (TrainStream.iterator_state), not by replay.


def _assert_same_batches(want, got):
  assert len(want) == len(got)
  for a, b in zip(want, got):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def _resumed_equals_uninterrupted(config, consumed=6, after=4):
  """The stream restored from its iterator after `consumed` batches yields the batches the
  uninterrupted stream yields next; returns the restored stream."""
  first = data.TrainStream(config)
  _take(first, consumed)
  saved, files = first.state(), first.iterator_state()
  assert files and sum(map(len, files.values())) > 0
  want = _take(first, after)
  resumed, note = data.TrainStream.resume(config, saved, files)
  assert note == "" and resumed.batches_consumed == consumed
  _assert_same_batches(want, _take(resumed, after))
  return resumed


def test_iterator_resume_of_a_packed_task_is_exact():
  _resumed_equals_uninterrupted(CONFIG)


FLOOR = [0]  # the numbered source's elements below FLOOR[0] fail to read
TEXT_TO_COPY = [
  lambda ds: ds.map(lambda x: {"inputs": x["text"], "targets": x["text"]}),
  seqio.preprocessors.tokenize,
  seqio.preprocessors.append_eos_after_trim,
]
BYTE_FEATURES = {
  "inputs": seqio.Feature(tests.copy_tasks.BYTES),
  "targets": seqio.Feature(tests.copy_tasks.BYTES),
}


def _numbered_source(split, shuffle_files, seed=None):
  """Endless numbered sentences; reading one numbered below FLOOR[0] is an error (the check is
  built into the graph when the dataset is made, so each stream has its own floor)."""
  del split, shuffle_files, seed
  floor = FLOOR[0]

  def checked(i):  # a stateless check (a stateful one would stop tf.data saving the iterator)
    index = tf.where(i >= floor, 0, -1)  # gather raises InvalidArgumentError on -1
    return tf.gather(tf.constant([0], tf.int64), index) + i

  numbers = tf.data.Dataset.range(10**9).map(checked)
  return numbers.map(lambda i: {"text": tf.strings.join(["ka ", tf.strings.as_string(i), "."])})


def test_restore_reads_no_consumed_element_again():
  """A resume by iterator does not replay: it works over a source that fails to read any element
  the saved stream had read, which replay must read again."""
  name = "test_numbered_source"
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(_numbered_source, splits=["train"]),
      preprocessors=TEXT_TO_COPY,
      output_features=BYTE_FEATURES,
    )
  config = data.DatasetConfig(name, {"inputs": 32, "targets": 32}, batch_size=4, shuffle=False)
  FLOOR[0] = 0
  first = data.TrainStream(config)
  consumed = _take(first, 100)
  saved, files = first.state(), first.iterator_state()
  assert files
  want = _take(first, 3)
  # every example consumed was read, in order: the source read at least this many elements
  examples = sum(len(np.unique(row[row > 0])) for b in consumed for row in b["encoder_segment_ids"])
  assert examples > 300
  FLOOR[0] = examples
  resumed, note = data.TrainStream.resume(config, saved, files)
  assert note == ""
  _assert_same_batches(want, _take(resumed, 3))
  with pytest.raises(tf.errors.InvalidArgumentError, match="-1 is not in"):
    next(data.TrainStream(config, saved["batches_consumed"]))  # replay reads them again


@pytest.mark.usefixtures("builtin_data")
@pytest.mark.parametrize("name", ["mono", "multitask"])
def test_iterator_resume_of_builtin_streams_is_exact(name):
  """The language-sampled stream (shuffles, sampling coins, a lookup table) and the quickstart's
  mixture of it with three translation tasks, packed."""
  config = data.DatasetConfig(name, {"inputs": 64, "targets": 64}, batch_size=4, seed=1)
  _resumed_equals_uninterrupted(config, consumed=5, after=3)


def test_iterator_resume_of_a_unimax_mixture_is_exact(make_text_task, make_documents):
  sizes = {"aa": 40, "bb": 120, "cc": 400}
  names = [
    make_text_task(
      f"resume_{lang}",
      {"train": make_documents(n, seed=i, words=(2, 6))},
      TEXT_TO_COPY,
      BYTE_FEATURES,
    )
    for i, (lang, n) in enumerate(sizes.items())
  ]
  mixture = registry.add_language_mixture(
    "resume_unimax", names, language_sampling.UniMax(budget=600, max_epochs=1)
  )
  config = data.DatasetConfig(mixture.name, {"inputs": 32, "targets": 32}, batch_size=4, seed=2)
  _resumed_equals_uninterrupted(config)


def test_iterator_resume_of_a_tfds_task_is_exact(monkeypatch):
  # mock_data has no split sizes for seqio's in-memory cache decision
  monkeypatch.setattr(
    data.tasks, "get_dataset", functools.partial(tasks.get_dataset, try_in_mem_cache=False)
  )
  config = data.DatasetConfig("byt5_mc4.de", {"inputs": 64, "targets": 16}, batch_size=2, seed=0)
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    _resumed_equals_uninterrupted(config, consumed=4, after=3)


def test_missing_iterator_state_replays_with_a_note():
  first = data.TrainStream(CONFIG)
  _take(first, 3)
  want = _take(first, 2)
  resumed, note = data.TrainStream.resume(CONFIG, first.state() | {"batches_consumed": 3}, None)
  assert "no input-pipeline state" in note and "replaying the 3 batches" in note
  _assert_same_batches(want, _take(resumed, 2))


def test_iterator_state_that_does_not_fit_replays_with_a_note():
  other = data.DatasetConfig("test_copy", {"inputs": 32, "targets": 32}, batch_size=4, pack=False)
  stranger = data.TrainStream(other)
  next(stranger)
  first = data.TrainStream(CONFIG)
  _take(first, 3)
  want = _take(first, 2)
  saved = first.state() | {"batches_consumed": 3}
  resumed, note = data.TrainStream.resume(CONFIG, saved, stranger.iterator_state())
  assert "does not fit this pipeline" in note and "replaying the 3 batches" in note
  _assert_same_batches(want, _take(resumed, 2))


def test_a_new_process_count_replays_each_new_shard_with_a_note(monkeypatch):
  first = data.TrainStream(CONFIG)
  _take(first, 3)
  saved, files = first.state(), first.iterator_state()
  monkeypatch.setattr(data.jax, "process_count", lambda: 2)
  monkeypatch.setattr(data.jax, "process_index", lambda: 1)
  config = CONFIG  # the same global batch: 2 rows per process now
  resumed, note = data.TrainStream.resume(config, saved, files)
  assert "process count changed since the checkpoint (1 -> 2)" in note
  assert "replays 3 batches of its new shard" in note
  assert resumed.batches_consumed == 3
  fresh = data.TrainStream(config)
  _assert_same_batches(_take(fresh, 5)[3:], _take(resumed, 2))


def test_iterator_resume_of_a_pairs_task_is_exact(tmp_path):
  """Your own files (`tasks.pairs_task`), read through a Python generator."""
  path = tmp_path / "pairs.tsv"
  path.write_text("".join(f"in {i}\tout {i}\n" for i in range(50)))
  name = tasks.pairs_task(train=str(path), vocabulary="byt5", name="resume_pairs")
  config = data.DatasetConfig(name, {"inputs": 16, "targets": 16}, batch_size=2, seed=0)
  _resumed_equals_uninterrupted(config, consumed=3, after=20)


def test_a_pipeline_tf_data_cannot_checkpoint_stores_no_iterator(caplog):
  """A stateful op (a Python function) in a preprocessor: checkpoints keep only the count."""
  name = "test_copy_through_python"
  if name not in seqio.TaskRegistry.names():
    through_python = lambda ds: ds.map(  # noqa: E731
      lambda x: {"text": tf.ensure_shape(tf.py_function(lambda t: t, [x["text"]], tf.string), [])}
    )
    seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(_numbered_source, splits=["train"]),
      preprocessors=[through_python, *TEXT_TO_COPY],
      output_features=BYTE_FEATURES,
    )
  FLOOR[0] = 0
  config = data.DatasetConfig(name, {"inputs": 32, "targets": 32}, batch_size=2, shuffle=False)
  stream = data.TrainStream(config)
  _take(stream, 2)
  assert stream.iterator_state() is None and stream.iterator_state() is None
  assert caplog.text.count("tf.data cannot checkpoint this input pipeline") == 1
