"""mT5's language sampling (p(l) ∝ n_l ** alpha) inside one tf.data pipeline.

A seqio Mixture builds one preprocessing pipeline per task; over the ~480 languages of the
built-in corpus that is ~0.5 s of graph tracing plus ~1 s to open each, i.e. minutes before the
first batch. Here every language's documents come from one stream instead, and a document of
language l is kept with probability (n_l / n_min) ** (alpha - 1): language l then makes up
n_l * n_l ** (alpha - 1) ∝ n_l ** alpha of what survives, exactly the mixture's rates, with one
pipeline to build. The price is reading documents that get dropped, which is cheap for text.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf


def keep_probabilities(sizes: Mapping[str, int], alpha: float) -> dict[str, float]:
    """Per-language keep probability (n / n_min) ** (alpha - 1), 1 for the smallest language."""
    if not 0 < alpha <= 1:
        raise ValueError(f"language sampling exponent alpha must be in (0, 1], got {alpha}")
    empty = [lang for lang, n in sizes.items() if n <= 0]
    if empty:
        raise ValueError(f"languages with no documents cannot be sampled: {', '.join(empty)}")
    n_min = min(sizes.values())
    return {lang: float((n / n_min) ** (alpha - 1)) for lang, n in sizes.items()}


def language_rates(sizes: Mapping[str, int], alpha: float) -> dict[str, float]:
    """The share of each language in the sampled stream: n ** alpha, normalised."""
    weights = {lang: n ** alpha for lang, n in sizes.items()}
    total = sum(weights.values())
    return {lang: w / total for lang, w in weights.items()}


def sample_languages(documents: tf.data.Dataset, sizes: Mapping[str, int], alpha: float,
                     seed: int | None, shuffle: bool = True, lang_key: str = "lang") -> tf.data.Dataset:
    """An endless stream of `documents` (one epoch of every language) resampled to n ** alpha.

    Each pass over the documents is reshuffled (from `seed`), and the keep decisions come from a
    seeded random stream, so the result is a pure function of `seed`.
    """
    keep = keep_probabilities(sizes, alpha)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(keep), tf.string), tf.constant(list(keep.values()), tf.float32)),
        default_value=0.0,  # a language outside `sizes` is never kept
    )
    if shuffle:
        documents = documents.shuffle(sum(sizes.values()), seed=seed, reshuffle_each_iteration=True)
    documents = documents.repeat()
    coins = tf.data.Dataset.random(seed=seed if seed is not None else np.random.randint(2**31))

    def kept(example, coin):
        uniform = tf.cast(coin % (1 << 24), tf.float32) / float(1 << 24)
        return uniform < table.lookup(example[lang_key])

    stream = tf.data.Dataset.zip((documents, coins)).filter(kept)
    return stream.map(lambda example, coin: example)
