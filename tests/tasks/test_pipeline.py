"""Registry lookups, mT5 mixing rates, packing and feature converters (registry.py, pipeline.py)."""

import collections

import numpy as np
import pytest
import seqio

import tasks
from tasks import pipeline, preprocessors, registry

BYTES = seqio.ByteVocabulary()


def _byte_features(inputs=True):
  features = {"targets": seqio.Feature(BYTES, add_eos=True)}
  if inputs:
    features["inputs"] = seqio.Feature(BYTES, add_eos=True, required=False)
  return features


def _copy_task(make_text_task, texts, name="copy"):
  """inputs = the text, targets = the text reversed: easy to check after packing."""

  def to_pair(ds):
    return ds.map(lambda x: {"inputs": x["text"], "targets": tf_reverse(x["text"])})

  return make_text_task(
    name,
    texts,
    [to_pair, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    _byte_features(),
  )


def tf_reverse(text):
  import tensorflow as tf  # noqa: PLC0415

  return tf.strings.reduce_join(tf.reverse(tf.strings.bytes_split(text), [0]))


def test_unknown_name_suggests_close_names():
  with pytest.raises(tasks.UnknownTaskError) as err:
    tasks.get("translate_en_dee")
  assert "'translate_en_de'" in str(err.value) and "python -m tasks list" in str(err.value)
  with pytest.raises(tasks.UnknownTaskError, match="no task or mixture named 'zzzz'"):
    tasks.get("zzzz")


def test_builtin_registry_names():
  assert isinstance(tasks.get("mono"), seqio.Task)  # one language-sampled stream (see test_builtin)
  assert (
    len([n for n in registry.registered_names() if n.startswith("mono.")]) > 400
  )  # per language
  assert tasks.get("translate_en_pt_BR").output_features["targets"].vocabulary.vocab_size == 8192
  assert {t.name for t in tasks.get("multitask").tasks} == {
    "mono",
    "translate_en_de",
    "translate_en_fr",
    "translate_en_es",
  }
  assert isinstance(
    tasks.get("byt5_mono.de").output_features["targets"].vocabulary, seqio.ByteVocabulary
  )


def test_language_mixture_rates_and_sampling(make_text_task):
  sizes = {"a": 10, "b": 100, "c": 1000, "d": 10000}
  names = [
    make_text_task(
      f"lang_{k}",
      {"train": [k * 3] * n},
      [preprocessors.clean_documents, seqio.preprocessors.tokenize],
      _byte_features(inputs=False),
    )
    for k, n in sizes.items()
  ]
  mixture = registry.add_language_mixture("test_language_mixture", names, 0.3)
  expected = np.array([n**0.3 for n in sizes.values()])
  expected /= expected.sum()
  proportions = tasks.mixing_proportions(mixture)
  np.testing.assert_allclose([proportions[n] for n in names], expected, rtol=1e-9)

  ds = mixture.get_dataset({"targets": 4}, split="train", shuffle=True, seed=3, num_epochs=None)
  counts = collections.Counter(
    bytes([ex["targets"][0] - 3]).decode() for ex in ds.take(10_000).as_numpy_iterator()
  )
  observed = np.array([counts[k] / 10_000 for k in sizes])
  np.testing.assert_allclose(observed, expected, atol=0.015)
  # alpha = 1 is examples-proportional; alpha is validated.
  flat = registry.add_language_mixture("test_language_mixture_1", names, 1.0)
  assert tasks.mixing_proportions(flat)[names[-1]] == pytest.approx(10000 / 11110)
  with pytest.raises(ValueError, match="alpha"):
    registry.language_rate(0.0)


def test_mixture_at_given_rates_samples_them(make_text_task):
  names = [
    make_text_task(
      f"rated_{k}",
      {"train": [k * 3] * 50},
      [preprocessors.clean_documents, seqio.preprocessors.tokenize],
      _byte_features(inputs=False),
    )
    for k in "xyz"
  ]
  rates = dict(zip(names, [0.1, 0.3, 0.6]))
  assert tasks.mixture("test_rated_mixture", rates) == "test_rated_mixture"
  mixture = tasks.get("test_rated_mixture")
  assert tasks.mixing_proportions(mixture) == pytest.approx(rates)
  ds = mixture.get_dataset({"targets": 4}, split="train", shuffle=True, seed=5, num_epochs=None)
  counts = collections.Counter(int(ex["targets"][0]) for ex in ds.take(5_000).as_numpy_iterator())
  observed = [counts[ord(k) + 3] / 5_000 for k in "xyz"]
  np.testing.assert_allclose(observed, [0.1, 0.3, 0.6], atol=0.02)
  # registering again replaces it (gin evaluates the reference once per use)
  tasks.mixture("test_rated_mixture", {names[0]: 1.0})
  assert tasks.mixing_proportions(tasks.get("test_rated_mixture")) == {names[0]: 1.0}
  with pytest.raises(tasks.UnknownTaskError, match="rated_x"):
    tasks.mixture("test_bad_mixture", {"rated_xx": 1.0})
  with pytest.raises(ValueError, match="must be > 0"):
    tasks.mixture("test_bad_mixture", {names[0]: 0.0})


def test_packing_segments_positions_and_shifted_decoder_inputs(make_text_task):
  texts = ["ab", "cdef", "g", "hijkl", "mn", "opq"]
  name = _copy_task(make_text_task, {"train": texts, "validation": texts[:2]})
  ds = tasks.get_dataset(
    name, "train", {"inputs": 16, "targets": 16}, batch_size=None, shuffle=False, num_epochs=1
  )
  rows = list(ds.as_numpy_iterator())
  assert len(rows) < len(texts)  # several examples share a row
  seen = []
  for row in rows:
    seg, pos = row["encoder_segment_ids"], row["encoder_positions"]
    for s in range(1, seg.max() + 1):
      idx = np.flatnonzero(seg == s)
      assert np.array_equal(pos[idx], np.arange(len(idx)))  # positions restart per segment
      tokens = row["encoder_input_tokens"][idx]
      assert tokens[-1] == BYTES.eos_id
      seen.append(BYTES.decode(tokens[:-1].tolist()))
      dec = np.flatnonzero(row["decoder_segment_ids"] == s)
      targets = row["decoder_target_tokens"][dec]
      assert BYTES.decode(targets[:-1].tolist()) == seen[-1][::-1]
      # Teacher forcing within the segment: 0 (BOS) then the targets shifted right.
      assert np.array_equal(row["decoder_input_tokens"][dec], np.concatenate([[0], targets[:-1]]))
      assert np.array_equal(row["decoder_positions"][dec], np.arange(len(dec)))
    assert np.all(row["encoder_input_tokens"][seg == 0] == 0)  # padding is segment 0
    assert np.all(row["decoder_loss_weights"] == (row["decoder_segment_ids"] > 0))
  assert seen == texts


def test_unpacked_and_decoder_only_converters(make_text_task):
  texts = ["abc", "de"]
  name = _copy_task(make_text_task, {"train": texts})
  unpacked = next(
    tasks.get_dataset(
      name, "train", {"inputs": 8, "targets": 8}, batch_size=2, pack=False, shuffle=False
    ).as_numpy_iterator()
  )
  assert unpacked["encoder_input_tokens"].shape == (2, 8) and "encoder_segment_ids" not in unpacked
  eval_batches = list(
    tasks.get_dataset(
      name,
      "train",
      {"inputs": 8, "targets": 8},
      batch_size=3,
      pack=False,
      shuffle=False,
      num_epochs=1,
      drop_remainder=False,
    ).as_numpy_iterator()
  )
  assert [b["encoder_input_tokens"].shape[0] for b in eval_batches] == [2]  # nothing dropped
  prefix = next(
    tasks.get_dataset(
      name,
      "train",
      {"inputs": 8, "targets": 8},
      batch_size=1,
      converter="prefix_lm",
      pack=False,
      shuffle=False,
    ).as_numpy_iterator()
  )
  # Prefix LM: "abc"+EOS then "cba"+EOS in one decoder row; the inputs (and the position that
  # predicts the first target) attend bidirectionally, and only the targets carry loss.
  assert prefix["decoder_target_tokens"].shape == (1, 16)
  assert prefix["decoder_causal_attention"][0].tolist() == [1] * 5 + [0] * 11
  assert prefix["decoder_loss_weights"][0].tolist() == [0] * 4 + [1] * 4 + [0] * 8
  lm_name = make_text_task(
    "lm",
    {"train": texts},
    [
      lambda ds: ds.map(lambda x: {"targets": x["text"]}),
      seqio.preprocessors.tokenize,
      seqio.preprocessors.append_eos_after_trim,
    ],
    _byte_features(inputs=False),
  )
  lm = next(
    tasks.get_dataset(
      lm_name, "train", {"targets": 8}, batch_size=1, converter="decoder_only", shuffle=False
    ).as_numpy_iterator()
  )
  assert lm["decoder_segment_ids"][0].tolist() == [1, 1, 1, 1, 2, 2, 2, 0]  # "abc"+EOS, "de"+EOS
  assert lm["decoder_input_tokens"][0].tolist()[4] == 0  # each packed segment starts from BOS
  with pytest.raises(ValueError, match="unknown feature converter"):
    pipeline.feature_converter("encoder_only")


def test_missing_split_and_empty_dataset_are_clear_errors(make_text_task):
  name = _copy_task(make_text_task, {"train": ["   ", ""]}, name="blank")
  with pytest.raises(ValueError, match="has no split 'validation'"):
    tasks.get_dataset(name, "validation", {"inputs": 8, "targets": 8}, batch_size=2)
  lm_name = make_text_task(
    "blank_lm",
    {"train": ["   ", "\n"]},
    [preprocessors.clean_documents, seqio.preprocessors.tokenize],
    _byte_features(inputs=False),
  )
  ds = tasks.get_dataset(
    lm_name, "train", {"targets": 8}, batch_size=2, converter="decoder_only", num_epochs=1
  )
  with pytest.raises(tasks.EmptyDatasetError, match="yielded no examples"):
    next(tasks.as_numpy(ds, f"task {lm_name} split train"))


def test_translate_preprocessor_prompts_both_directions():
  import tensorflow as tf  # noqa: PLC0415

  ds = tf.data.Dataset.from_tensor_slices(
    {"en": ["Hello.", "", "Open the menu."], "de": ["Hallo.", "Leer.", "Öffnen Sie das Menü."]}
  )
  en_de = list(preprocessors.translate(ds, "en", "de").as_numpy_iterator())
  assert [e["inputs"].decode() for e in en_de] == [
    "translate English to German: Hello.",
    "translate English to German: Open the menu.",
  ]
  assert en_de[1]["targets"].decode() == "Öffnen Sie das Menü."
  de_en = list(preprocessors.translate(ds, "de", "en").as_numpy_iterator())
  assert de_en[0]["inputs"].decode() == "translate German to English: Hallo."
  assert len(de_en) == 2  # the pair with an empty English side is dropped
  with pytest.raises(KeyError, match="LANGUAGE_NAMES"):
    preprocessors.translate(ds, "en", "xx")
