"""T5's unsupervised objectives as seqio preprocessors: span corruption, prefix LM, plain LM.

Written from the semantics described in the T5 paper (Raffel et al., 2020, §3.1.4) and its
reference data pipeline; the `t5` package is not a dependency. A token stream is cut into
fixed-length pieces; in each piece about `noise_density` of the tokens, in spans whose lengths
average `mean_noise_span_length`, are noise:

  tokens   a b c d e f g h          (noise: c d, g)
  inputs   a b <S0> e f <S1> h      one sentinel per noise span, in place of the span
  targets  <S0> c d <S1> g <S2>     the non-noise runs become sentinels: each noise span
                                    follows the sentinel that stands for it

Sentinels count down from `vocab_size - 1` (`<extra_id_0>` in mT5's vocabulary, byte 0xFF for
ByT5, which never occurs in UTF-8). Randomness comes from seqio's per-example stateless seeds, so
a dataset is a pure function of `get_dataset(seed=...)`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import seqio
import tensorflow as tf

# T5's defaults: max chunk per document, documents concatenated per batch before splitting.
MAX_CHUNK_TOKENS = 65536
CONCAT_BATCH_SIZE = 128
# ByT5's mean noise span, in bytes (the ByT5 paper; T5's is the 3 tokens of the default).
BYT5_MEAN_NOISE_SPAN = 20.0


def random_spans_helper(
  inputs_length: int,
  noise_density: float = 0.15,
  mean_noise_span_length: float = 3.0,
) -> tuple[int, int]:
  """Raw tokens per piece and the targets length, for a wanted inputs length (EOS included).

  The largest raw length whose corrupted inputs (non-noise tokens + one sentinel per span + EOS)
  still fit `inputs_length`: 512 -> (568, 114); 1024 -> (1137, 229); ByT5's 1024 with span 20
  -> (1193, 189).
  """

  def corrupted_lengths(tokens_length: int) -> tuple[int, int]:
    num_noise, num_spans = noise_counts(tokens_length, noise_density, mean_noise_span_length)
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

  tokens_length = inputs_length - 1
  while corrupted_lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  return tokens_length, corrupted_lengths(tokens_length)[1]


def noise_counts(
  tokens_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
  """(noise tokens, noise spans) of a piece of `tokens_length`, as `random_spans_noise_mask`
  counts them: the same float32 arithmetic, rounding (half to even) and clamps, so lengths
  promised from these are the lengths produced (float64 differs at some lengths, e.g. 640)."""
  num_noise = int(np.round(np.float32(tokens_length) * np.float32(noise_density)))
  num_noise = min(max(num_noise, 1), tokens_length - 1)
  num_spans = max(int(np.round(np.float32(num_noise) / np.float32(mean_noise_span_length))), 1)
  return num_noise, num_spans


def available_sentinels(vocabulary: seqio.Vocabulary) -> int | None:
  """How many ids from the top can be sentinels without colliding with real tokens."""
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return 11  # bytes 0xF5..0xFF never occur in UTF-8
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return vocabulary.extra_ids
  return None  # unknown vocabulary: the caller knows its layout


def _stateless_shuffle(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  return tf.gather(x, tf.argsort(tf.random.stateless_uniform(tf.shape(x), seed=seed)))


def _random_segmentation(
  num_items: tf.Tensor, num_segments: tf.Tensor, seed: tf.Tensor
) -> tf.Tensor:
  """Lengths of `num_segments` random non-empty segments that add up to `num_items`."""
  first_in_segment = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
  first_in_segment = tf.pad(_stateless_shuffle(first_in_segment, seed), [[1, 0]])
  segment_id = tf.cumsum(first_in_segment)
  return tf.math.unsorted_segment_sum(tf.ones_like(segment_id), segment_id, num_segments)


def random_spans_noise_mask(
  length: tf.Tensor,
  noise_density: float,
  seeds: tuple[tf.Tensor, tf.Tensor],
  mean_noise_span_length: float,
) -> tf.Tensor:
  """Boolean [length] mask: alternating non-noise / noise spans, starting with non-noise.

  round(length * noise_density) noise tokens (at least 1, at most length - 1) in
  round(num_noise / mean_noise_span_length) spans (at least 1); both the noise and non-noise
  tokens are cut into that many spans at random points. Rounding is TF's (half to even).
  """
  orig_length = length
  length = tf.maximum(length, 2)
  num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, length - 1)
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32)
  num_spans = tf.maximum(num_spans, 1)
  noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
  nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, seeds[1])
  span_lengths = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
  span_starts = tf.cumsum(span_lengths)[:-1]
  is_span_start = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts, length)
  is_noise = tf.equal(tf.cumsum(is_span_start) % 2, 1)
  return is_noise[:orig_length]


def random_prefix_noise_mask(length: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Noise = a suffix: the split point is uniform in [1, length - 1] (T5's prefix LM)."""
  num_prefix = tf.random.stateless_uniform(
    [], minval=1, maxval=tf.maximum(length, 2), dtype=tf.int32, seed=seed
  )
  return tf.range(length) >= num_prefix


