"""Language sampling in one stream (tasks/language_sampling.py): mT5's n ** alpha and UniMax.

UniMax (Chung et al., "UniMax: Fairer and More Effective Language Sampling for Large-Scale
Multilingual Pretraining", ICLR 2023), given each language's size (characters), a character
budget C and a cap of N epochs: sort the languages by size, smallest first; walk them in that
order, each taking min(remaining budget / languages left, N × its size) and the remaining budget
shrinking by what it took; sample each language ∝ what it took. Small languages are capped at N
epochs and what they leave is shared equally by the larger ones.
"""

import collections

import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks
from tasks import builtin, corpora, parts, registry, tfds_tasks, unimax
from tasks import language_sampling as ls
from tasks.preprocessors import clean_documents


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


# ---------------------------------------------------------------------------------------------
# UniMax against the algorithm on synthetic sizes


def test_unimax_hand_computed_allocations():
  # Budget 400, N = 2, smallest first: a takes min(400/4, 2*10) = 20 (capped), leaving 380;
  # b min(380/3, 2*40) = 80 (capped), leaving 300; c min(300/2, 2*100) = 150; d min(150, 2000)
  # = 150. The input order does not matter.
  sizes = {"d": 1000, "b": 40, "a": 10, "c": 100}
  allocations = ls.unimax_allocations(sizes, 400, 2)
  assert allocations == pytest.approx({"a": 20, "b": 80, "c": 150, "d": 150})
  assert list(allocations) == list(sizes)
  rates = ls.unimax_rates(sizes, 400, 2)
  assert rates == pytest.approx({"a": 0.05, "b": 0.2, "c": 0.375, "d": 0.375})
  assert ls.UniMax(400, 2).rates(sizes) == rates
  assert ls.sampling_rates(ls.UniMax(400, 2), sizes) == rates
  # Fractional epochs: the cap is N × size whatever N is.
  assert ls.unimax_allocations({"a": 10, "b": 1000}, 100, 0.5) == pytest.approx({"a": 5, "b": 95})


def test_unimax_all_capped_is_size_proportional():
  # N epochs of everything (3 * 11110) is under the budget: each language takes N × its size.
  sizes = {"a": 10, "b": 100, "c": 1000, "d": 10000}
  allocations = ls.unimax_allocations(sizes, 1e9, 3)
  assert allocations == pytest.approx({lang: 3 * n for lang, n in sizes.items()})
  rates = ls.unimax_rates(sizes, 1e9, 3)
  assert rates == pytest.approx(ls.language_rates(sizes, 1.0))


def test_unimax_tiny_budget_is_uniform():
  # A budget under N × (smallest size) × languages: nobody is capped, all get C / L.
  sizes = {"a": 10, "b": 100, "c": 1000, "d": 10000}
  assert ls.unimax_allocations(sizes, 8, 1) == pytest.approx(dict.fromkeys(sizes, 2.0))
  assert ls.unimax_rates(sizes, 8, 1) == pytest.approx(dict.fromkeys(sizes, 0.25))


@pytest.mark.parametrize("seed", range(5))
def test_unimax_is_monotone_and_spends_the_budget(seed):
  rng = np.random.default_rng(seed)
  sizes = {f"l{i}": float(n) for i, n in enumerate(rng.lognormal(8, 3, size=60))}
  for budget in (1e2, 1e4, 0.3 * sum(sizes.values()), 1e12):
    for epochs in (0.5, 1, 4):
      allocations = ls.unimax_allocations(sizes, budget, epochs)
      rates = ls.unimax_rates(sizes, budget, epochs)
      ordered = sorted(sizes, key=sizes.get)
      # A larger language never gets a smaller rate.
      assert all(rates[a] <= rates[b] * (1 + 1e-12) for a, b in zip(ordered, ordered[1:]))
      assert sum(rates.values()) == pytest.approx(1.0)
      # Nobody past N epochs; the budget is spent unless N epochs of everything is less.
      assert all(allocations[lang] <= epochs * n * (1 + 1e-12) for lang, n in sizes.items())
      spent = min(budget, epochs * sum(sizes.values()))
      assert sum(allocations.values()) == pytest.approx(spent)
      # The uncapped languages share equally.
      uncapped = [lang for lang in sizes if allocations[lang] < epochs * sizes[lang] * (1 - 1e-9)]
      assert len({round(allocations[lang], 6) for lang in uncapped}) <= 1


