"""Batches for the loop: a resumable training stream and padded evaluation batches, each host
reading its own shard and the loop assembling global arrays.

The training stream is deterministic for a given (task, lengths, batch size, seed, host count):
seqio shuffles with a fixed seed and tf.data keeps order. Its position is the number of batches
consumed, stored in every checkpoint; a resumed run skips that many batches, so it sees exactly
the batches the uninterrupted run would have seen. Skipping replays the input pipeline without
the model (~1000 packed rows/s per host on 2 CPU cores): seconds for the quickstart, but hours
for a resume deep into a large run, where checkpointing the tf.data iterator itself would be
the way (not built: seqio mixtures over generator sources cannot be checkpointed that way).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import seqio
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
  """Endless host-local numpy batches with a checkpointable position."""

  def __init__(self, config: DatasetConfig, start_batch: int = 0):
    self.config = config
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
    if start_batch:
      log.info("skipping the %d batches the checkpoint has consumed", start_batch)
      ds = ds.skip(start_batch)
    self._iterator = tasks.as_numpy(ds, f"{config.mixture_or_task_name}/{config.split}")
    self.batches_consumed = start_batch

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    self.batches_consumed += 1
    return batch

  def state(self) -> dict:
    return {"batches_consumed": self.batches_consumed, "dataset": self.config.fingerprint()}

  @staticmethod
  def start_batch(saved: Mapping[str, Any] | None, config: DatasetConfig) -> tuple[int, str]:
    """(batches to skip, a note) for resuming from a checkpoint's data state."""
    if not saved:
      return 0, ""
    if saved.get("dataset") != config.fingerprint():
      return 0, (
        "the training data changed since the checkpoint (task, lengths, batch size, "
        "seed or process count): starting the new data stream from its beginning"
      )
    return int(saved["batches_consumed"]), ""


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