def spans_to_sentinels(tokens: tf.Tensor, span_mask: tf.Tensor, vocab_size: int) -> tf.Tensor:
  """Replaces each run of masked tokens by one sentinel, counting down from vocab_size - 1."""
  previous_masked = tf.pad(span_mask[:-1], [[1, 0]])
  first_in_span = tf.logical_and(span_mask, tf.logical_not(previous_masked))
  rest_of_span = tf.logical_and(span_mask, previous_masked)
  sentinels = vocab_size - tf.cumsum(tf.cast(first_in_span, tokens.dtype))
  tokens = tf.where(first_in_span, sentinels, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(rest_of_span))


@seqio.map_over_dataset(num_seeds=1)
def select_random_chunk(
  features, seed, feature_key: str = "targets", max_length: int = MAX_CHUNK_TOKENS
):
  """One random `max_length`-aligned chunk of a (possibly huge) document."""
  tokens = features[feature_key]
  num_tokens = tf.shape(tokens)[0]
  num_chunks = (num_tokens + max_length - 1) // max_length
  start = max_length * tf.random.stateless_uniform(
    [], maxval=tf.maximum(num_chunks, 1), dtype=tf.int32, seed=seed
  )
  return {feature_key: tokens[start : tf.minimum(start + max_length, num_tokens)]}


def concat_documents(
  dataset: tf.data.Dataset, feature_key: str = "targets", batch_size: int = CONCAT_BATCH_SIZE
) -> tf.data.Dataset:
  """Concatenates every `batch_size` documents into one token stream (no padding waste)."""
  dataset = dataset.padded_batch(batch_size, padded_shapes={feature_key: [-1]})

  def flatten(x):
    tokens = tf.reshape(x[feature_key], [-1])
    return {feature_key: tf.boolean_mask(tokens, tf.not_equal(tokens, 0))}  # 0 = pad

  return dataset.map(flatten, num_parallel_calls=tf.data.AUTOTUNE)


