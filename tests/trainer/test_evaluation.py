"""Inference evaluation through seqio.Evaluator with fake model callables
(trainer/evaluation.py)."""

import json

import numpy as np
import pytest
import seqio

import tasks
from tasks import metrics
from trainer.evaluation import InferenceEvaluator, flatten_metrics
from trainer.predict import DeletionCounts

BYTES = seqio.ByteVocabulary()
FEATURES = {
  "inputs": seqio.Feature(BYTES, add_eos=True),
  "targets": seqio.Feature(BYTES, add_eos=True),
}
LENGTHS = {"inputs": 64, "targets": 64}


def _copy_task(
  make_text_task, texts, metric_fns=tuple(metrics.translation_metrics("en")), name="evalcopy"
):
  """inputs = targets = the text: copying the input is a perfect translation."""

  def to_pair(ds):
    return ds.map(lambda x: {"inputs": x["text"], "targets": x["text"]})

  return make_text_task(
    name,
    texts,
    [to_pair, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    FEATURES,
    metric_fns,
  )


class CopyModel:
  """predict_fn that returns the encoder input (EOS included, zero padded); records batches."""

  def __init__(self, garbage=False):
    self.batches, self.garbage = [], garbage

  def __call__(self, batch):
    self.batches.append({k: v.copy() for k, v in batch.items()})
    tokens_BS = batch["encoder_input_tokens"]
    if self.garbage:  # "qqqq" + EOS for every row
      tokens_BS = np.zeros_like(tokens_BS)
      tokens_BS[:, :4] = ord("q") + 3
      tokens_BS[:, 4] = 1
    return tokens_BS.astype(np.int32), -np.arange(len(tokens_BS), dtype=np.float32)


@pytest.fixture
def texts(make_documents):
  return make_documents(7, seed=1, words=(3, 8))


def test_copy_scores_100_garbage_scores_low_and_last_batch_is_padded(
  make_text_task, texts, tmp_path
):
  name = _copy_task(make_text_task, {"train": texts[:2], "validation": texts})
  evaluator = InferenceEvaluator(name, "validation", LENGTHS, batch_size=3, log_dir=str(tmp_path))
  assert evaluator.task_names == [name]
  model = CopyModel()
  result = evaluator.evaluate(5, model)
  assert result == pytest.approx({f"{name}/bleu": 100.0, f"{name}/chrf": 100.0})
  assert all(isinstance(v, float) for v in result.values())

  # 7 examples in batches of 3: 3 calls of exactly 3 rows, the last with 2 all-zero rows.
  assert [len(b["encoder_input_tokens"]) for b in model.batches] == [3, 3, 3]
  assert set(model.batches[0]) == {
    "encoder_input_tokens",
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_loss_weights",
  }
  last = model.batches[-1]
  assert all(not last[k][1:].any() for k in last) and last["encoder_input_tokens"][0].any()
  seen = np.concatenate([b["encoder_input_tokens"] for b in model.batches])[:7]
  assert sorted(BYTES.decode(row.tolist()) for row in seen) == sorted(texts)

  # seqio's loggers: TensorBoard events per task, metrics and this step's predictions as JSONL.
  assert list((tmp_path / name).glob("events.out.tfevents*"))
  logged = [
    json.loads(line) for line in (tmp_path / f"{name}-metrics.jsonl").read_text().splitlines()
  ]
  assert logged == [{"step": 5, "bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}]
  outputs = [
    json.loads(line) for line in (tmp_path / f"{name}-000005.jsonl").read_text().splitlines()
  ]
  assert [o["prediction"] for o in outputs] == texts  # every example once, in order

  garbage = evaluator.evaluate(6, CopyModel(garbage=True))
  assert garbage[f"{name}/bleu"] < 5 and garbage[f"{name}/chrf"] < 20


class HalfDeletingCopyModel(CopyModel):
  """CopyModel that reports, as an MrT5 predict fn does, hard deletion keeping the first half
  (rounded up) of each row's real tokens, on S' = S / 2 slots."""

  def __init__(self):
    super().__init__()
    self.deletion_counts = DeletionCounts()

  def __call__(self, batch):
    tokens_BS = batch["encoder_input_tokens"]
    S = tokens_BS.shape[1]
    kept_B = -(-(tokens_BS > 0).sum(axis=1) // 2)
    self.deletion_counts.add(tokens_BS, np.arange(S // 2)[None, :] < kept_B[:, None])
    return super().__call__(batch)


def test_an_mrt5_predict_fn_adds_its_hard_deletion_per_task(make_text_task, texts):
  name = _copy_task(make_text_task, {"validation": texts})
  evaluator = InferenceEvaluator(name, "validation", LENGTHS, batch_size=3)
  model = HalfDeletingCopyModel()
  for step in (1, 2):  # each call reports its own batches
    result = evaluator.evaluate(step, model)
    lengths = [len(t.encode()) + 1 for t in texts]  # bytes and EOS
    deleted = sum(n // 2 for n in lengths) / sum(lengths)
    assert result[f"{name}/decode_deleted_fraction"] == pytest.approx(deleted)
    assert result[f"{name}/decode_slots_fraction"] == pytest.approx(0.5)  # only real rows count
    assert result[f"{name}/bleu"] == pytest.approx(100.0)
  assert model.deletion_counts.real == 2 * sum(lengths)
  assert not set(evaluator.evaluate(3, CopyModel())) & {f"{name}/decode_deleted_fraction"}


def test_mixture_evaluates_only_tasks_with_metrics(make_text_task, texts):
  first = _copy_task(make_text_task, {"validation": texts[:3]})
  second = _copy_task(make_text_task, {"validation": texts[3:]})
  no_metrics = _copy_task(make_text_task, {"validation": texts}, metric_fns=())
  no_split = _copy_task(make_text_task, {"train": texts})
  mixture = seqio.MixtureRegistry.add(
    f"evalmix_{first}", [first, no_metrics, second, no_split], default_rate=1.0
  )
  evaluator = InferenceEvaluator(mixture.name, "validation", LENGTHS, batch_size=2, max_examples=3)
  assert evaluator.task_names == [first, second]
  assert evaluator.num_examples() == {first: 3, second: 3}  # max_examples caps each task
  model = CopyModel()
  result = evaluator.evaluate(0, model)
  assert set(result) == {f"{t}/{m}" for t in (first, second) for m in ("bleu", "chrf")}
  assert len(model.batches) == 4  # 2 batches per task, none for the tasks without metrics


def test_score_metrics_use_score_fn(make_text_task, texts):
  def mean_score(targets, scores):
    return {
      "mean_score": seqio.metrics.Scalar(float(np.mean(scores))),
      "n": len(targets),
      "text": seqio.metrics.Text("not a number"),
    }

  name = _copy_task(make_text_task, {"validation": texts[:5]}, metric_fns=[mean_score])
  evaluator = InferenceEvaluator(name, "validation", LENGTHS, batch_size=4)
  calls = []

  def score_fn(batch):
    calls.append(len(batch["decoder_target_tokens"]))
    return -(batch["decoder_loss_weights"].sum(axis=1)).astype(np.float32)

  expected = -np.mean([len(t.encode()) + 1 for t in texts[:5]])  # bytes + EOS
  assert evaluator.evaluate(1, CopyModel(), score_fn) == pytest.approx(
    {f"{name}/mean_score": expected, f"{name}/n": 5.0}
  )
  assert calls == [4, 4]
  with pytest.raises(ValueError, match="pass a score_fn"):
    evaluator.evaluate(2, CopyModel())


def test_flatten_metrics_keeps_scalars():
  flat = flatten_metrics(
    {
      "a": {
        "bleu": np.float32(3.5),
        "acc": np.array([0.25]),
        "s": seqio.metrics.Scalar(2),
        "t": seqio.metrics.Text("x"),
      }
    }
  )
  assert flat == {"a/bleu": 3.5, "a/acc": 0.25, "a/s": 2.0}


def test_bad_names_and_arguments(make_text_task, texts):
  with pytest.raises(tasks.UnknownTaskError, match="'translate_en_de'"):
    InferenceEvaluator("translate_en_dee", "validation", LENGTHS, 4)
  name = _copy_task(make_text_task, {"validation": texts}, metric_fns=())
  with pytest.raises(ValueError, match="no task with metric_fns"):
    InferenceEvaluator(name, "validation", LENGTHS, 4)
  with pytest.raises(ValueError, match="batch_size"):
    InferenceEvaluator(name, "validation", LENGTHS, 0)
