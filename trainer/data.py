"""Batches for the loop: a resumable training stream and padded evaluation batches, each host
reading its own shard and the loop assembling global arrays.

The training stream is deterministic for a given (task, lengths, batch size, seed, host count):
seqio shuffles with a fixed seed and tf.data keeps order. Its position is saved with every
checkpoint in two forms: the number of batches consumed (in `data_state`), and each process's
tf.data iterator checkpoint (its shuffle buffers, sampling coins, packing state, prefetched
batches: `iterator_state()`, stored by `checkpoints.Checkpointer` as
`<step>/data_iterator/process_<i>.*`). A resumed run restores the iterator, so it sees exactly the
batches the uninterrupted run would have seen, in a time that does not grow with the step
(README, Benchmarks: `python -m bench.resume`).

Fallbacks, each announced by one warning line:
  - the checkpoint has no iterator state (saved before xt5 stored it, or a pipeline tf.data
    cannot checkpoint: one with a stateful op such as `tf.py_function` in a preprocessor), or it
    no longer fits the pipeline (the task's code changed): the stream replays the batches
    consumed, reading them again (~1000 packed rows/s per host on 2 CPU cores; exact);
  - the process count changed: each process's shard of the data is a different one, so neither
    its iterator nor an exact replay exists. Each new process skips, by replaying, as many
    batches of its new shard as the checkpoint consumed: every shard is then at the same
    fraction of its epoch as the old ones were, so no data is read twice early, but the batches
    differ from an uninterrupted run's and the replay takes the old time;
  - anything else about the data changed (task, lengths, batch size, seed, packing): the new
    stream starts from its beginning.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import seqio
import tensorflow as tf
from jax.experimental import multihost_utils

import tasks

log = logging.getLogger(__name__)


def drop_known_seqio_notes(record: logging.LogRecord) -> bool:
  """seqio warns on every packed dataset that `*_pretokenized` strings are dropped, and that
  evaluation lengths *may* truncate; neither tells a user anything."""
  text = record.getMessage()
  return not text.startswith(
    (
      "Features not in `features_length` will be removed",
      "Given sequence lengths *may be* insufficient",
    )
  )


def shard_info() -> seqio.ShardInfo | None:
  """This process's shard of every dataset (None on one process)."""
  if jax.process_count() == 1:
    return None
  return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


def per_host_batch_size(global_batch_size: int) -> int:
  n = jax.process_count()
  if global_batch_size % n:
    raise ValueError(
      f"BATCH_SIZE={global_batch_size} is not divisible by the {n} processes; use a multiple of {n}"
    )
  return global_batch_size // n


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """What a stream of batches is: T5X's DatasetConfig, minus caching."""

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str = "train"
  batch_size: int = 128  # global, over all processes
  converter: str | None = "encoder_decoder"  # None: the model's (trainer.mesh.model_converter)
  pack: bool = True
  shuffle: bool = True
  seed: int = 0

  def fingerprint(self) -> dict:
    """What must match for a saved data position to mean the same batches."""
    d = dataclasses.asdict(self)
    d["task_feature_lengths"] = dict(self.task_feature_lengths)
    d["num_processes"] = jax.process_count()
    return d


class TrainStream:
  """Endless host-local numpy batches with a checkpointable position.

  `iterator_state` ({suffix: bytes} from `iterator_state()`) restores the tf.data iterator at
  `start_batch` batches consumed; without it the stream replays (skips) `start_batch` batches."""

  def __init__(
    self,
    config: DatasetConfig,
    start_batch: int = 0,
    iterator_state: Mapping[str, bytes] | None = None,
  ):
    self.config = config
    self._what = f"{config.mixture_or_task_name}/{config.split}"
    ds = tasks.get_dataset(
      config.mixture_or_task_name,
      config.split,
      config.task_feature_lengths,
      per_host_batch_size(config.batch_size),
      converter=config.converter,
      pack=config.pack,
      shuffle=config.shuffle,
      seed=config.seed,
      num_epochs=None,
      shard_info=shard_info(),
    )
    if start_batch and not iterator_state:
      log.info("replaying the %d batches the checkpoint has consumed", start_batch)
      ds = ds.skip(start_batch)
    self._iterator = iter(ds)
    if iterator_state:
      _read_iterator(self._iterator, iterator_state)
    self.batches_consumed = self._started_at = start_batch
    self._checkpointable = True

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      batch = next(self._iterator)
    except StopIteration:
      if self.batches_consumed == self._started_at:
        raise tasks.EmptyDatasetError(tasks.pipeline.empty_message(self._what)) from None
      raise
    self.batches_consumed += 1
    return {k: v.numpy() for k, v in batch.items()}

  def state(self) -> dict:
    return {"batches_consumed": self.batches_consumed, "dataset": self.config.fingerprint()}

  def iterator_state(self) -> dict[str, bytes] | None:
    """This process's tf.data iterator checkpoint at the batches consumed so far, as
    {file suffix: bytes}; None (with one warning per stream) when the pipeline cannot be
    checkpointed, whose resume then replays."""
    if not self._checkpointable:
      return None
    try:
      return _write_iterator(self._iterator)
    except (tf.errors.OpError, ValueError, TypeError) as e:
      self._checkpointable = False
      log.warning(
        "%s: tf.data cannot checkpoint this input pipeline (%s); checkpoints store only the "
        "number of batches consumed, and a resume replays them",
        self._what,
        _first_line(e, 300),
      )
      return None

  @staticmethod
  def start_batch(saved: Mapping[str, Any] | None, config: DatasetConfig) -> tuple[int, str]:
    """(batches to skip, a note) for resuming from a checkpoint's data state by replay."""
    if not saved:
      return 0, ""
    if _same_data_but_processes(saved.get("dataset"), config.fingerprint()):
      n = int(saved["batches_consumed"])
      return n, (
        f"the process count changed since the checkpoint ({saved['dataset']['num_processes']} "
        f"-> {jax.process_count()}): each process now reads another shard of the data, so the "
        f"stream cannot continue exactly; each process replays {n} batches of its new shard "
        "(every shard at the fraction of its epoch the old ones reached; this takes as long as "
        "reading them)"
      )
    if saved.get("dataset") != config.fingerprint():
      return 0, (
        "the training data changed since the checkpoint (task, lengths, batch size, "
        "seed or packing): starting the new data stream from its beginning"
      )
    return int(saved["batches_consumed"]), ""

  @classmethod
  def resume(
    cls,
    config: DatasetConfig,
    saved: Mapping[str, Any] | None,
    iterator_state: Mapping[str, bytes] | None,
  ) -> tuple[TrainStream, str]:
    """(the stream at a checkpoint's data position, a note for the log or ""): the saved
    iterator when the checkpoint has one for this data and process count, else the fallbacks
    of the module docstring."""
    skip, note = cls.start_batch(saved, config)
    if not skip or note:
      return cls(config, skip), note
    if iterator_state:
      try:
        return cls(config, skip, iterator_state), ""
      except (tf.errors.OpError, ValueError) as e:
        note = (
          f"the checkpoint's input-pipeline state does not fit this pipeline ("
          f"{_first_line(e, 200)}); replaying the {skip} batches it consumed instead"
        )
    else:
      note = (
        "the checkpoint has no input-pipeline state (saved before xt5 stored it, or the "
        f"pipeline cannot be checkpointed); replaying the {skip} batches it consumed"
      )
    return cls(config, skip), note


