"""Span corruption, prefix LM and LM against the T5 semantics (tasks/span_corruption.py)."""

import functools

import numpy as np
import pytest
import seqio
import tensorflow as tf

from tasks import preprocessors
from tasks import span_corruption as sc

VOCAB_SIZE = 1000


def _noise_mask(length, seed, density=0.15, mean_span=3.0):
  seeds = tf.random.experimental.stateless_split(tf.constant([seed, 7], tf.int64), 2)
  return sc.random_spans_noise_mask(
    tf.constant(length), density, tf.unstack(seeds), mean_span
  ).numpy()


def _runs(mask):
  """Lengths of the runs of True in a boolean vector."""
  padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
  edges = np.flatnonzero(np.diff(padded))
  return edges[1::2] - edges[0::2]


def reinterleave(inputs, targets, vocab_size, max_sentinels=40):
  """Undo span corruption: replace each sentinel in the inputs by the span after it in targets.

  The tests' text is ASCII, so byte ids stay far below the top `max_sentinels` ids."""
  spans, current = {}, None
  for token in targets:
    if token >= vocab_size - max_sentinels:
      current = token
      spans[current] = []
    else:
      spans[current].append(token)
  out = []
  for token in inputs:
    out.extend(spans[token] if token in spans else [token])
  return out


@pytest.mark.parametrize(
  "inputs_length, density, mean_span, expected",
  [
    (512, 0.15, 3.0, (568, 114)),
    (1024, 0.15, 3.0, (1137, 229)),
    (1024, 0.15, 20.0, (1193, 189)),
    (114, 0.15, 3.0, (126, 26)),
  ],  # by hand: 126 -> 19 noise, 6 spans: 107+6+1 = 114
)
def test_random_spans_helper_published_lengths(inputs_length, density, mean_span, expected):
  assert sc.random_spans_helper(inputs_length, density, mean_span) == expected


def test_spans_to_sentinels_hand_worked_example():
  tokens = tf.constant([10, 11, 12, 13, 14, 15, 16, 17])
  noise = tf.constant([False, False, True, True, False, False, True, False])
  inputs = sc.spans_to_sentinels(tokens, noise, VOCAB_SIZE).numpy().tolist()
  targets = sc.spans_to_sentinels(tokens, tf.logical_not(noise), VOCAB_SIZE).numpy().tolist()
  # One sentinel per noise span in the inputs, counting down from vocab_size - 1 ...
  assert inputs == [10, 11, 999, 14, 15, 998, 17]
  # ... and in the targets each sentinel followed by its span (non-noise runs become sentinels).
  assert targets == [999, 12, 13, 998, 16, 997]


def test_noise_mask_exact_counts_and_structure():
  mask = _noise_mask(100, seed=3)
  assert mask.sum() == 15  # round(100 * 0.15)
  assert len(_runs(mask)) == 5  # round(15 / 3) spans
  assert not mask[0]  # T5 starts with a non-noise span
  # Tiny inputs still get one noise token and never an all-noise piece.
  for length in (2, 3, 5):
    m = _noise_mask(length, seed=1)
    assert m.sum() == 1 and len(m) == length
  assert _noise_mask(1, seed=1).tolist() == [False]


def test_noise_mask_is_a_function_of_the_seed():
  assert np.array_equal(_noise_mask(200, seed=5), _noise_mask(200, seed=5))
  assert not np.array_equal(_noise_mask(200, seed=5), _noise_mask(200, seed=6))


