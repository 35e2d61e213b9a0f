"""Decoder-only (prefix-LM) models end to end: train.py's train -> evaluate -> infer, and
InteractiveModel's predict / score / translate / train / evaluate, on a tiny model that learns
the fixed-length byte copy task (tests/copy_tasks.py) in 150 steps, trained once per module;
prompts decode exactly as `models.decoding.decode` does. Evaluation and inference run on 8 fake
CPU devices, training on one (faster for steps this small)."""

import json

import numpy as np
import pytest

import tests.copy_tasks
import train
from interactive import InteractiveModel
from models import decoding
from models.config import T5Config
from trainer import infer, optimizers
from trainer import mesh as mesh_lib
from trainer import predict as predict_lib

TASK = tests.copy_tasks.FIXED_NAME
TEXTS = tests.copy_tasks.FIXED_TEXTS["validation"]
LENGTHS = {"inputs": 16, "targets": 16}
TINY_LM = T5Config(
  vocab_size=384,
  d_model=32,
  num_heads=2,
  head_dim=16,
  d_ff=64,
  num_encoder_layers=0,
  num_decoder_layers=2,
  architecture="decoder_only",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 150-step prefix-LM run on the copy task (its model copies nearly every row)."""
  model_dir = tmp_path_factory.mktemp("lm_run")
  train.train(
    model_dir=str(model_dir),
    model_config=TINY_LM,
    mixture_or_task_name=TASK,
    task_feature_lengths=LENGTHS,
    train_steps=150,
    batch_size=16,
    converter="prefix_lm",
    learning_rate=optimizers.constant(0.02),
    checkpoint_period=150,
    log_period=50,
    eval_period=None,
    mesh_shape={"data": 1},  # tiny steps: one device beats 8 fake ones on 2 cores
    show_progress=False,
  )
  return model_dir


@pytest.fixture(scope="module")
def model(run):
  return InteractiveModel.load(str(run), task_feature_lengths=LENGTHS, batch_size=16)


def test_converter_follows_the_architecture():
  assert mesh_lib.model_converter(TINY_LM) == "decoder_only"
  assert mesh_lib.model_converter(TINY_LM, "prefix_lm") == "prefix_lm"
  assert mesh_lib.model_converter(TINY_LM.replace(architecture="encoder_decoder")) == (
    "encoder_decoder"
  )
  with pytest.raises(mesh_lib.ConfigError, match="cannot read 'encoder_decoder'"):
    mesh_lib.model_converter(TINY_LM, "encoder_decoder")
  with pytest.raises(mesh_lib.ConfigError, match="cannot read 'prefix_lm'"):
    mesh_lib.model_converter(TINY_LM.replace(architecture="encoder_decoder"), "prefix_lm")
  with pytest.raises(mesh_lib.ConfigError, match="unknown feature converter"):
    mesh_lib.model_converter(TINY_LM, "lm")


def test_evaluate_and_infer_a_trained_prefix_lm(run, model, tmp_path):
  # the default converter of a decoder-only model ('decoder_only') makes the same features
  results = train.evaluate(
    checkpoint_path=str(run),
    model_config=TINY_LM,
    mixture_or_task_name=TASK,
    task_feature_lengths=LENGTHS,
    batch_size=16,
    output_dir=str(tmp_path / "eval"),
    eval_batches=1,
  )
  assert results[f"{TASK}/accuracy"] > 0.9
  assert results[f"{TASK}/bleu"] > 60  # an untrained model scores ~0: nothing is copied
  got = model.evaluate(TASK, eval_batches=1)  # the interactive model reports the same
  assert set(got) == set(results)
  for k in results:
    assert got[k] == pytest.approx(results[k], rel=1e-5), k

  args = dict(
    checkpoint_path=str(run),
    model_config=TINY_LM,
    batch_size=16,
    task_feature_lengths=LENGTHS,
    converter="prefix_lm",
  )
  n = train.infer(output_file=str(tmp_path / "task.jsonl"), mixture_or_task_name=TASK, **args)
  rows = [json.loads(line) for line in open(tmp_path / "task.jsonl")]
  assert n == len(rows) == len(TEXTS) and [r["input"] for r in rows] == TEXTS
  assert sum(r["prediction"] == r["input"] for r in rows) >= 10
  assert all(r["score"] <= 0 for r in rows)

  (tmp_path / "pairs.txt").write_text(f"{TEXTS[0]}\t{TEXTS[0]}\n{TEXTS[1]}\tzzzzzzzzzzzz\n")
  train.infer(
    output_file=str(tmp_path / "scores.jsonl"),
    input_file=str(tmp_path / "pairs.txt"),
    mixture_or_task_name=TASK,
    mode="score",
    **args,
  )
  copy, junk = [json.loads(line)["score"] for line in open(tmp_path / "scores.jsonl")]
  assert copy > -2 and junk < copy - 10


def test_interactive_predict_and_score_match_infer(run, model, tmp_path):
  assert model.converter == "decoder_only"
  texts = TEXTS[:5]
  (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
  train.infer(
    checkpoint_path=str(run),
    model_config=TINY_LM,
    output_file=str(tmp_path / "o.jsonl"),
    batch_size=16,
    task_feature_lengths=LENGTHS,
    input_file=str(tmp_path / "in.txt"),
    vocabulary=tests.copy_tasks.BYTES,
  )
  expected = [json.loads(line) for line in open(tmp_path / "o.jsonl")]
  got = model.predict(texts, return_scores=True)
  assert [p for p, _ in got] == [e["prediction"] for e in expected]
  np.testing.assert_allclose([s for _, s in got], [e["score"] for e in expected], rtol=1e-5)
  assert sum(p == t for (p, _), t in zip(got, texts)) >= 4
  # greedy's score is the log-likelihood score() gives the same continuation
  np.testing.assert_allclose(
    model.score(texts, [p for p, _ in got]), [s for _, s in got], atol=1e-4
  )
  scores = model.score(texts, texts)
  junk = model.score(texts, ["".join(sorted(t)) for t in texts])
  assert scores.shape == (5,) and np.all(scores > junk)
  assert model.predict(texts, max_decode_length=3) == [p[:3] for p, _ in got]
  assert len(model.translate(["Ka ne."], target_language="de")) == 1


def test_interactive_trains_a_prefix_lm_on_pairs(run):
  model = InteractiveModel.load(
    str(run),
    converter="prefix_lm",
    task_feature_lengths=LENGTHS,
    batch_size=8,
    learning_rate=optimizers.constant(0.02),
    mesh_shape={"data": 1},
  )
  before = np.array(model.params["decoder"]["decoder_norm"]["scale"], copy=True)
  pairs = [(f"Wu{i}ka.", f"Wu{i}ka.") for i in range(8)]
  first = model.train(pairs, 3, log_every=3, show_progress=False)
  again = model.train(pairs, 3, log_every=3, show_progress=False)  # resumes the stream
  assert model.step == 6 and [r["step"] for r in model.history] == [3, 6]
  assert 0 < again[0]["train/loss"] < first[0]["train/loss"] * 1.5
  assert not np.array_equal(before, np.asarray(model.params["decoder"]["decoder_norm"]["scale"]))


def test_prompt_decodes_like_decoding_decode(run):
  # one device, so the predict fn and the direct call run the same computation
  model = InteractiveModel.load(
    str(run), task_feature_lengths=LENGTHS, batch_size=8, mesh_shape={"data": 1}
  )
  inputs = [tests.copy_tasks.BYTES.encode(t) + [1] for t in TEXTS[:3]] + [[]]  # an empty input too
  features = infer.encode_features(inputs, 16, 8, converter="prefix_lm")
  width = predict_lib.prompt_length(LENGTHS)
  prompt = predict_lib.prompt_batch(features, width)["decoder_prompt_tokens"]
  assert prompt.shape == (8, 17)
  for row, ids in enumerate(inputs):  # [0, inputs..., EOS], 0-padded
    assert prompt[row].tolist() == [0, *ids] + [0] * (16 - len(ids))
  assert not prompt[4:].any()
  predict = predict_lib.make_predict_fn(
    model.module, model.params, model.placement, max_decode_length=16, prompt_length=width
  )
  tokens, scores = predict(features)
  direct_tokens, direct_scores = decoding.decode(
    model.module,
    model.params,
    {"decoder_prompt_tokens": prompt},
    max_decode_length=16,
    prefix_lm=True,
  )
  np.testing.assert_array_equal(tokens, np.asarray(direct_tokens))
  np.testing.assert_array_equal(scores, np.asarray(direct_scores))
  assert infer.decode_prediction(tests.copy_tasks.BYTES, tokens[0]) == TEXTS[0]  # it copies
  with pytest.raises(ValueError, match="does not fit the prompt width"):
    predict_lib.prompt_batch(features, 5)
