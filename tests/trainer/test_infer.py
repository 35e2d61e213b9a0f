"""Inference to JSONL from tasks and text files, resuming, with fake model callables
(trainer/infer.py)."""

import json
import logging

import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks
from trainer import infer

BYTES = seqio.ByteVocabulary()
FEATURES = {
  "inputs": seqio.Feature(BYTES, add_eos=True),
  "targets": seqio.Feature(BYTES, add_eos=True),
}


class CopyModel:
  """predict_fn: the encoder input copied (EOS kept, zero padded), score = -input length.
  score_fn: -number of target tokens. Records the batches; can fail after `fail_after` calls."""

  def __init__(self, fail_after=None):
    self.batches, self.fail_after = [], fail_after

  def _record(self, batch):
    if self.fail_after is not None and len(self.batches) == self.fail_after:
      raise KeyboardInterrupt("simulated interruption")
    self.batches.append({k: v.copy() for k, v in batch.items()})

  def predict(self, batch):
    self._record(batch)
    tokens_BS = batch["encoder_input_tokens"]
    return tokens_BS, -(tokens_BS != 0).sum(axis=1).astype(np.float32)

  def score(self, batch):
    self._record(batch)
    return -batch["decoder_loss_weights"].sum(axis=1).astype(np.float32)


def _read(path):
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _seqio_features(converter, inputs, targets, lengths):
  ds = tf.data.Dataset.from_generator(
    lambda: iter([{"inputs": i, "targets": t} for i, t in zip(inputs, targets)]),
    output_signature={
      "inputs": tf.TensorSpec([None], tf.int32),
      "targets": tf.TensorSpec([None], tf.int32),
    },
  )
  converted = converter(ds, lengths)
  return {
    k: np.stack([ex[k] for ex in converted.as_numpy_iterator()]) for k in converted.element_spec
  }