@pytest.mark.parametrize("mean_span", [3.0, 20.0])
def test_noise_statistics_over_many_seeds(mean_span):
  masks = np.stack(
    [_noise_mask(568 if mean_span == 3 else 1193, seed=s, mean_span=mean_span) for s in range(300)]
  )
  assert masks.mean() == pytest.approx(0.15, abs=0.002)
  runs = np.concatenate([_runs(m) for m in masks])
  assert runs.mean() == pytest.approx(mean_span, rel=0.03)
  # Span lengths vary (random boundaries).
  assert runs.std() > 0.3 * mean_span
  if mean_span == 20.0:
    return  # 9 spans a piece, always ending in noise: not uniform over positions
  # With many spans, noise is spread evenly over the whole piece.
  position_rate = masks[:, 1:].mean(axis=0)
  quarters = position_rate[: len(position_rate) // 4 * 4].reshape(4, -1).mean(axis=1)
  assert np.all(np.abs(quarters - 0.15) < 0.03), quarters


def _run_objective(objective, documents, sequence_length, vocabulary, seed=0):
  features = {
    "targets": seqio.Feature(vocabulary, add_eos=True),
    "inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
  }
  ds = tf.data.Dataset.from_tensor_slices({"text": tf.constant(documents)})
  ds = preprocessors.clean_documents(ds)
  ds = seqio.preprocessors.tokenize(ds, features)
  with seqio.utils.map_seed_manager(seed):
    ds = seqio.utils.add_kwargs_to_transform(
      objective, sequence_length=sequence_length, output_features=features
    )(ds)
  return list(ds.as_numpy_iterator()), features


def test_span_corruption_pipeline_reproduces_the_documents(make_documents):
  vocabulary = seqio.ByteVocabulary()
  documents = make_documents(30, seed=2)
  lengths = {"inputs": 128, "targets": 32}
  examples, _ = _run_objective(sc.span_corruption, documents, lengths, vocabulary)
  raw_length, targets_length = sc.random_spans_helper(128)
  stream = []
  for ex in examples:
    assert len(ex["inputs"]) <= 128 - 1 and len(ex["targets"]) <= targets_length - 1
    stream.extend(
      reinterleave(ex["inputs"].tolist(), ex["targets"].tolist(), vocabulary.vocab_size)
    )
  # Documents are concatenated (no separator) and cut into raw_length pieces, in order.
  expected = [t for d in documents for t in vocabulary.encode(d)]
  assert stream == expected
  assert all(
    len(reinterleave(e["inputs"].tolist(), e["targets"].tolist(), vocabulary.vocab_size))
    == raw_length
    for e in examples[:-1]
  )
  # Full pieces fill the inputs exactly once EOS is appended: 127 tokens + EOS = 128.
  assert len(examples[0]["inputs"]) == 127


def test_span_corruption_after_eos_and_seeded(make_documents):
  vocabulary = seqio.ByteVocabulary()
  documents = make_documents(20, seed=3)
  lengths = {"inputs": 64, "targets": 24}

  def objective(ds, sequence_length, output_features):
    ds = sc.span_corruption(ds, sequence_length, output_features)
    return seqio.preprocessors.append_eos_after_trim(ds, output_features, sequence_length)

  a, _ = _run_objective(objective, documents, lengths, vocabulary, seed=11)
  b, _ = _run_objective(objective, documents, lengths, vocabulary, seed=11)
  c, _ = _run_objective(objective, documents, lengths, vocabulary, seed=12)
  assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))
  assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))
  for ex in a:
    assert ex["inputs"][-1] == vocabulary.eos_id and ex["targets"][-1] == vocabulary.eos_id
    assert len(ex["inputs"]) <= 64 and len(ex["targets"]) <= 24


def test_byte_span_corruption_uses_top_bytes_as_sentinels(make_documents):
  vocabulary = seqio.ByteVocabulary()
  documents = make_documents(60, seed=4, words=(100, 300))
  objective = functools.partial(sc.span_corruption, mean_noise_span_length=20.0)
  examples, _ = _run_objective(objective, documents, {"inputs": 1024, "targets": 189}, vocabulary)
  sentinel_floor = vocabulary.vocab_size - 10  # 9 spans at most in 1193 bytes
  noise_tokens, spans = 0, 0
  for ex in examples[:-1]:
    targets = ex["targets"]
    sentinels = targets >= sentinel_floor
    assert sentinels[0] and targets[0] == vocabulary.vocab_size - 1  # byte 0xFF first
    spans += sentinels.sum()  # full pieces end with a noise span: one sentinel per span
    noise_tokens += (~sentinels).sum()
    assert len(ex["targets"]) + 1 <= 189 and len(ex["inputs"]) + 1 <= 1024
  assert noise_tokens / spans == pytest.approx(20, rel=0.1)
  # The top bytes never occur in (repaired) UTF-8 text, so they cannot be confused with text.
  assert all(t < sentinel_floor for d in documents for t in vocabulary.encode(d))