def split_tokens(
  dataset: tf.data.Dataset, max_tokens: int, feature_key: str = "targets"
) -> tf.data.Dataset:
  """Cuts each token stream into pieces of `max_tokens` (the last one shorter)."""

  def split(x):
    tokens = x[feature_key]
    num_tokens = tf.shape(tokens)[0]
    num_pieces = (num_tokens + max_tokens - 1) // max_tokens
    padded = tf.pad(tokens, [[0, num_pieces * max_tokens - num_tokens]])
    lengths = tf.minimum(max_tokens, num_tokens - tf.range(num_pieces) * max_tokens)
    return {feature_key: tf.reshape(padded, [num_pieces, max_tokens]), "_length": lengths}

  dataset = dataset.map(split, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
  return dataset.map(
    lambda x: {feature_key: x[feature_key][: x["_length"]]}, num_parallel_calls=tf.data.AUTOTUNE
  )


def _drop_empty(dataset: tf.data.Dataset, feature_key: str = "targets") -> tf.data.Dataset:
  return dataset.filter(lambda x: tf.size(x[feature_key]) > 0)


@seqio.map_over_dataset(num_seeds=2)
def _corrupt_spans(
  features, seeds, vocab_size: int, noise_density: float, mean_noise_span_length: float
):
  tokens = features["targets"]
  noise = random_spans_noise_mask(tf.size(tokens), noise_density, seeds, mean_noise_span_length)
  return {
    "inputs": spans_to_sentinels(tokens, noise, vocab_size),
    "targets": spans_to_sentinels(tokens, tf.logical_not(noise), vocab_size),
  }


def span_corruption(
  dataset: tf.data.Dataset,
  sequence_length: Mapping[str, int],
  output_features: Mapping[str, seqio.Feature],
  noise_density: float = 0.15,
  mean_noise_span_length: float = 3.0,
) -> tf.data.Dataset:
  """T5's span corruption on tokenized `targets` documents -> `inputs` / `targets` (no EOS yet).

  Follow with `seqio.preprocessors.append_eos_after_trim`. The pieces are sized with
  `random_spans_helper` so the inputs fill `sequence_length["inputs"]` exactly; a targets
  length too short for that is refused rather than silently truncating the spans.
  """
  raw_length, targets_length = random_spans_helper(
    sequence_length["inputs"], noise_density, mean_noise_span_length
  )
  vocabulary = output_features["targets"].vocabulary
  _, spans = noise_counts(raw_length, noise_density, mean_noise_span_length)
  sentinels = available_sentinels(vocabulary)
  if sentinels is not None and spans > sentinels:
    raise ValueError(
      f"span corruption of {raw_length}-token pieces makes {spans} noise spans, but the "
      f"vocabulary has only {sentinels} sentinel ids; later sentinels would collide with "
      f"real tokens. Use shorter inputs, a longer mean noise span, or more extra ids."
    )
  if sequence_length.get("targets", targets_length) < targets_length:
    raise ValueError(
      f"span corruption with inputs length {sequence_length['inputs']}, noise density "
      f"{noise_density} and mean span {mean_noise_span_length} makes targets of "
      f"{targets_length} tokens, but the targets length is {sequence_length['targets']}; "
      f"set TASK_FEATURE_LENGTHS targets to at least {targets_length}."
    )
  dataset = select_random_chunk(_drop_empty(dataset))
  dataset = split_tokens(concat_documents(dataset), raw_length)
  return _corrupt_spans(
    dataset,
    vocab_size=vocabulary.vocab_size,
    noise_density=noise_density,
    mean_noise_span_length=mean_noise_span_length,
  )


@seqio.map_over_dataset(num_seeds=1)
def _split_prefix(features, seed):
  tokens = features["targets"]
  is_target = random_prefix_noise_mask(tf.size(tokens), seed)
  return {
    "inputs": tf.boolean_mask(tokens, tf.logical_not(is_target)),
    "targets": tf.boolean_mask(tokens, is_target),
  }


def prefix_lm(dataset: tf.data.Dataset, sequence_length: Mapping[str, int]) -> tf.data.Dataset:
  """Prefix LM: pieces of `inputs` length, each split at a uniform random point into a prefix
  (`inputs`, attended bidirectionally by a prefix-LM decoder) and the rest (`targets`)."""
  if sequence_length["targets"] < sequence_length["inputs"]:
    raise ValueError(
      f"prefix LM cuts {sequence_length['inputs']}-token pieces at a random point, so the "
      f"targets can be that long; a targets length of {sequence_length['targets']} would "
      f"truncate them. Set TASK_FEATURE_LENGTHS targets >= inputs (T5 uses equal lengths)."
    )
  dataset = select_random_chunk(_drop_empty(dataset))
  dataset = split_tokens(concat_documents(dataset), sequence_length["inputs"])
  return _split_prefix(dataset)


def lm(dataset: tf.data.Dataset, sequence_length: Mapping[str, int]) -> tf.data.Dataset:
  """Plain LM for decoder-only models: `targets` pieces of the targets length (minus EOS)."""
  dataset = select_random_chunk(_drop_empty(dataset))
  return split_tokens(concat_documents(dataset), sequence_length["targets"] - 1)