@pytest.mark.parametrize(
  "sizes, budget, epochs, message",
  [
    ({"a": 1}, 0, 1, "budget must be a positive finite number, got 0"),
    ({"a": 1}, -5, 1, "budget must be a positive finite number, got -5"),
    ({"a": 1}, float("nan"), 1, "budget must be a positive finite number"),
    ({"a": 1}, "1e6", 1, "budget must be a number, got '1e6'"),
    ({"a": 1}, 10, 0, "max_epochs must be a positive finite number, got 0"),
    ({"a": 1}, 10, -1, "max_epochs must be a positive finite number, got -1"),
    ({}, 10, 1, "at least one language size, got none"),
    ({"a": 1, "b": -2}, 10, 1, "sizes must be finite and >= 0: b"),
    ({"a": 0, "b": 0}, 10, 1, "every size is 0"),
  ],
)
def test_unimax_input_errors(sizes, budget, epochs, message):
  with pytest.raises(ValueError, match=message):
    ls.unimax_rates(sizes, budget, epochs)


def test_sampling_spec_errors():
  with pytest.raises(ValueError, match="budget must be a positive"):
    ls.UniMax(0)
  with pytest.raises(ValueError, match="max_epochs must be a positive"):
    ls.UniMax(100, max_epochs=0)
  with pytest.raises(ValueError, match="an alpha .* or a language_sampling.UniMax, got 'unimax'"):
    ls.check_sampling("unimax")
  with pytest.raises(ValueError, match="alpha must be in"):
    ls.check_sampling(0.0)
  assert ls.character_budget(1400, 16, 128, 2.0) == 5_734_400


def test_unimax_stream_frequencies_match_the_rates():
  # Documents of one character each: UniMax of the document counts is the stream's mix.
  sizes = {"a": 10, "b": 100, "c": 1000, "d": 10000}
  sampling = ls.UniMax(budget=3000, max_epochs=4)  # a, b capped at 40 and 400; c, d 1280 each
  rates = ls.unimax_rates(sizes, 3000, 4)
  assert rates == pytest.approx(
    {"a": 40 / 3000, "b": 400 / 3000, "c": 1280 / 3000, "d": 1280 / 3000}
  )
  # Each b document is emitted ~15 times a pass: 30k examples (~3 passes) average that out.
  stream = ls.sample_languages(_documents(sizes), sizes, sampling, seed=0).take(30_000)
  counts = collections.Counter(ex["lang"].decode() for ex in stream.as_numpy_iterator())
  for lang in sizes:
    assert counts[lang] / 30_000 == pytest.approx(rates[lang], abs=0.01), (lang, counts)


def test_unimax_seqio_mixture_rates(make_text_task):
  """A seqio Mixture of per-language tasks with UniMax rates: seqio samples the tasks ∝ their
  UniMax allocations of the training examples."""
  sizes = {"a": 10, "b": 100, "c": 1000}
  features = {"targets": seqio.Feature(seqio.ByteVocabulary(), add_eos=True)}
  names = [
    make_text_task(
      f"unimax_{k}", {"train": [k] * n}, [clean_documents, seqio.preprocessors.tokenize], features
    )
    for k, n in sizes.items()
  ]
  mixture = registry.add_language_mixture("test_unimax_mixture", names, ls.UniMax(600, 2))
  # a: min(200, 20) = 20; b: min(290, 200) = 200; c: 380.
  expected = dict(zip(names, [20 / 600, 200 / 600, 380 / 600]))
  assert tasks.mixing_proportions(mixture) == pytest.approx(expected)
  ds = mixture.get_dataset({"targets": 4}, split="train", shuffle=True, seed=3, num_epochs=None)
  counts = collections.Counter(int(ex["targets"][0]) for ex in ds.take(6000).as_numpy_iterator())
  byte_id = {name: ord(k) + 3 for name, k in zip(names, sizes)}  # ByteVocabulary: byte + 3
  for name in names:
    assert counts[byte_id[name]] / 6000 == pytest.approx(expected[name], abs=0.02), counts
  with pytest.raises(ValueError, match="UniMax caps epochs with max_epochs"):
    registry.add_language_mixture("test_unimax_mixture", names, ls.UniMax(600), maximum=10)


# ---------------------------------------------------------------------------------------------
# UniMax on the built-in languages and the registered names


@pytest.fixture(scope="module")
def builtin_characters():
  corpora.prepare(progress=False)  # a no-op when `make test` has run the prepare step
  return tasks.get("mono").source.characters("train")