@pytest.mark.parametrize("converter", ["encoder_decoder", "decoder_only", "prefix_lm"])
def test_encode_features_matches_seqio_converter(converter):
  inputs, targets = [[5, 6, 7, 1], [8, 1]], [[9, 10, 1], [11, 12, 13, 14, 1]]
  expected = _seqio_features(
    tasks.feature_converter(converter, pack=False), inputs, targets, {"inputs": 6, "targets": 5}
  )
  ours = infer.encode_features(inputs, 6, 3, targets, 5, converter)
  assert set(ours) == set(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(ours[k][:2], v, err_msg=k)
    assert ours[k].dtype == np.int32 and not ours[k][2].any()  # padding row
  if converter == "encoder_decoder":
    assert set(infer.encode_features(inputs, 6, 2)) == {"encoder_input_tokens"}
  else:  # to predict: seqio's features of the inputs with one pad target
    expected = _seqio_features(
      seqio.PrefixLMFeatureConverter(pack=False), inputs, [[], []], {"inputs": 6, "targets": 1}
    )
    ours = infer.encode_features(inputs, 6, 2, converter=converter)
    for k, v in expected.items():
      np.testing.assert_array_equal(ours[k], v, err_msg=k)


def test_truncate_keeps_eos_and_decode_stops_at_eos():
  assert infer.truncate([5, 6, 7, 8, 1], 3, eos_id=1) == ([5, 6, 1], True)
  assert infer.truncate([5, 6, 7, 8], 3, eos_id=1) == ([5, 6, 7], True)
  assert infer.truncate([5, 1], 3, eos_id=1) == ([5, 1], False)
  hi = [ord(c) + 3 for c in "hi"]
  assert infer.decode_prediction(BYTES, [*hi, 1, 0, 0]) == "hi"
  assert infer.decode_prediction(BYTES, [*hi, 0, 0]) == "hi"  # no EOS: padding dropped


def test_infer_file_predict_copies_inputs_in_order_with_padding(tmp_path, caplog):
  lines = ["Hallo Welt", "", "naïve 日本", "x" * 40, "tab\tinside"]
  src = tmp_path / "in.txt"
  src.write_text("\n".join(lines) + "\n", encoding="utf-8")
  model = CopyModel()
  with caplog.at_level(logging.WARNING, logger="trainer.infer"):
    n = infer.infer_file(
      src,
      tmp_path / "out" / "pred.jsonl",
      BYTES,
      inputs_length=16,
      batch_size=2,
      predict_fn=model.predict,
    )
  assert n == 5
  records = _read(tmp_path / "out" / "pred.jsonl")
  # The 40-byte line is cut to 15 bytes + EOS; every other prediction is its input.
  assert [r["prediction"] for r in records] == [*lines[:3], "x" * 15, lines[4]]
  assert [r["input"] for r in records] == lines
  assert [r["score"] for r in records] == [-11.0, -1.0, -(len(lines[2].encode()) + 1), -16.0, -11.0]
  assert all(set(r) == {"input", "prediction", "score"} for r in records)
  assert [len(b["encoder_input_tokens"]) for b in model.batches] == [2, 2, 2]
  assert not model.batches[-1]["encoder_input_tokens"][1].any()
  assert "truncated 1 inputs to 16 tokens" in caplog.text


def test_infer_file_score_mode(tmp_path):
  src = tmp_path / "pairs.tsv"
  src.write_text("one\teins\ntwo\tzwei\r\nthree\tdrei\tmit tab\n", encoding="utf-8")
  model = CopyModel()
  n = infer.infer_file(
    src,
    tmp_path / "scores.jsonl",
    BYTES,
    8,
    2,
    None,
    score_fn=model.score,
    mode="score",
    targets_length=6,
  )
  assert n == 3
  assert _read(tmp_path / "scores.jsonl") == [
    {"input": "one", "target": "eins", "score": -5.0},
    {"input": "two", "target": "zwei", "score": -5.0},
    {"input": "three", "target": "drei\tmit tab", "score": -6.0},  # truncated to 6 tokens
  ]
  first = model.batches[0]
  eins = [ord(c) + 3 for c in "eins"]
  np.testing.assert_array_equal(first["decoder_target_tokens"][0], eins + [1, 0])
  np.testing.assert_array_equal(first["decoder_input_tokens"][0], [0] + eins + [1])


def test_resume_after_interruption_equals_straight_run(tmp_path):
  src = tmp_path / "in.txt"
  src.write_text("\n".join(f"line {i}" for i in range(7)) + "\n", encoding="utf-8")
  straight = tmp_path / "straight.jsonl"
  assert infer.infer_file(src, straight, BYTES, 16, 2, CopyModel().predict) == 7

  resumed = tmp_path / "resumed.jsonl"
  with pytest.raises(KeyboardInterrupt):
    infer.infer_file(src, resumed, BYTES, 16, 2, CopyModel(fail_after=2).predict)
  assert len(_read(resumed)) == 4  # two batches were flushed before the interruption
  with open(resumed, "a", encoding="utf-8") as f:
    f.write('{"input": "line 4", "predic')  # a write cut off mid-line
  model = CopyModel()
  assert infer.infer_file(src, resumed, BYTES, 16, 2, model.predict) == 7
  assert resumed.read_bytes() == straight.read_bytes()
  assert len(model.batches) == 2  # only lines 4..6 were run
  assert BYTES.decode(model.batches[0]["encoder_input_tokens"][0].tolist()) == "line 4"

  # A finished output: nothing to run. A broken terminated last line is dropped too.
  assert infer.infer_file(src, resumed, BYTES, 16, 2, CopyModel(fail_after=0).predict) == 7
  resumed.write_bytes(straight.read_bytes()[:-1] + b"}\n")  # last line now invalid JSON
  assert infer.infer_file(src, resumed, BYTES, 16, 2, CopyModel().predict) == 7
  assert resumed.read_bytes() == straight.read_bytes()


def test_resume_refuses_other_outputs(tmp_path):
  src = tmp_path / "in.txt"
  src.write_text("a\nb\n", encoding="utf-8")
  out = tmp_path / "out.jsonl"
  out.write_text('{"input": "a", "prediction": "a", "score": 0}\nnot json\n{"input": "b"}\n')
  with pytest.raises(ValueError, match=r"out.jsonl:2 is not a JSON object"):
    infer.infer_file(src, out, BYTES, 8, 2, CopyModel().predict)
  out.write_text("".join('{"input": "a", "prediction": "a", "score": 0}\n' for _ in range(3)))
  with pytest.raises(ValueError, match="already has 3 lines but .* has only 2 examples"):
    infer.infer_file(src, out, BYTES, 8, 2, CopyModel().predict)
  out.write_text('{"input": "a", "prediction": "a", "score": 0}\n')
  src.write_text("a\tA\nb\tB\n", encoding="utf-8")
  with pytest.raises(ValueError, match="another mode's results"):
    infer.infer_file(
      src, out, BYTES, 8, 2, None, score_fn=CopyModel().score, mode="score", targets_length=4
    )


def test_infer_file_errors(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  with pytest.raises(ValueError, match=r"input file .*empty.txt is empty"):
    infer.infer_file(empty, tmp_path / "o.jsonl", BYTES, 8, 2, CopyModel().predict)
  pairs = tmp_path / "pairs.tsv"
  pairs.write_text("a\tb\nc\td\nno tab here\n")
  model = CopyModel()
  with pytest.raises(ValueError, match=r"pairs.tsv:3 has no tab"):
    infer.infer_file(
      pairs,
      tmp_path / "o.jsonl",
      BYTES,
      8,
      2,
      None,
      score_fn=model.score,
      mode="score",
      targets_length=4,
    )
  assert not model.batches  # checked before any model call
  with pytest.raises(ValueError, match="needs targets_length"):
    infer.infer_file(
      pairs, tmp_path / "o.jsonl", BYTES, 8, 2, None, score_fn=model.score, mode="score"
    )
  with pytest.raises(ValueError, match="needs a score_fn"):
    infer.infer_file(pairs, tmp_path / "o.jsonl", BYTES, 8, 2, None, mode="score", targets_length=4)
  with pytest.raises(ValueError, match="unknown mode 'beam'"):
    infer.infer_file(pairs, tmp_path / "o.jsonl", BYTES, 8, 2, model.predict, mode="beam")
  with pytest.raises(ValueError, match="predict_fn must return tokens"):
    infer.infer_file(
      pairs,
      tmp_path / "o.jsonl",
      BYTES,
      8,
      2,
      lambda b: (b["encoder_input_tokens"][:1], np.zeros(2)),
    )


def _copy_task(make_text_task, texts, name="infercopy"):
  def to_pair(ds):
    return ds.map(lambda x: {"inputs": x["text"], "targets": tf.strings.upper(x["text"])})

  return make_text_task(
    name,
    texts,
    [to_pair, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    FEATURES,
  )


def test_infer_task_predict_and_score(make_text_task, tmp_path):
  texts = ["alpha", "beta", "gamma", "delta", "epsilon"]
  name = _copy_task(make_text_task, {"validation": texts})
  lengths = {"inputs": 16, "targets": 16}
  model = CopyModel()
  out = tmp_path / "pred.jsonl"
  assert infer.infer_task(name, "validation", lengths, 2, model.predict, out) == 5
  assert _read(out) == [
    {"input": t, "prediction": t, "score": -(len(t) + 1.0), "target": t.upper()} for t in texts
  ]
  assert [len(b["encoder_input_tokens"]) for b in model.batches] == [2, 2, 2]

  scores = tmp_path / "score.jsonl"
  assert (
    infer.infer_task(
      name,
      "validation",
      lengths,
      4,
      None,
      scores,
      score_fn=CopyModel().score,
      mode="score",
      max_examples=3,
    )
    == 3
  )
  assert _read(scores) == [
    {"input": t, "target": t.upper(), "score": -(len(t) + 1.0)} for t in texts[:3]
  ]


def test_infer_task_mixture_tags_tasks_and_errors(make_text_task, tmp_path):
  first = _copy_task(make_text_task, {"validation": ["a", "b", "c"]})
  second = _copy_task(make_text_task, {"validation": ["d", "e"]})
  mixture = seqio.MixtureRegistry.add(f"infermix_{first}", [first, second], default_rate=1.0)
  out = tmp_path / "mix.jsonl"
  assert (
    infer.infer_task(
      mixture.name, "validation", {"inputs": 8, "targets": 8}, 4, CopyModel().predict, out
    )
    == 5
  )
  assert [(r["task"], r["prediction"]) for r in _read(out)] == [
    (first, "a"),
    (first, "b"),
    (first, "c"),
    (second, "d"),
    (second, "e"),
  ]

  with pytest.raises(tasks.UnknownTaskError, match="'translate_en_de'"):
    infer.infer_task("translate_en_dee", "validation", {"inputs": 8}, 4, CopyModel().predict, out)
  with pytest.raises(ValueError, match="has no split 'test'"):
    infer.infer_task(first, "test", {"inputs": 8}, 4, CopyModel().predict, out)
