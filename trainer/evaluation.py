"""Inference evaluation: task metrics (BLEU, chrF, ...) of decoded predictions via seqio.Evaluator.

    evaluator = InferenceEvaluator("translate_en_de", "validation",
                                   {"inputs": 512, "targets": 256}, batch_size=32,
                                   log_dir="runs/x/inference_eval")
    metrics = evaluator.evaluate(step, predict_fn)   # {"translate_en_de/bleu": 12.3, ...}

The split is read and cached once, at construction, as the unpacked features of the model's
feature converter (`converter`: seqio's EncDecFeatureConverter, or for a decoder-only model its
DecoderFeatureConverter / PrefixLMFeatureConverter); each `evaluate` decodes it with the model
callables of `trainer.infer` (fixed-size numpy batches, the last one padded with zero rows).
A decoder-only model's predictions are its continuations of the prompt (`trainer.predict`), so
the metrics are the same as an encoder-decoder model's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf
import tqdm

from tasks import pipeline, registry
from trainer import data, infer
from trainer import mesh as mesh_lib
from trainer import metrics as metrics_lib
from trainer import predict as predict_lib
from trainer import state as state_lib
from trainer.infer import PredictFn, ScoreFn

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
    converter: str = "encoder_decoder",
    log_dir: str | None = None,
    max_examples: int | None = None,
    seed: int = 0,
  ):
    """Reads and caches `split` of the task (or of each task of the mixture) that has
    metric_fns, as `converter`'s unpacked features; `max_examples` caps each task. With
    `log_dir`, seqio's TensorBoard and JSON loggers write metrics and each step's inference
    outputs under it."""
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
      feature_converter=pipeline.feature_converter(converter, pack=False),
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
    `score_fn` for tasks with score metrics); returns {"<task>/<metric>": value}, with an MrT5
    predict fn's (`predict_fn.deletion_counts`) hard-deletion metrics per task as well."""
    if _OutputType.SCORE in self._output_types and score_fn is None:
      raise ValueError(f"tasks {self.task_names} have score metrics: pass a score_fn")
    task_of = {id(ds): name for name, ds in self._evaluator.cached_model_datasets.items()}
    counts = getattr(predict_fn, "deletion_counts", None)
    deletion = {}  # task: its hard-deletion metrics

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
      before = dataclasses.replace(counts) if counts is not None else None
      indices, rows = [], []
      for batch_indices, features in batches(ds, "predict"):
        tokens_BL, _ = infer.run_predict(predict_fn, features, len(batch_indices), self.batch_size)
        indices.extend(int(i) for i in batch_indices)
        rows.extend(tokens_BL)
      if counts is not None and id(ds) in task_of:
        deletion[task_of[id(ds)]] = counts.since(before).metrics()
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
    results = flatten_metrics(future.result())
    for task, metrics in deletion.items():
      results.update({f"{task}/{k}": v for k, v in metrics.items()})
    return results


# ----------------------------------------------------------------------------------------------
# What train, evaluate and the interactive model report


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """When and how much a training run evaluates (T5X's eval period and batch counts)."""

  period: int | None = 1000  # steps between evaluations; None: never
  split: str = "validation"
  batches: int | None = 20  # teacher-forced batches per task; None: the whole split
  infer_examples: int | None = None  # decoded examples per task with metrics; None: all
  infer_batch_size: int | None = None  # None: the training batch size


def eval_tasks(name: str, split: str, with_metrics: bool = False) -> list[str]:
  """The tasks of `name` (a task or mixture) that have `split` (and, optionally, metrics)."""
  return [
    t.name
    for t in seqio.get_subtasks(registry.get(name))
    if split in t.splits and (has_metrics(t) or not with_metrics)
  ]


_REPORTED = ("loss", "accuracy", "deleted_fraction")


def teacher_forced_eval(
  eval_fn,
  params,
  name: str,
  split: str,
  task_feature_lengths: Mapping[str, int],
  batch_size: int,
  batch_sharding,
  *,
  converter: str = "encoder_decoder",
  pack: bool = True,
  max_batches: int | None = None,
) -> dict[str, float]:
  """Loss and accuracy per task of `name` on `split`: {"<task>/loss": ..., ...}; for an MrT5
  model also `<task>/deleted_fraction` (of the real input tokens, soft gate <= threshold)."""
  out = {}
  for task in eval_tasks(name, split):
    total = None
    for batch in data.eval_batches(
      task, split, task_feature_lengths, batch_size, converter, pack, max_batches
    ):
      sums = eval_fn(params, data.replicated_batch(batch, batch_sharding))
      sums = {k: float(data.to_host(v)) for k, v in sums.items()}
      total = sums if total is None else {k: total[k] + sums[k] for k in total}
    if total:
      m = state_lib.metrics_from_sums(total)
      # an MrT5 model's also the fraction of input tokens its gate deletes
      out.update({f"{task}/{k}": float(m[k]) for k in _REPORTED if k in m})
  return out


