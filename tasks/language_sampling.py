"""mT5's language sampling (p(l) ∝ n_l ** alpha) inside one tf.data pipeline.

A seqio Mixture builds one preprocessing pipeline per task, too slow to start over the ~480
languages of the built-in corpus (README, Benchmarks). Here every language's documents come from one
stream instead, and each document of language l is emitted c_l ∝ n_l ** alpha / m_l times in
expectation (floor(c_l) copies plus one more with probability frac(c_l)), where n_l counts the
language's documents (mT5's n) and m_l is its total size in the unit the model consumes (characters,
for text; documents, if all are alike). Language l then makes up n_l ** alpha of the stream, in that
unit — as in a seqio mixture, whose rates apply to the packed pieces it samples, which are tokens.
The scale makes a pass emit as many documents as it reads, so small languages are repeated and large
ones thinned rather than almost everything read being dropped; a shuffle buffer spreads the copies.

Pieces are cut from the concatenated stream (T5 concatenates documents before splitting), so a
piece may straddle two documents of different languages, which per-language mixture tasks avoid.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

_COIN_SEED_OFFSET = 7919  # keeps the copy coins apart from seqio's per-example map seeds
COPY_SHUFFLE_BUFFER = 10_000  # documents; spreads a small language's copies apart


def check_alpha(alpha: float) -> None:
  if not 0 < alpha <= 1:
    raise ValueError(f"language sampling exponent alpha must be in (0, 1], got {alpha}")


def language_rates(sizes: Mapping[str, int], alpha: float) -> dict[str, float]:
  """Each language's share of the sampled stream: n ** alpha, normalised."""
  weights = {lang: n**alpha for lang, n in sizes.items()}
  total = sum(weights.values())
  return {lang: w / total for lang, w in weights.items()}


def copies_per_document(
  sizes: Mapping[str, int], alpha: float, mass: Mapping[str, float] | None = None
) -> dict[str, float]:
  """Expected copies of each document of language l: ∝ n_l ** alpha / mass_l (mass defaults to
  n), scaled so that a pass over all documents emits as many as it reads."""
  check_alpha(alpha)
  mass = sizes if mass is None else mass
  empty = [lang for lang in sizes if sizes[lang] <= 0 or mass[lang] <= 0]
  if empty:
    raise ValueError(f"languages with no documents cannot be sampled: {', '.join(empty)}")
  raw = {lang: n**alpha / mass[lang] for lang, n in sizes.items()}
  scale = sum(sizes.values()) / sum(sizes[lang] * raw[lang] for lang in sizes)
  return {lang: float(scale * r) for lang, r in raw.items()}


def sample_languages(
  documents: tf.data.Dataset,
  sizes: Mapping[str, int],
  alpha: float,
  seed: int | None,
  shuffle: bool = True,
  mass: Mapping[str, float] | None = None,
  lang_key: str = "lang",
) -> tf.data.Dataset:
  """An endless stream of `documents` (one pass = every language's documents) resampled so
  that language l's share of `mass` is ∝ n_l ** alpha.

  Each pass is reshuffled (from `seed`) and the copy counts come from a seeded random stream,
  so the result is a pure function of `seed` (`None`: nondeterministic, as in seqio).
  """
  copies = copies_per_document(sizes, alpha, mass)
  table = tf.lookup.StaticHashTable(
    tf.lookup.KeyValueTensorInitializer(
      tf.constant(list(copies), tf.string), tf.constant(list(copies.values()), tf.float32)
    ),
    default_value=0.0,  # a language outside `sizes` is never emitted
  )
  if shuffle:
    documents = documents.shuffle(sum(sizes.values()), seed=seed, reshuffle_each_iteration=True)
  documents = documents.repeat()
  coin_seed = seed + _COIN_SEED_OFFSET if seed is not None else int(np.random.randint(2**31))

  def repeated(example, coin):
    expected = table.lookup(example[lang_key])
    uniform = tf.cast(coin % (1 << 24), tf.float32) / float(1 << 24)
    count = tf.floor(expected) + tf.cast(uniform < expected - tf.floor(expected), tf.float32)
    return tf.data.Dataset.from_tensors(example).repeat(tf.cast(count, tf.int64))

  stream = tf.data.Dataset.zip((documents, tf.data.Dataset.random(seed=coin_seed)))
  stream = stream.flat_map(repeated)
  if shuffle:
    stream = stream.shuffle(COPY_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
  return stream