def _same_data_but_processes(saved: Mapping[str, Any] | None, now: Mapping[str, Any]) -> bool:
  if not saved or saved.get("num_processes") == now["num_processes"]:
    return False
  return {**saved, "num_processes": now["num_processes"]} == now


def _first_line(e: BaseException, limit: int) -> str:
  lines = str(e).strip().splitlines()
  return lines[0][:limit] if lines else type(e).__name__


def _remove(prefix: str) -> None:
  for path in tf.io.gfile.glob(prefix + ".*"):  # the RAM file system has no directories
    tf.io.gfile.remove(path)


def _write_iterator(iterator) -> dict[str, bytes]:
  """A tf.data iterator's checkpoint, written to TensorFlow's in-memory file system."""
  prefix = f"ram://xt5_iterator/{uuid.uuid4().hex}/it"
  try:
    tf.train.Checkpoint(iterator=iterator).write(prefix)
    return {
      os.path.basename(path)[len("it.") :]: tf.io.gfile.GFile(path, "rb").read()
      for path in tf.io.gfile.glob(prefix + ".*")
    }
  finally:
    _remove(prefix)


def _read_iterator(iterator, files: Mapping[str, bytes]) -> None:
  """Restores `iterator` from `_write_iterator`'s files."""
  prefix = f"ram://xt5_iterator/{uuid.uuid4().hex}/it"
  try:
    for suffix, blob in files.items():
      with tf.io.gfile.GFile(f"{prefix}.{suffix}", "wb") as f:
        f.write(blob)
    tf.train.Checkpoint(iterator=iterator).read(prefix).assert_consumed()
  finally:
    _remove(prefix)


def global_batch(local: Mapping[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """Global arrays from each process's rows (the batch dimension spans the processes)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def replicated_batch(full: Mapping[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """Global arrays from a batch every process holds in full (evaluation/inference)."""
  return {
    k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
    for k, v in full.items()
  }


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-process) global array on every process."""
  if jax.process_count() == 1 or x.is_fully_replicated:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def pad_batch(features: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """`features` with zero rows appended up to `batch_size` rows."""
  out = {}
  for name, x in features.items():
    x = np.asarray(x)
    if len(x) > batch_size:
      raise ValueError(f"feature {name!r} has {len(x)} rows, more than the batch size {batch_size}")
    pad = np.zeros((batch_size - len(x), *x.shape[1:]), x.dtype)
    out[name] = np.concatenate([x, pad]) if len(pad) else x
  return out


def eval_batches(
  name: str,
  split: str,
  task_feature_lengths: Mapping[str, int],
  batch_size: int,
  converter: str = "encoder_decoder",
  pack: bool = True,
  max_batches: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over a finite split in full batches of `batch_size` (the last one zero-padded),
  every process reading all of it (the loop shards each batch over the mesh)."""
  ds = tasks.get_dataset(
    name,
    split,
    task_feature_lengths,
    batch_size,
    converter=converter,
    pack=pack,
    shuffle=False,
    num_epochs=1,
    drop_remainder=False,
  )
  for i, batch in enumerate(tasks.as_numpy(ds, f"{name}/{split}")):
    if max_batches is not None and i >= max_batches:
      return
    yield pad_batch(batch, batch_size)