def test_unimax_on_the_builtin_languages(builtin_characters):
  chars = builtin_characters
  budget, epochs = builtin.UNIMAX_BUDGETS["mono"], builtin.UNIMAX_MAX_EPOCHS
  assert budget == 1400 * 16 * 128 * builtin.CHARS_PER_TOKEN["mono"] < sum(chars.values())
  rates = ls.unimax_rates(chars, budget, epochs)
  assert set(rates) == set(corpora.MONOLINGUAL_LANGUAGES)
  assert sum(rates.values()) == pytest.approx(1.0)
  # At the budget, no language is read more than N epochs; the budget is all spent.
  assert all(rates[lang] * budget <= epochs * n * (1 + 1e-9) for lang, n in chars.items())
  capped = [lang for lang in chars if rates[lang] * budget >= epochs * chars[lang] * (1 - 1e-9)]
  head = [lang for lang in chars if lang not in capped]
  # The UDHR-only tail (~10k characters a language) is capped at one epoch; the GNOME head
  # shares the rest equally, each more than any capped language.
  assert 300 < len(capped) < len(chars) and len(head) > 20
  assert max(rates[lang] for lang in head) == pytest.approx(min(rates[lang] for lang in head))
  assert min(rates[lang] for lang in head) >= max(rates[lang] for lang in capped)
  # n^0.3 at the same budget repeats the tail well past one epoch (the smallest language ~70
  # times), where UniMax repeats nothing; UniMax's head languages get at least n^0.3's share.
  alpha = tasks.get("mono").source.rates("train")
  repeats = {lang: alpha[lang] * budget / n for lang, n in chars.items()}
  assert sum(r > epochs for r in repeats.values()) > 100 and max(repeats.values()) > 20
  assert all(rates[lang] >= alpha[lang] for lang in head)
  smallest = min(chars, key=chars.get)
  assert rates[smallest] < alpha[smallest] / 20


def test_registered_mono_unimax_uses_the_unimax_rates(builtin_characters):
  for name, objective in (("mono_unimax", "mono"), ("byt5_mono_unimax", "byt5_mono")):
    source = tasks.get(name).source
    expected = ls.UniMax(builtin.UNIMAX_BUDGETS[objective], builtin.UNIMAX_MAX_EPOCHS)
    assert source.sampling == expected and source.alpha is None
    assert tasks.get(name).output_features == tasks.get(objective).output_features
  rates = tasks.get("mono_unimax").source.rates("train")
  assert rates == ls.unimax_rates(builtin_characters, builtin.UNIMAX_BUDGETS["mono"], 1.0)
  # The stream follows them: a few big and small languages, re-sampled at a budget that caps
  # some, each language's share of 10k documents' text is its UniMax rate.
  by_size = sorted(builtin_characters, key=builtin_characters.get)
  languages = by_size[-5:] + by_size[100:400:30]
  subset = {lang: builtin_characters[lang] for lang in languages}
  sampling = ls.UniMax(0.3 * sum(subset.values()), 1.0)
  source = builtin.SampledMonolingualSource(sampling, languages=languages)
  expected = source.rates("train")
  assert expected == sampling.rates(subset)
  chars = collections.Counter()
  for ex in source.get_dataset("train", seed=5).take(10_000).as_numpy_iterator():
    chars[ex["lang"].decode()] += len(ex["text"].decode())
  total = sum(chars.values())
  for lang in languages:
    assert chars[lang] / total == pytest.approx(expected[lang], rel=0.2), lang


def test_registered_mc4_unimax_mixtures(monkeypatch):
  for prefix in ("mc4", "byt5_mc4"):
    mixture = tasks.get(f"{prefix}_unimax")
    assert [t.name for t in mixture.tasks] == [t.name for t in tasks.get(prefix).tasks]
  # seqio's rates under made-up per-language document counts (the real ones need mC4 prepared).
  counts = {
    f"mc4.{parts.task_suffix(lang)}": 1000 * (i + 1)
    for i, lang in enumerate(tfds_tasks.MC4_LANGUAGES)
  }
  monkeypatch.setattr(seqio.Task, "num_input_examples", lambda self, split: counts[self.name])
  name = unimax.unimax_mixture("mc4", budget=2_000_000, max_epochs=2)
  assert name == "mc4_unimax_2000000_2ep" and unimax.unimax_mixture("mc4", 2e6, 2) == name
  expected = ls.unimax_rates(counts, 2_000_000, 2)
  assert tasks.mixing_proportions(tasks.get(name)) == pytest.approx(expected)


def test_unimax_mixture_names_and_errors():
  assert unimax.unimax_mixture("mono") == "mono_unimax"
  assert unimax.unimax_mixture("byt5_mono", builtin.UNIMAX_BUDGETS["byt5_mono"]) == (
    "byt5_mono_unimax"
  )
  name = unimax.unimax_mixture("mono_lm", budget=1e6, max_epochs=2.5)
  assert name == "mono_lm_unimax_1000000_2p5ep"
  assert tasks.get(name).source.sampling == ls.UniMax(1e6, 2.5)
  assert unimax.unimax_budget(10, 4, {"inputs": 128, "targets": 32}, 2.0) == 10 * 4 * 128 * 2.0
  with pytest.raises(ValueError, match="max_epochs must be a positive"):
    unimax.unimax_mixture("mono", max_epochs=0)
  with pytest.raises(ValueError, match="'translate_en_de' has no default UniMax budget"):
    unimax.unimax_mixture("translate_en_de")
  with pytest.raises(ValueError, match="language-sampled base.*got 'translate_en_de'"):
    unimax.unimax_mixture("translate_en_de", budget=100)
