"""interactive.InteractiveModel: the same numbers as train.py's train / evaluate / infer, loading
from every checkpoint kind, and its decoding options. Tiny byte-level copy task, 8 fake devices."""

import json

import jax
import numpy as np
import pytest

import tests.copy_tasks  # noqa: F401  (registers test_copy)
import train
from interactive import InteractiveModel, default_vocabulary
from models.config import T5Config
from models.network import Transformer
from tests.test_train import LENGTHS, TASK, TINY, final_params, run_train
from trainer import optimizers

LR = 0.01


def interactive(**kwargs):
  args = dict(task_feature_lengths=LENGTHS, batch_size=8, learning_rate=optimizers.constant(LR))
  args.update(kwargs)
  return InteractiveModel(TINY, **args)


def host(tree):
  return jax.tree.map(np.asarray, tree)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A train.py run of 30 steps on the copy task, and an interactive model of the same 30."""
  run = tmp_path_factory.mktemp("run")
  run_train(run, train_steps=30, checkpoint_period=30)
  model = interactive()
  records = model.train(TASK, 20, log_every=5, show_progress=False)
  records += model.train(TASK, 10, log_every=5, show_progress=False)  # resumes the stream
  return run, model, records


def test_train_matches_train_py(trained):
  run, model, records = trained
  step, expected = final_params(run)
  assert step == model.step == 30
  got = host(model.params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  losses = {r["step"]: r["train/loss"] for r in records}
  with open(run / "metrics.jsonl") as f:
    logged = {row["step"]: row["train/loss"] for row in map(json.loads, f) if "train/loss" in row}
  for s in (5, 10, 30):  # a record is its window's mean; train.py logged every step here
    assert losses[s] == pytest.approx(np.mean([logged[s - i] for i in range(5)]), rel=1e-5)
  assert [r["step"] for r in model.history] == [5, 10, 15, 20, 25, 30]
  assert losses[30] < 0.8 * losses[5]


def test_load_train_dir_and_evaluate_like_train_py(trained, tmp_path):
  run, model, _ = trained
  loaded = InteractiveModel.load(str(run), task_feature_lengths=LENGTHS, batch_size=8)
  assert loaded.config == TINY  # read from MODEL_DIR/model_config.json
  expected = train.evaluate(
    checkpoint_path=str(run),
    model_config=TINY,
    mixture_or_task_name=TASK,
    task_feature_lengths=LENGTHS,
    batch_size=8,
    output_dir=str(tmp_path / "eval"),
    infer_eval_examples=8,
  )
  got = loaded.evaluate(TASK, max_examples=8)
  assert set(got) == set(expected) and "test_copy/bleu" in got
  for k in expected:
    assert got[k] == pytest.approx(expected[k], rel=1e-5), k


def test_predict_and_score_match_infer(trained, tmp_path):
  run, model, _ = trained
  texts = list(tests.copy_tasks.TEXTS["validation"][:5])
  (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
  train.infer(
    checkpoint_path=str(run),
    model_config=TINY,
    output_file=str(tmp_path / "o.jsonl"),
    batch_size=8,
    task_feature_lengths=LENGTHS,
    input_file=str(tmp_path / "in.txt"),
    vocabulary=default_vocabulary(TINY),
  )
  expected = [json.loads(line) for line in open(tmp_path / "o.jsonl")]
  got = model.predict(texts, return_scores=True)
  assert [p for p, _ in got] == [e["prediction"] for e in expected]
  np.testing.assert_allclose([s for _, s in got], [e["score"] for e in expected], rtol=1e-5)
  # a trained copier prefers the copy to a shuffled string
  scores = model.score(texts, texts)
  junk = model.score(texts, ["".join(sorted(t)) for t in texts])
  assert scores.shape == (5,) and np.all(scores > junk)


def test_decoding_options(trained):
  _, model, _ = trained
  texts = ["alpha beta", "gamma"]
  greedy = model.predict(texts)
  assert model.predict(texts, method="sample", top_k=1) == greedy
  samples = model.predict(texts * 4, method="sample", temperature=3.0, seed=1)
  assert model.predict(texts * 4, method="sample", temperature=3.0, seed=1) == samples
  assert len(set(samples)) > 2  # hot sampling differs between rows
  beam = model.predict(texts, method="beam", num_beams=4, return_scores=True)
  greedy_scored = model.predict(texts, return_scores=True)
  # beam's best is at least as likely as greedy's under the length penalty it ranks by
  for (_, beam_score), (_, greedy_score), (g, _) in zip(beam, greedy_scored, greedy_scored):
    n = len(g.encode()) + 1
    assert beam_score >= greedy_score / ((5 + n) / 6) ** 0.6 - 1e-4
  short = model.predict(texts, max_decode_length=3)
  assert all(g.startswith(s) and len(s.encode()) <= 3 for g, s in zip(greedy, short))


def test_translate_is_predict_with_the_t5_prompt(trained):
  _, model, _ = trained
  assert model.translate(
    ["Open it."], source_language="en", target_language="German"
  ) == model.predict(["translate English to German: Open it."])


def test_save_load_roundtrips_xt5_and_hugging_face(trained, tmp_path):
  _, model, _ = trained
  texts, targets = ["abc def", "ghi"], ["abc def", "ghi"]
  expected = model.score(texts, targets)
  for loaded in (
    InteractiveModel.load(
      model.save(str(tmp_path / "xt5")), batch_size=8, task_feature_lengths=LENGTHS
    ),
    InteractiveModel.load(
      model.save_hf(str(tmp_path / "hf")), batch_size=8, task_feature_lengths=LENGTHS
    ),
  ):
    np.testing.assert_allclose(loaded.score(texts, targets), expected, rtol=1e-5)


def test_train_on_examples_and_keep_state_across_calls():
  model = interactive(learning_rate=optimizers.constant(3e-3))
  pairs = [(f"copy: w{i}x", f"w{i}x") for i in range(8)]
  first = model.train(pairs, 8, log_every=8, show_progress=False)
  again = model.train(
    [{"inputs": x, "targets": y} for x, y in pairs], 8, log_every=8, show_progress=False
  )
  assert model.step == 16 and again[0]["step"] == 16
  assert again[0]["train/loss"] < first[0]["train/loss"]
  assert set(model.evaluate(pairs)) == {
    f"{model._task_name(pairs)}/loss",
    f"{model._task_name(pairs)}/accuracy",
  }


def test_clear_errors(trained):
  _, model, _ = trained
  with pytest.raises(KeyError, match="test_copy"):
    model.train("test_cpy", 1)
  with pytest.raises(ValueError, match="cannot read 'prefix_lm' features"):
    InteractiveModel(TINY, converter="prefix_lm")
  with pytest.raises(ValueError, match="no known vocabulary has vocab_size 1000"):
    InteractiveModel(TINY.replace(vocab_size=1000))
  with pytest.raises(ValueError, match="vocab_size"):
    InteractiveModel(
      T5Config(
        vocab_size=256,
        d_model=32,
        num_heads=2,
        head_dim=16,
        d_ff=64,
        num_encoder_layers=1,
        num_decoder_layers=1,
      ),
      vocabulary=TASK,
    )
  with pytest.raises(ValueError, match="pairs"):
    model.train([("only an input",)], 1)
  with pytest.raises(TypeError, match="list of strings"):
    model.predict("one string")
  with pytest.raises(ValueError, match="whole multiple of the 8 data-parallel devices"):
    model.train(TASK, 1, batch_size=12)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    InteractiveModel.load("/nonexistent/dir")


def test_mrt5_trains_evaluates_decodes_and_reports_deletion():
  """A gated (MrT5) model: train reports the deleted fraction and α, evaluate the deleted
  fraction, predict/score/translate delete hard, and deleted_fraction(texts) is the gate's."""
  from models import mrt5
  from trainer import state as state_lib

  gated = TINY.replace(delete_gate_layer=1, use_softmax1=True)
  deletion = state_lib.DeletionConfig(target=0.9, k_p=2.0, alpha0=0.1)
  model = InteractiveModel(
    gated,
    task_feature_lengths=LENGTHS,
    batch_size=8,
    learning_rate=optimizers.constant(LR),
    deletion=deletion,
    deletion_bucket=8,
  )
  # a gate that deletes about half of the tokens: logits of about ±30
  params = host(model.params)
  ff = params["encoder"]["delete_gate"]["feed_forward"]
  w = np.random.default_rng(0).normal(size=ff["kernel"].shape)
  ff["kernel"] = (1e3 * w / np.linalg.norm(w)).astype(np.float32)
  ff["bias"] = np.zeros_like(ff["bias"])
  model = InteractiveModel(
    gated,
    params,
    task_feature_lengths=LENGTHS,
    batch_size=8,
    learning_rate=optimizers.constant(LR),
    deletion=deletion,
    deletion_bucket=8,
  )
  texts = ["Kane rito musa.", "Da gufe pi le vo.", "Ka."]
  fractions = model.deleted_fraction(texts)
  vocab = model.vocabulary
  for text, got in zip(texts, fractions):
    ids = np.asarray([vocab.encode(text) + [vocab.eos_id]], np.int32)
    gate = Transformer(gated).apply({"params": params}, ids, method="delete_gate")
    want = mrt5.deleted_fraction(gate, ids > 0, gated.gate_threshold)
    assert got == pytest.approx(float(want), abs=1e-6)
  assert 0 < fractions.mean() < 1

  predictions = model.predict(texts)
  assert len(predictions) == 3 and all(isinstance(p, str) for p in predictions)
  assert len(model.translate(["Open."], method="beam", num_beams=2)) == 1
  scores = model.score(texts, texts)
  assert scores.shape == (3,) and np.all(np.isfinite(scores)) and np.all(scores <= 0)

  pairs = [(f"copy: w{i}x", f"w{i}x") for i in range(8)]
  records = model.train(pairs, 4, log_every=2, show_progress=False)
  assert [r["step"] for r in records] == [2, 4]
  for r in records:
    assert 0 <= r["train/deleted_fraction"] <= 1 and r["train/gate_loss"] <= 0
  assert records[1]["train/alpha"] != pytest.approx(
    0.1
  )  # the controller moved α (kept across calls)
  alpha = float(model._controller["alpha"])
  model.train(pairs, 1, log_every=1, show_progress=False)
  assert model.history[-1]["train/alpha"] == pytest.approx(alpha)
  results = model.evaluate(pairs)
  name = model._task_name(pairs)
  assert 0 <= results[f"{name}/deleted_fraction"] <= 1
  with pytest.raises(ValueError, match="needs an MrT5 config"):
    interactive().deleted_fraction(texts)
