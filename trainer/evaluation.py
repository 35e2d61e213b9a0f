"""Inference evaluation: task metrics (BLEU, chrF, ...) of decoded predictions via seqio.Evaluator.

    evaluator = InferenceEvaluator("translate_en_de", "validation",
                                   {"inputs": 512, "targets": 256}, batch_size=32,
                                   log_dir="runs/x/inference_eval")
    metrics = evaluator.evaluate(step, predict_fn)   # {"translate_en_de/bleu": 12.3, ...}

The split is read and cached once, at construction; each `evaluate` decodes it with the model
callables of `trainer.infer` (fixed-size numpy batches, the last one padded with zero rows).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf
import tqdm

from tasks import registry
from trainer import infer
from trainer.infer import PredictFn, ScoreFn

__all__ = ["InferenceEvaluator", "PredictFn", "ScoreFn", "flatten_metrics"]

_OutputType = seqio.metrics.ModelOutputType


def has_metrics(task: seqio.Task) -> bool:
  """Whether seqio.Evaluator has anything to compute for `task`."""
  return bool(task.metric_fns or task.metric_objs)


def flatten_metrics(all_metrics: Mapping[str, Mapping[str, object]]) -> dict[str, float]:
  """seqio's {task: {metric: value}} as {"task/metric": float}; scalars only (numbers,
  size-1 arrays, `seqio.metrics.Scalar`): text, histograms and the like are left out."""
  flat = {}
  for task_name, task_metrics in all_metrics.items():
    for name, value in task_metrics.items():
      if isinstance(value, seqio.metrics.Scalar):
        value = value.value
      if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
      if isinstance(value, numbers.Real):
        flat[f"{task_name}/{name}"] = float(value)
  return flat


class InferenceEvaluator:
  """Task metrics (BLEU, chrF, ...) of decoded predictions via seqio.Evaluator."""

  def __init__(
    self,
    mixture_or_task_name: str,
    split: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    *,
    log_dir: str | None = None,
    max_examples: int | None = None,
    seed: int = 0,
  ):
    """Reads and caches `split` of the task (or of each task of the mixture) that has
    metric_fns; `max_examples` caps each task. With `log_dir`, seqio's TensorBoard and JSON
    loggers write metrics and each step's inference outputs under it."""
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_examples is not None and max_examples < 1:
      raise ValueError(f"max_examples must be >= 1 or None (all), got {max_examples}")
    provider = registry.get(mixture_or_task_name)  # unknown names: the close ones
    subtasks = seqio.get_subtasks(provider)
    if not any(split in t.splits and has_metrics(t) for t in subtasks):
      with_metrics = [t.name for t in subtasks if has_metrics(t)]
      raise ValueError(
        f"{mixture_or_task_name!r} has no task with metric_fns and a {split!r} split "
        f"(tasks with metrics: {with_metrics or 'none'}); evaluate a task with metrics "
        f"and that split, e.g. a translate_* task on 'validation'"
      )
    # one writer per file: only process 0 logs (every process computes the same metrics)
    loggers = (
      (seqio.TensorBoardLogger, seqio.JSONLogger) if log_dir and jax.process_index() == 0 else ()
    )
    self.batch_size = batch_size
    self._evaluator = seqio.Evaluator(
      mixture_or_task_name,
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split=split,
      seed=seed,
      sequence_length=dict(task_feature_lengths),
      num_examples=max_examples,
      shuffle=False,
      logger_cls=loggers,
      log_dir=log_dir,
      # Metrics right away, in this thread: `evaluate` returns them.
      async_compute_metrics=False,
    )
    self.task_names: list[str] = [t.name for t in self._evaluator.eval_tasks]
    self._output_types = {
      m.model_output_type for t in self._evaluator.eval_tasks for m in t.metric_objs
    }
    unsupported = self._output_types - {_OutputType.PREDICTION, _OutputType.SCORE}
    if unsupported:
      raise ValueError(
        f"{mixture_or_task_name!r} has metrics on "
        f"{sorted(t.name for t in unsupported)} model outputs; only "
        f"predictions and scores are supported"
      )

  def num_examples(self) -> dict[str, int]:
    """Cached examples per evaluated task."""
    return {
      name: int(ds.cardinality()) for name, ds in self._evaluator.cached_model_datasets.items()
    }

  def evaluate(
    self, step: int, predict_fn: PredictFn, score_fn: ScoreFn | None = None
  ) -> dict[str, float]:
    """Decodes every cached example with `predict_fn` (and scores the targets with
    `score_fn` for tasks with score metrics); returns {"<task>/<metric>": value}."""
    if _OutputType.SCORE in self._output_types and score_fn is None:
      raise ValueError(f"tasks {self.task_names} have score metrics: pass a score_fn")
    task_of = {id(ds): name for name, ds in self._evaluator.cached_model_datasets.items()}

    def batches(ds: tf.data.Dataset, what: str):
      """(indices [b], features [b, ...]) batches of an enumerated dataset, with a bar."""
      size = int(ds.cardinality())
      total = math.ceil(size / self.batch_size) if size >= 0 else None
      desc = f"{what} {task_of.get(id(ds), '')}".strip()
      yield from tqdm.tqdm(
        ds.batch(self.batch_size).as_numpy_iterator(), total=total, desc=desc, unit="batch"
      )

    def seqio_predict(ds: tf.data.Dataset, model_feature_shapes=None):
      del model_feature_shapes
      indices, rows = [], []
      for batch_indices, features in batches(ds, "predict"):
        tokens_BL, _ = infer.run_predict(predict_fn, features, len(batch_indices), self.batch_size)
        indices.extend(int(i) for i in batch_indices)
        rows.extend(tokens_BL)
      # seqio stacks the predictions into one array (NumPy 2 refuses ragged rows):
      # every row zero-padded to the longest.
      length = max((len(r) for r in rows), default=0)
      rows = [np.pad(r, (0, length - len(r))) for r in rows]
      return list(zip(indices, rows))

    def seqio_score(ds: tf.data.Dataset, model_feature_shapes=None):
      del model_feature_shapes
      results = []
      for batch_indices, features in batches(ds, "score"):
        scores_B = infer.run_score(score_fn, features, len(batch_indices), self.batch_size)
        results.extend((int(i), float(s)) for i, s in zip(batch_indices, scores_B))
      return results

    future, _ = self._evaluator.evaluate(
      compute_metrics=True,
      step=step,
      predict_fn=seqio_predict,
      score_fn=seqio_score if score_fn is not None else None,
    )
    return flatten_metrics(future.result())
