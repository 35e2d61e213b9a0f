"""Language sampling — mT5's p(l) ∝ n_l ** alpha, or UniMax — inside one tf.data pipeline.

UniMax (Chung et al., ICLR 2023; umT5's recipe) spreads a character budget C as evenly as it can
while no language is repeated more than N epochs: languages are visited from smallest to
largest, each takes min(what is left / languages left, N × its size), and p(l) ∝ what l took.
The tail is then read at most N times and the head shares the rest equally; n^alpha has no
such cap, and how often it repeats the tail depends on the run's length, which it ignores. A
`Sampling` is either an alpha (a float) or a `UniMax(budget, max_epochs)`.

A seqio Mixture builds one preprocessing pipeline per task, too slow to start over the ~480
languages of the built-in corpus (README, Benchmarks). Here every language's documents come from
one stream instead, and each document of language l is emitted c_l ∝ n_l ** alpha / m_l times in
expectation (floor(c_l) copies plus one more with probability frac(c_l)), where n_l counts the
language's documents (mT5's n) and m_l is its total size in the unit the model consumes
(characters, for text; documents, if all are alike). Language l then makes up n_l ** alpha of the
stream, in that unit — as in a seqio mixture, whose rates apply to the packed pieces it samples,
which are tokens. Under UniMax the rates are computed from m_l (characters, as in the paper) and
c_l ∝ rate_l / m_l. The scale makes a pass emit as many documents as it reads, so small languages
are repeated and large ones thinned rather than almost everything read being dropped; a shuffle
buffer spreads the copies.

Pieces are cut from the concatenated stream (T5 concatenates documents before splitting), so a
piece may straddle two documents of different languages, which per-language mixture tasks avoid.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
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


def check_unimax(budget: float, max_epochs: float) -> None:
  for name, value in (("budget", budget), ("max_epochs", max_epochs)):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise ValueError(f"UniMax {name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
      raise ValueError(f"UniMax {name} must be a positive finite number, got {value}")


def unimax_allocations(
  sizes: Mapping[str, float], budget: float, max_epochs: float
) -> dict[str, float]:
  """UniMax's share of `budget` for each language (in the unit of `sizes`, e.g. characters).

  Smallest language first (ties in the order given), each takes min(remaining budget /
  languages left, max_epochs × its size) and the remaining budget shrinks by that. When even
  max_epochs of everything is less than the budget, every language takes max_epochs × its size
  and the allocations sum to less than the budget.
  """
  check_unimax(budget, max_epochs)
  if not sizes:
    raise ValueError("UniMax needs at least one language size, got none")
  negative = [lang for lang, n in sizes.items() if not (math.isfinite(n) and n >= 0)]
  if negative:
    raise ValueError(f"language sizes must be finite and >= 0: {', '.join(map(str, negative))}")
  if not any(sizes.values()):
    raise ValueError("UniMax needs a language with data; every size is 0")
  remaining, allocations = float(budget), {}
  order = sorted(sizes, key=sizes.get)  # stable: equal sizes keep their order
  for left, lang in zip(range(len(order), 0, -1), order):
    allocations[lang] = min(remaining / left, max_epochs * float(sizes[lang]))
    remaining -= allocations[lang]
  return {lang: allocations[lang] for lang in sizes}


def unimax_rates(sizes: Mapping[str, float], budget: float, max_epochs: float) -> dict[str, float]:
  """Each language's share of the sampled stream under UniMax: its allocation, normalised."""
  allocations = unimax_allocations(sizes, budget, max_epochs)
  total = sum(allocations.values())
  return {lang: a / total for lang, a in allocations.items()}


@dataclasses.dataclass(frozen=True)
class UniMax:
  """UniMax sampling: `budget` is the run's size in the unit the language sizes count
  (characters for the built-in stream, documents for seqio mixtures of per-language tasks), and
  no language gets more than `max_epochs` × its size of it."""

  budget: float
  max_epochs: float = 1.0

  def __post_init__(self):
    check_unimax(self.budget, self.max_epochs)

  def rates(self, sizes: Mapping[str, float]) -> dict[str, float]:
    return unimax_rates(sizes, self.budget, self.max_epochs)


def character_budget(steps: int, batch_size: int, length: int, chars_per_token: float) -> float:
  """A run's UniMax budget in characters, as the paper counts it: steps × batch × tokens per
  sequence × characters per token of the vocabulary on the corpus."""
  budget = float(steps * batch_size * length * chars_per_token)
  check_unimax(budget, 1.0)
  return budget


Sampling = float | UniMax  # an alpha for n ** alpha, or UniMax


def check_sampling(sampling: Sampling) -> None:
  if isinstance(sampling, UniMax):
    return
  if isinstance(sampling, bool) or not isinstance(sampling, numbers.Real):
    raise ValueError(
      f"language sampling is an alpha (n ** alpha) or a language_sampling.UniMax, got {sampling!r}"
    )
  check_alpha(sampling)


def sampling_rates(
  sampling: Sampling, sizes: Mapping[str, int], mass: Mapping[str, float] | None = None
) -> dict[str, float]:
  """Each language's share of `mass` (defaults to `sizes`) in the sampled stream: ∝ sizes **
  alpha for an alpha (mT5's n counts documents or examples); UniMax's rates of `mass`."""
  check_sampling(sampling)
  if isinstance(sampling, UniMax):
    return sampling.rates(sizes if mass is None else mass)
  return language_rates(sizes, sampling)


def copies_per_document(
  sizes: Mapping[str, int], sampling: Sampling, mass: Mapping[str, float] | None = None
) -> dict[str, float]:
  """Expected copies of each document of language l: ∝ rate_l / mass_l (mass defaults to n;
  rate_l ∝ n_l ** alpha, or UniMax's rate of mass), scaled so that a pass over all documents
  emits as many as it reads."""
  check_sampling(sampling)
  mass = sizes if mass is None else mass
  empty = [lang for lang in sizes if sizes[lang] <= 0 or mass[lang] <= 0]
  if empty:
    raise ValueError(f"languages with no documents cannot be sampled: {', '.join(empty)}")
  rates = sampling_rates(sampling, sizes, mass)
  raw = {lang: rates[lang] / mass[lang] for lang in sizes}
  scale = sum(sizes.values()) / sum(sizes[lang] * raw[lang] for lang in sizes)
  return {lang: float(scale * r) for lang, r in raw.items()}


def sample_languages(
  documents: tf.data.Dataset,
  sizes: Mapping[str, int],
  sampling: Sampling,
  seed: int | None,
  shuffle: bool = True,
  mass: Mapping[str, float] | None = None,
  lang_key: str = "lang",
) -> tf.data.Dataset:
  """An endless stream of `documents` (one pass = every language's documents) resampled so
  that language l's share of `mass` is its rate (∝ n_l ** alpha, or UniMax's of `mass`).

  Each pass is reshuffled (from `seed`) and the copy counts come from a seeded random stream,
  so the result is a pure function of `seed` (`None`: nondeterministic, as in seqio).
  """
  copies = copies_per_document(sizes, sampling, mass)
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
