"""mT5 language sampling in one stream (tasks/language_sampling.py)."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from tasks import language_sampling as ls


def _documents(sizes):
  langs = [lang for lang, n in sizes.items() for _ in range(n)]
  return tf.data.Dataset.from_tensor_slices({"lang": langs, "text": [f"{l} doc" for l in langs]})


def test_rates_and_copies_per_document():
  sizes = {"a": 10, "b": 100, "c": 1000, "d": 10000}
  rates = ls.language_rates(sizes, 0.3)
  expected = np.array([10, 100, 1000, 10000]) ** 0.3
  np.testing.assert_allclose(list(rates.values()), expected / expected.sum())
  copies = ls.copies_per_document(sizes, 0.3)
  assert copies["a"] / copies["d"] == pytest.approx(1000**0.7)  # small languages repeated
  # A pass emits as many documents as it reads, and n * copies ∝ n ** alpha: the rates.
  emitted = np.array([n * copies[lang] for lang, n in sizes.items()])
  assert emitted.sum() == pytest.approx(sum(sizes.values()))
  np.testing.assert_allclose(emitted / emitted.sum(), expected / expected.sum())
  with pytest.raises(ValueError, match="alpha"):
    ls.copies_per_document(sizes, 1.5)
  with pytest.raises(ValueError, match="no documents.*e"):
    ls.copies_per_document({**sizes, "e": 0}, 0.3)


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_sampling_frequencies_over_10k_examples_match_the_rates(alpha):
  sizes = {"a": 10, "b": 100, "c": 1000, "d": 10000}
  stream = ls.sample_languages(_documents(sizes), sizes, alpha, seed=0).take(10_000)
  counts = collections.Counter(ex["lang"].decode() for ex in stream.as_numpy_iterator())
  rates = ls.language_rates(sizes, alpha)
  for lang in sizes:
    assert counts[lang] / 10_000 == pytest.approx(rates[lang], abs=0.012), (lang, counts)


def test_mass_weighting_makes_the_characters_follow_the_rates():
  """Languages whose documents are 1 vs 10 characters long: weighting by characters gives each
  language its n ** alpha share of the characters, not of the documents."""
  sizes = {"s": 400, "l": 100}
  texts = {"s": "x", "l": "y" * 10}
  langs = [lang for lang, n in sizes.items() for _ in range(n)]
  docs = tf.data.Dataset.from_tensor_slices({"lang": langs, "text": [texts[l] for l in langs]})
  mass = {lang: n * len(texts[lang]) for lang, n in sizes.items()}
  stream = ls.sample_languages(docs, sizes, 0.3, seed=1, mass=mass).take(6000)
  chars = collections.Counter()
  for ex in stream.as_numpy_iterator():
    chars[ex["lang"].decode()] += len(ex["text"])
  share = chars["s"] / (chars["s"] + chars["l"])
  assert share == pytest.approx(ls.language_rates(sizes, 0.3)["s"], abs=0.02)


def test_stream_is_a_function_of_the_seed():
  sizes = {"a": 3, "b": 50}
  take = lambda seed: [
    ex["text"]
    for ex in ls.sample_languages(  # noqa: E731
      _documents(sizes), sizes, 0.3, seed=seed
    )
    .take(200)
    .as_numpy_iterator()
  ]
  assert take(1) == take(1) and take(1) != take(2)
