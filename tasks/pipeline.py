"""From a task name to model-ready batches: seqio feature converters, sharding, empty checks.

The model features are seqio's (T5X's): `encoder_input_tokens`, `decoder_target_tokens`,
`decoder_input_tokens`, `decoder_loss_weights`, with `*_segment_ids` / `*_positions` when packed,
and `decoder_causal_attention` for prefix LMs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

from tasks import registry

FEATURE_CONVERTERS = {
  "encoder_decoder": seqio.EncDecFeatureConverter,  # inputs -> encoder, targets -> decoder
  "decoder_only": seqio.DecoderFeatureConverter,  # targets only (LM)
  "prefix_lm": seqio.PrefixLMFeatureConverter,  # inputs + targets in one decoder sequence
}


class EmptyDatasetError(ValueError):
  pass


def feature_converter(kind: str = "encoder_decoder", pack: bool = True) -> seqio.FeatureConverter:
  try:
    return FEATURE_CONVERTERS[kind](pack=pack)
  except KeyError:
    raise ValueError(
      f"unknown feature converter {kind!r}; choose one of {sorted(FEATURE_CONVERTERS)}"
    ) from None


def get_dataset(
  name: str,
  split: str,
  task_feature_lengths: Mapping[str, int],
  batch_size: int | None,
  converter: str = "encoder_decoder",
  pack: bool = True,
  shuffle: bool = True,
  seed: int | None = 0,
  num_epochs: int | None = None,
  shard_info: seqio.ShardInfo | None = None,
  try_in_mem_cache: bool = True,
  drop_remainder: bool = True,
) -> tf.data.Dataset:
  """Batches of model features for a task or mixture (`num_epochs=None`: repeat forever).

  With `shard_info` each host reads its own shard and `batch_size` is the per-host batch.
  Training wants full batches (`drop_remainder`); an evaluation over a finite split passes
  `num_epochs=1, drop_remainder=False` to see every example.
  Unknown names and splits are refused here, with the close names. `try_in_mem_cache=False`
  skips seqio's size lookup (needed under `tfds.testing.mock_data`, which has no split sizes).
  """
  provider = registry.get(name)
  if split not in provider.splits:
    raise ValueError(f"{name!r} has no split {split!r}; it has {sorted(provider.splits)}")
  lengths = dict(task_feature_lengths)
  # What seqio.get_dataset does, with try_in_mem_cache exposed.
  dataset = provider.get_dataset(
    lengths,
    split=split,
    use_cached=False,
    shuffle=shuffle,
    seed=seed,
    shard_info=shard_info,
    num_epochs=num_epochs,
    try_in_mem_cache=try_in_mem_cache,
  )
  dataset = feature_converter(converter, pack)(dataset, lengths)
  if batch_size:
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  return dataset.prefetch(tf.data.AUTOTUNE)


def empty_message(what: str) -> str:
  return (
    f"{what} yielded no examples: its source is empty or every example was filtered out "
    f"(empty text, or a split with no data for this language)."
  )


def as_numpy(dataset: tf.data.Dataset, what: str) -> Iterator[dict[str, np.ndarray]]:
  """Iterates numpy batches; a dataset that yields nothing at all is an error naming `what`."""
  iterator = dataset.as_numpy_iterator()
  try:
    first = next(iterator)
  except StopIteration:
    raise EmptyDatasetError(empty_message(what)) from None
  yield first
  yield from iterator