def test_helper_lengths_are_the_lengths_the_mask_produces():
  """For every inputs length, full pieces corrupt to exactly the promised lengths (the helper
  and the mask round the same float32 way; at e.g. 640 float64 rounding would differ)."""
  for inputs_length in list(range(8, 300)) + [512, 568, 640, 1024, 1180, 2048]:
    for mean_span in (3.0, 20.0):
      raw, targets = sc.random_spans_helper(inputs_length, 0.15, mean_span)
      mask = _noise_mask(raw, seed=inputs_length, mean_span=mean_span)
      spans = len(_runs(mask))
      assert (raw - mask.sum() + spans + 1, mask.sum() + spans + 1) == (inputs_length, targets)


def test_targets_length_too_short_is_refused(make_documents):
  _, targets = sc.random_spans_helper(128)
  with pytest.raises(ValueError, match=f"at least {targets}"):
    _run_objective(
      sc.span_corruption,
      make_documents(3),
      {"inputs": 128, "targets": targets - 1},
      seqio.ByteVocabulary(),
    )


def test_more_spans_than_sentinels_is_refused(make_documents):
  # 512 byte inputs -> 28 spans, but only bytes 0xF5..0xFF (11) never occur in UTF-8.
  with pytest.raises(ValueError, match="28 noise spans, but the vocabulary has only 11 sentinel"):
    _run_objective(
      sc.span_corruption, make_documents(3), {"inputs": 512, "targets": 114}, seqio.ByteVocabulary()
    )
  with pytest.raises(ValueError, match="targets length of 64 would truncate"):
    _run_objective(
      sc.prefix_lm, make_documents(3), {"inputs": 128, "targets": 64}, seqio.ByteVocabulary()
    )


def test_long_documents_are_chunked_and_split():
  vocabulary = seqio.ByteVocabulary()
  # 5000 bytes: far longer than a piece; 70000: longer than a chunk, of which one random
  # 65536-aligned chunk is kept (T5's select_random_chunk): 65536 or the 4464 after it.
  examples, _ = _run_objective(
    sc.span_corruption, ["x" * 5000], {"inputs": 128, "targets": 32}, vocabulary
  )
  raw_length, _ = sc.random_spans_helper(128)
  assert len(examples) == -(-5000 // raw_length)
  kept = set()
  for seed in range(6):
    examples, _ = _run_objective(sc.lm, ["y" * 70000], {"targets": 1001}, vocabulary, seed=seed)
    kept.add(sum(len(ex["targets"]) for ex in examples))
  assert kept == {65536, 70000 - 65536}


def test_empty_and_invalid_documents():
  vocabulary = seqio.ByteVocabulary()
  documents = [b"", b"   \n\t ", b"caf\xc3 ok \xff\xfe", b"fine"]
  ds = tf.data.Dataset.from_tensor_slices({"text": tf.constant(documents)})
  cleaned = [x["targets"] for x in preprocessors.clean_documents(ds).as_numpy_iterator()]
  assert cleaned == ["caf\ufffd ok \ufffd\ufffd".encode(), b"fine"]
  # Nothing at or above 0xF5 survives, so ByT5 sentinels stay unambiguous.
  assert max(max(vocabulary.encode(c.decode())) for c in cleaned) < 0xF5 + 3


def test_prefix_lm_splits_each_piece_once(make_documents):
  vocabulary = seqio.ByteVocabulary()
  documents = make_documents(10, seed=5)
  examples, _ = _run_objective(sc.prefix_lm, documents, {"inputs": 64, "targets": 64}, vocabulary)
  stream = [t for ex in examples for t in ex["inputs"].tolist() + ex["targets"].tolist()]
  assert stream == [t for d in documents for t in vocabulary.encode(d)]
  splits = [len(ex["inputs"]) for ex in examples[:-1]]
  assert all(1 <= s <= 63 for s in splits) and len(set(splits)) > 1


def test_lm_pieces_leave_room_for_eos(make_documents):
  vocabulary = seqio.ByteVocabulary()
  documents = make_documents(10, seed=6)
  examples, _ = _run_objective(sc.lm, documents, {"targets": 50}, vocabulary)
  assert [len(ex["targets"]) for ex in examples[:-1]] == [49] * (len(examples) - 1)
  assert "inputs" not in examples[0]