def make_inference_evaluator(
  mixture_or_task_name: str,
  split: str,
  task_feature_lengths: Mapping[str, int],
  batch_size: int,
  *,
  converter: str = "encoder_decoder",
  log_dir: str | None = None,
  max_examples: int | None = None,
  seed: int = 0,
) -> InferenceEvaluator | None:
  """A seqio-backed evaluator of `name`'s tasks with metrics, or None when there are none."""
  if not eval_tasks(mixture_or_task_name, split, True):
    return None
  return InferenceEvaluator(
    mixture_or_task_name,
    split,
    task_feature_lengths,
    batch_size,
    converter=converter,
    log_dir=log_dir,
    max_examples=max_examples,
    seed=seed,
  )


def evaluate_params(
  module,
  params,
  placement,
  eval_fn,
  evaluator: InferenceEvaluator | None,
  *,
  mixture_or_task_name: str,
  split: str,
  task_feature_lengths: Mapping[str, int],
  batch_size: int,
  converter: str = "encoder_decoder",
  pack: bool = True,
  eval_batches: int | None = None,
  decode: predict_lib.DecodeConfig = predict_lib.DecodeConfig(),
  seed: int = 0,
  step: int = 0,
) -> dict[str, float]:
  """Teacher-forced loss/accuracy per task, plus the evaluator's inference metrics (BLEU,
  ...) when there is one: what train, evaluate and the interactive model report."""
  results = teacher_forced_eval(
    eval_fn,
    params,
    mixture_or_task_name,
    split,
    task_feature_lengths,
    batch_size,
    placement.batch_sharding,
    converter=converter,
    pack=pack,
    max_batches=eval_batches,
  )
  if evaluator is not None:
    predict = predict_lib.make_predict_fn(
      module,
      params,
      placement,
      max_decode_length=task_feature_lengths["targets"],
      prompt_length=predict_lib.prompt_length(task_feature_lengths),
      decode=decode,
      seed=seed,
    )
    score = predict_lib.make_score_fn(
      module, params, placement, deletion_bucket=decode.deletion_bucket
    )
    results.update(evaluator.evaluate(step, predict, score))
  return results


def evaluate_checkpoint(
  *,
  checkpoint_path: str,
  model_config,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  batch_size: int,
  output_dir: str,
  split: str = "validation",
  converter: str | None = None,
  pack: bool = True,
  eval_batches: int | None = None,
  infer_eval_examples: int | None = None,
  decode: predict_lib.DecodeConfig = predict_lib.DecodeConfig(),
  mesh_shape=None,
  partitioning_rules="data_parallel",
  seed: int = 0,
) -> dict[str, float]:
  """Teacher-forced and inference metrics of a checkpoint; written to
  OUTPUT_DIR/eval_metrics.json and TensorBoard. `converter`: the model's feature converter
  (default: its architecture's, see `trainer.mesh.model_converter`)."""
  converter = mesh_lib.model_converter(model_config, converter)
  mesh_lib.check_positive(
    batch_size=batch_size, eval_batches=eval_batches, infer_eval_examples=infer_eval_examples
  )
  mesh_lib.check_feature_lengths(mixture_or_task_name, task_feature_lengths)
  mesh_lib.check_vocabulary(mixture_or_task_name, model_config)
  mesh_lib.check_split(mixture_or_task_name, split, "EVAL_SPLIT")
  mesh_lib.check_output_path(output_dir, "EVAL_OUTPUT_DIR", directory=True)
  placement, module, params, batch_size = mesh_lib.load_model(
    checkpoint_path,
    model_config,
    mesh_shape,
    partitioning_rules,
    converter=converter,
    pack=pack,
    task_feature_lengths=task_feature_lengths,
    batch_size=batch_size,
  )
  eval_fn = placement.jit(state_lib.make_eval_step(module))
  evaluator = make_inference_evaluator(
    mixture_or_task_name,
    split,
    task_feature_lengths,
    batch_size,
    converter=converter,
    log_dir=output_dir,
    max_examples=infer_eval_examples,
    seed=seed,
  )
  results = evaluate_params(
    module,
    params,
    placement,
    eval_fn,
    evaluator,
    mixture_or_task_name=mixture_or_task_name,
    split=split,
    task_feature_lengths=task_feature_lengths,
    batch_size=batch_size,
    converter=converter,
    pack=pack,
    eval_batches=eval_batches,
    decode=decode,
    seed=seed,
  )
  with metrics_lib.MetricsLogger(output_dir, total_steps=0, show_progress=False) as logger:
    logger.write(0, results, prefix="eval")
  if jax.process_index() == 0:
    with open(os.path.join(output_dir, "eval_metrics.json"), "w") as f:
      json.dump(results, f, indent=2, sort_keys=True)
  return results
