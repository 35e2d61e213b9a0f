"""xt5's one entry point: train, evaluate and infer T5-family models, configured with gin.

  python train.py --gin_file=configs/models/mt5/small.gin --gin_file=configs/runs/pretrain.gin \
    --gin.MIXTURE_OR_TASK_NAME="'mono'" --gin.MODEL_DIR="'runs/mt5_small'" --gin.TRAIN_STEPS=1000
  python train.py --gin_file=configs/runs/eval.gin --gin.CHECKPOINT_PATH="'runs/mt5_small'" ...
  python train.py --gin_file=configs/runs/infer.gin --gin.INPUT_FILE="'in.txt'" ...

A run gin picks the job (`train_script.run.job = @train_script.train`) and binds the T5X macros
(MODEL_DIR, TRAIN_STEPS, BATCH_SIZE, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, ...). `train`,
`evaluate` and `infer` below take explicit arguments; gin binds them here and nowhere else, so a
notebook can call them directly. Multi-host: pass --coordinator_address/--num_processes/
--process_id, or --distributed to read them from the environment (TPU pods, SLURM).
"""

from __future__ import annotations

from models import runtime

# XLA and TensorFlow settings, before either starts (and, run as a script, the malloc restart)
runtime.configure(reexec=__name__ == "__main__")

import argparse  # noqa: E402  (after runtime.configure)
import difflib
import glob
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np

from models import decoding, flops, partitioning
from models.config import T5Config
from models.network import Transformer
from trainer import checkpoints, data, optimizers
from trainer import metrics as metrics_lib
from trainer import params as params_lib
from trainer import state as state_lib

REPO = os.path.dirname(os.path.abspath(__file__))
CONFIG_GIN = "config.gin"  # MODEL_DIR/config.gin: the operative config

log = logging.getLogger("xt5")


class ConfigError(ValueError):
  """A gin file, binding or macro that cannot be used; the message says which and how to fix."""


class NonFiniteLossError(RuntimeError):
  """The loss or gradient norm became NaN/Inf; the message names the step."""


# ----------------------------------------------------------------------------------------------
# Model and parameters


def example_batch(
  converter: str, pack: bool, task_feature_lengths: Mapping[str, int], batch_size: int
) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of the model features the converter makes (what init and jit need)."""
  import tasks

  lengths = tasks.feature_converter(converter, pack).get_model_feature_lengths(
    dict(task_feature_lengths)
  )
  return {k: jax.ShapeDtypeStruct((batch_size, n), np.int32) for k, n in lengths.items()}


def check_vocabulary(mixture_or_task_name: str, cfg: T5Config) -> None:
  """Refuses a task whose vocabulary has ids past the model's embedding."""
  import tasks
  from tasks import vocab

  provider = tasks.get(mixture_or_task_name)
  for name, feature in provider.output_features.items():
    vocab.check_fits(
      feature.vocabulary, cfg.vocab_size, f"{mixture_or_task_name!r} {name} vocabulary"
    )


# ----------------------------------------------------------------------------------------------
# Evaluation pieces shared by train and evaluate


def _eval_tasks(name: str, split: str, with_metrics: bool = False) -> list[str]:
  import seqio

  import tasks
  from trainer import evaluation

  return [
    t.name
    for t in seqio.get_subtasks(tasks.get(name))
    if split in t.splits and (evaluation.has_metrics(t) or not with_metrics)
  ]


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
  """Loss and accuracy per task of `name` on `split`: {"<task>/loss": ..., ...}."""
  out = {}
  for task in _eval_tasks(name, split):
    total = None
    for batch in data.eval_batches(
      task, split, task_feature_lengths, batch_size, converter, pack, max_batches
    ):
      sums = eval_fn(params, data.replicated_batch(batch, batch_sharding))
      sums = {k: float(data.to_host(v)) for k, v in sums.items()}
      total = sums if total is None else {k: total[k] + sums[k] for k in total}
    if total:
      m = state_lib.metrics_from_sums(total)
      out.update({f"{task}/{k}": float(m[k]) for k in ("loss", "accuracy")})
  return out


def make_predict_fn(
  module: Transformer,
  params,
  mesh,
  rules,
  batch_sharding,
  *,
  max_decode_length: int,
  method: str = "greedy",
  num_beams: int = 4,
  alpha: float = 0.6,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  seed: int = 0,
) -> Callable:
  """numpy batch -> (tokens [B, L], scores [B]) with the model's decoding, on the mesh.
  Sampling draws a new key per call, from `seed`."""
  key, calls = jax.random.key(seed), itertools.count()

  def predict(batch):
    features = data.replicated_batch(
      {"encoder_input_tokens": batch["encoder_input_tokens"]}, batch_sharding
    )
    with partitioning.mesh_and_rules(mesh, rules):
      tokens, scores = decoding.decode(
        module,
        params,
        features,
        method=method,
        max_decode_length=max_decode_length,
        num_beams=num_beams,
        alpha=alpha,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        rng=jax.random.fold_in(key, next(calls)),
      )
    return data.to_host(tokens), data.to_host(scores)

  return predict


def make_score_fn(module: Transformer, params, mesh, rules, batch_sharding) -> Callable:
  keys = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
  )

  def score(batch):
    features = data.replicated_batch({k: batch[k] for k in keys if k in batch}, batch_sharding)
    with partitioning.mesh_and_rules(mesh, rules):
      return data.to_host(decoding.score_sequences(module, params, features))

  return score


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
):
  """A seqio-backed evaluator of `name`'s tasks with metrics, or None when there are none
  (or the model is decoder-only, which inference evaluation does not support yet)."""
  if converter != "encoder_decoder" or not _eval_tasks(mixture_or_task_name, split, True):
    return None
  from trainer import evaluation

  return evaluation.InferenceEvaluator(
    mixture_or_task_name,
    split,
    task_feature_lengths,
    batch_size,
    log_dir=log_dir,
    max_examples=max_examples,
    seed=seed,
  )


def evaluate_params(
  module: Transformer,
  params,
  mesh,
  rules,
  batch_sharding,
  eval_fn,
  evaluator,
  *,
  mixture_or_task_name: str,
  split: str,
  task_feature_lengths: Mapping[str, int],
  batch_size: int,
  converter: str = "encoder_decoder",
  pack: bool = True,
  eval_batches: int | None = None,
  decode_method: str = "greedy",
  num_beams: int = 4,
  alpha: float = 0.6,
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
    batch_sharding,
    converter=converter,
    pack=pack,
    max_batches=eval_batches,
  )
  if evaluator is not None:
    predict = make_predict_fn(
      module,
      params,
      mesh,
      rules,
      batch_sharding,
      max_decode_length=task_feature_lengths["targets"],
      method=decode_method,
      num_beams=num_beams,
      alpha=alpha,
      seed=seed,
    )
    score = make_score_fn(module, params, mesh, rules, batch_sharding)
    results.update(evaluator.evaluate(step, predict, score))
  return results


def make_train_step_fn(
  module: Transformer,
  tx,
  learning_rate,
  shardings,
  batch_sharding,
  mesh,
  rules,
  *,
  accumulation_steps: int = 1,
  z_loss: float = 1e-4,
  label_smoothing: float = 0.0,
  loss_normalizing_factor="per_token",
):
  """The jitted (state, batch, rng) -> (state, metrics) step, state donated."""
  return partitioning.jit(
    state_lib.make_train_step(
      module,
      tx,
      learning_rate,
      accumulation_steps=accumulation_steps,
      z_loss=z_loss,
      label_smoothing=label_smoothing,
      loss_normalizing_factor=loss_normalizing_factor,
      dropout=module.config.dropout_rate > 0,
    ),
    mesh,
    rules,
    in_shardings=(shardings, batch_sharding, None),
    out_shardings=(shardings, None),
    donate_argnums=(0,),
  )


def _make_mesh(mesh_shape: Mapping[str, int] | None):
  """The mesh; on one process a fully given shape may use fewer than all devices (the first
  ones), e.g. {'data': 1} to compare against a single-device run."""
  devices = jax.devices()
  if mesh_shape and jax.process_count() == 1 and -1 not in mesh_shape.values():
    n = int(np.prod(list(mesh_shape.values())))
    if n < len(devices):
      devices = devices[:n]
  return partitioning.make_mesh(mesh_shape, devices=devices)


def data_parallel_size(mesh) -> int:
  """How many ways the batch is split: the mesh's data (× replica) devices."""
  return mesh.shape.get("data", 1) * mesh.shape.get("replica", 1)


def round_batch_size(batch_size: int, mesh) -> int:
  """`batch_size` rounded up to a multiple of the data-parallel devices (eval/infer pad)."""
  n = data_parallel_size(mesh)
  return -(-batch_size // n) * n


def check_batch_size(batch_size: int, accumulation_steps: int, mesh) -> None:
  """Refuses a batch whose microbatches do not split evenly over the data-parallel devices."""
  per_step = batch_size // max(accumulation_steps, 1)
  if batch_size % max(accumulation_steps, 1) or per_step % data_parallel_size(mesh):
    raise ConfigError(
      f"BATCH_SIZE={batch_size} with ACCUMULATION_STEPS={accumulation_steps} gives "
      f"microbatches of {batch_size / max(accumulation_steps, 1):g} rows, which must be a "
      f"whole multiple of the {data_parallel_size(mesh)} data-parallel devices"
    )


def setup_model(model_config: T5Config, mesh_shape, partitioning_rules):
  """(mesh, batch sharding, module) for running `model_config` on `mesh_shape`."""
  mesh = _make_mesh(mesh_shape)
  return mesh, partitioning.batch_sharding(mesh, partitioning_rules), Transformer(model_config)


# ----------------------------------------------------------------------------------------------
# Train


class _StopSignal:
  """SIGTERM/SIGINT ask the loop to finish its step, save and exit (a second SIGINT kills).

  With several processes every one must stop at the same step, so the handlers stay jax's:
  `jax.distributed` turns SIGTERM into a preemption notice that all processes see at the
  same sync point.
  """

  def __init__(self):
    self.received = None
    self._previous = {}
    self._multiprocess = jax.process_count() > 1

  def __enter__(self):
    if self._multiprocess:
      return self
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler
        pass
    return self

  def _handle(self, signum, frame):
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name

  def should_stop(self, step: int) -> bool:
    if self._multiprocess:
      from jax.experimental import multihost_utils

      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self.received is not None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _write_config(model_dir: str, model_config: T5Config) -> None:
  """The operative gin config (when gin parsed one) and the model's config, which
  `trainer.params.read_model_config` gives back."""
  if jax.process_index() != 0:
    return
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, params_lib.MODEL_CONFIG_JSON), "w") as f:
    json.dump(model_config.to_dict(), f, indent=2)
  text = gin.operative_config_str() if gin.config_is_locked() else ""
  if text:
    with open(os.path.join(model_dir, CONFIG_GIN), "w") as f:
      f.write(text)


def check_finite(window: list[tuple[int, dict]]) -> None:
  """Raises NonFiniteLossError naming the first step of `window` with a NaN/Inf loss or
  gradient norm."""
  for step, m in window:
    for key in ("loss", "grad_norm"):
      value = float(np.asarray(m[key]))
      if not np.isfinite(value):
        raise NonFiniteLossError(
          f"{key} is {value} at step {step}: training stopped; the last checkpoint "
          f"(saved before this step) is kept. Lower the learning rate, enable "
          f"gradient clipping, or check the data."
        )


def summarise_window(
  window: list[tuple[int, dict]], seconds: float, flops_per_step: float, peak: float | None
) -> dict[str, float]:
  """The logged metrics of a window of (step, step metrics): means, the last learning rate,
  seconds/step, target tokens/s and (given a peak) MFU."""
  host = [{k: float(np.asarray(v)) for k, v in m.items()} for _, m in window]
  tokens = sum(m["num_target_tokens"] for m in host)
  out = {
    k: float(np.mean([m[k] for m in host]))
    for k in host[0]
    if k not in ("num_target_tokens", "num_sequences", "learning_rate")
  }
  out["learning_rate"] = host[-1]["learning_rate"]
  out["seconds_per_step"] = seconds / len(window)
  out["target_tokens_per_second"] = tokens / seconds
  if peak:
    out["mfu"] = metrics_lib.mfu(flops_per_step, out["seconds_per_step"], peak)
  return out


def _final_summary(results: Mapping[str, float], model_dir: str, checkpoint_dir: str) -> str:
  lines = ["", "xt5: done."]
  metric_keys = sorted(
    k
    for k in results
    if not k.startswith("train/") and k.rsplit("/", 1)[-1] not in ("loss", "accuracy")
  )
  for k in metric_keys:
    lines.append(f"  {k:<40s} {results[k]:8.2f}")
  lines += [
    f"  checkpoints: {checkpoint_dir}",
    f"  TensorBoard: tensorboard --logdir {model_dir}",
    f"  metrics log: {os.path.join(model_dir, metrics_lib.JSONL)}",
  ]
  return "\n".join(lines)


def train(
  *,
  model_dir: str,
  model_config: T5Config,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  train_steps: int,
  batch_size: int,
  converter: str = "encoder_decoder",
  pack: bool = True,
  seed: int = 0,
  optimizer: Callable = optimizers.adafactor,
  learning_rate: Callable = optimizers.rsqrt_decay(),
  clip_grad_norm: float | None = None,
  accumulation_steps: int = 1,
  z_loss: float = 1e-4,
  label_smoothing: float = 0.0,
  loss_normalizing_factor="per_token",
  mesh_shape: Mapping[str, int] | None = None,
  partitioning_rules: str | Sequence = "data_parallel",
  initial_checkpoint_path: str | None = None,
  checkpoint_period: int = 1000,
  keep_checkpoints: int = 3,
  async_checkpoint: bool = True,
  compress_checkpoints: bool = False,
  log_period: int = 100,
  eval_period: int | None = 1000,
  eval_split: str = "validation",
  eval_batches: int | None = 20,
  infer_eval_examples: int | None = None,
  infer_eval_batch_size: int | None = None,
  decode_method: str = "greedy",
  num_beams: int = 4,
  alpha: float = 0.6,
  show_progress: bool = True,
) -> dict[str, float]:
  """Trains until `train_steps` (resuming from MODEL_DIR's newest checkpoint); returns the
  final evaluation metrics (or the last train metrics when evaluation is off)."""
  model_dir = os.path.abspath(os.path.expanduser(model_dir))
  check_vocabulary(mixture_or_task_name, model_config)
  dataset = data.DatasetConfig(
    mixture_or_task_name,
    dict(task_feature_lengths),
    "train",
    batch_size,
    converter,
    pack,
    True,
    seed,
  )
  mesh, batch_sharding, module = setup_model(model_config, mesh_shape, partitioning_rules)
  check_batch_size(batch_size, accumulation_steps, mesh)
  tx = optimizers.make_optimizer(optimizer, learning_rate, clip_grad_norm)
  example = example_batch(converter, pack, task_feature_lengths, batch_size)
  shardings = state_lib.state_shardings(module, tx, example, mesh, partitioning_rules)
  ckpt = checkpoints.Checkpointer(
    os.path.join(model_dir, params_lib.CHECKPOINTS),
    keep=keep_checkpoints,
    async_save=async_checkpoint,
    compress=compress_checkpoints,
  )
  _write_config(model_dir, model_config)

  data_state = None
  if ckpt.latest_step() is not None:
    target = state_lib.abstract_state(module, tx, example, shardings)
    start_step, state, data_state = ckpt.restore(target)
    log.info("resuming from %s step %d", ckpt.directory, start_step)
  else:
    params = None
    if initial_checkpoint_path:
      params = params_lib.load_params(initial_checkpoint_path, model_config, shardings["params"])
    state = state_lib.init_state(
      module, tx, jax.random.key(seed), example, mesh, partitioning_rules, shardings, params
    )
    start_step = 0
  skip, note = data.TrainStream.start_batch(data_state, dataset)
  if note:
    log.warning(note)
  stream = data.TrainStream(dataset, skip)

  step_fn = make_train_step_fn(
    module,
    tx,
    learning_rate,
    shardings,
    batch_sharding,
    mesh,
    partitioning_rules,
    accumulation_steps=accumulation_steps,
    z_loss=z_loss,
    label_smoothing=label_smoothing,
    loss_normalizing_factor=loss_normalizing_factor,
  )
  eval_fn = partitioning.jit(
    state_lib.make_eval_step(module, z_loss=z_loss),
    mesh,
    partitioning_rules,
    in_shardings=(shardings["params"], batch_sharding),
  )
  evaluator = None
  if eval_period:
    evaluator = make_inference_evaluator(
      mixture_or_task_name,
      eval_split,
      task_feature_lengths,
      round_batch_size(infer_eval_batch_size or batch_size, mesh),
      converter=converter,
      log_dir=os.path.join(model_dir, "inference_eval"),
      max_examples=infer_eval_examples,
      seed=seed,
    )

  def run_eval(step: int, params) -> dict[str, float]:
    results = evaluate_params(
      module,
      params,
      mesh,
      partitioning_rules,
      batch_sharding,
      eval_fn,
      evaluator,
      mixture_or_task_name=mixture_or_task_name,
      split=eval_split,
      task_feature_lengths=task_feature_lengths,
      batch_size=batch_size,
      converter=converter,
      pack=pack,
      eval_batches=eval_batches,
      decode_method=decode_method,
      num_beams=num_beams,
      alpha=alpha,
      seed=seed,
      step=step,
    )
    logger.write(step, results, prefix="eval")
    return results

  flops_per_step = flops.train_step_matmul_flops(
    model_config, batch_size, task_feature_lengths.get("inputs", 0), task_feature_lengths["targets"]
  )
  peak, peak_what = metrics_lib.peak_flops()
  logger = metrics_lib.MetricsLogger(
    model_dir, total_steps=train_steps, start_step=start_step, show_progress=show_progress
  )
  logger.message(
    f"xt5: training {mixture_or_task_name} in {model_dir} from step {start_step} "
    f"to {train_steps} on {mesh.devices.size} devices {dict(mesh.shape)}, dropout "
    f"{model_config.dropout_rate}, activations {model_config.dtype}; "
    f"MFU against {peak_what} {peak / 1e12:.3g} TFLOP/s"
  )
  rng = jax.random.key(seed + 1)
  window: list[tuple[int, dict]] = []
  last_saved = start_step
  final: dict[str, float] = {}
  stopped_by = None
  t_window = time.perf_counter()
  try:
    with _StopSignal() as stop:
      step = start_step
      while step < train_steps:
        batch = data.global_batch(next(stream), batch_sharding)
        state, step_metrics = step_fn(state, batch, rng)
        step += 1
        window.append((step, step_metrics))
        stopping = stop.should_stop(step)
        log_now = step % log_period == 0 or step == train_steps or stopping
        save_now = step % checkpoint_period == 0 or step == train_steps or stopping
        if log_now or save_now:
          check_finite(window)
        if log_now and window:
          jax.block_until_ready(step_metrics)
          now = time.perf_counter()  # logging's own time counts in the next window
          seconds, t_window = now - t_window, now
          final = logger.write(step, summarise_window(window, seconds, flops_per_step, peak))
          logger.advance(step, loss=final["train/loss"])
          window = []
        elif len(window) > 1:  # one step in flight: the bar counts finished steps
          jax.block_until_ready(window[-2][1]["loss"])
          logger.advance(step - 1)
        if save_now:
          ckpt.save(step, state, stream.state(), wait=stopping)
          last_saved = step
        if stopping:
          stopped_by = stop.received or "preemption"
          break
        if eval_period and step % eval_period == 0 and step != train_steps:
          t_eval = time.perf_counter()
          run_eval(step, state["params"])
          t_window += time.perf_counter() - t_eval  # evals are not step time
    ckpt.wait()
    if stopped_by:
      logger.message(
        f"xt5: {stopped_by} received: saved step {last_saved} to "
        f"{ckpt.directory}; run the same command to resume."
      )
      return final
    if eval_period:
      final = run_eval(step, state["params"])
    logger.message(_final_summary(final, model_dir, ckpt.directory))
  except NonFiniteLossError as e:
    logger.message(f"xt5: {e} (newest checkpoint: step {ckpt.latest_step()})")
    raise
  finally:
    logger.close()
    ckpt.__exit__(*sys.exc_info())  # waits; never hides the error on its way out
  return final


# ----------------------------------------------------------------------------------------------
# Evaluate and infer


def _params_for(
  checkpoint_path,
  model_config,
  mesh_shape,
  partitioning_rules,
  converter,
  pack,
  task_feature_lengths,
  batch_size,
):
  """(mesh, batch sharding, module, params, batch size rounded for the mesh) for eval/infer."""
  mesh, batch_sharding, module = setup_model(model_config, mesh_shape, partitioning_rules)
  batch_size = round_batch_size(batch_size, mesh)
  example = example_batch(converter, pack, task_feature_lengths, batch_size)
  shardings = partitioning.param_shardings(
    partitioning.abstract_params(module, example), mesh, partitioning_rules
  )
  params = params_lib.load_params(checkpoint_path, model_config, shardings)
  return mesh, batch_sharding, module, params, batch_size


def evaluate(
  *,
  checkpoint_path: str,
  model_config: T5Config,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  batch_size: int,
  output_dir: str,
  split: str = "validation",
  converter: str = "encoder_decoder",
  pack: bool = True,
  eval_batches: int | None = None,
  infer_eval_examples: int | None = None,
  decode_method: str = "greedy",
  num_beams: int = 4,
  alpha: float = 0.6,
  mesh_shape=None,
  partitioning_rules="data_parallel",
  seed: int = 0,
) -> dict:
  """Teacher-forced and inference metrics of a checkpoint; written to
  OUTPUT_DIR/eval_metrics.json and TensorBoard."""
  check_vocabulary(mixture_or_task_name, model_config)
  mesh, batch_sharding, module, params, batch_size = _params_for(
    checkpoint_path,
    model_config,
    mesh_shape,
    partitioning_rules,
    converter,
    pack,
    task_feature_lengths,
    batch_size,
  )
  eval_fn = partitioning.jit(state_lib.make_eval_step(module), mesh, partitioning_rules)
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
    mesh,
    partitioning_rules,
    batch_sharding,
    eval_fn,
    evaluator,
    mixture_or_task_name=mixture_or_task_name,
    split=split,
    task_feature_lengths=task_feature_lengths,
    batch_size=batch_size,
    converter=converter,
    pack=pack,
    eval_batches=eval_batches,
    decode_method=decode_method,
    num_beams=num_beams,
    alpha=alpha,
    seed=seed,
  )
  with metrics_lib.MetricsLogger(output_dir, total_steps=0, show_progress=False) as logger:
    logger.write(0, results, prefix="eval")
  if jax.process_index() == 0:
    with open(os.path.join(output_dir, "eval_metrics.json"), "w") as f:
      json.dump(results, f, indent=2, sort_keys=True)
  return results


def infer(
  *,
  checkpoint_path: str,
  model_config: T5Config,
  output_file: str,
  batch_size: int,
  task_feature_lengths: Mapping[str, int],
  mixture_or_task_name: str | None = None,
  split: str = "validation",
  input_file: str | None = None,
  vocabulary=None,
  mode: str = "predict",
  max_examples: int | None = None,
  decode_method: str = "greedy",
  num_beams: int = 4,
  alpha: float = 0.6,
  mesh_shape=None,
  partitioning_rules="data_parallel",
  seed: int = 0,
) -> int:
  """Decodes (mode 'predict') or scores (mode 'score') a task split, or a text file, into
  JSONL; resumes a partly written OUTPUT_FILE. Returns the number of lines written.

  A text file is tokenized with `vocabulary`, else with MIXTURE_OR_TASK_NAME's vocabulary."""
  from trainer import infer as infer_lib

  if input_file is None and mixture_or_task_name is None:
    raise ConfigError(
      "infer needs MIXTURE_OR_TASK_NAME (decode a task split) or INPUT_FILE "
      "(decode a text file, one input per line)"
    )
  if mixture_or_task_name is not None:
    import tasks

    check_vocabulary(mixture_or_task_name, model_config)
    vocabulary = vocabulary or tasks.get(mixture_or_task_name).output_features["inputs"].vocabulary
  if vocabulary is None:
    raise ConfigError(
      "INPUT_FILE needs a vocabulary: set MIXTURE_OR_TASK_NAME to a task "
      "with the model's vocabulary, or bind train_script.infer.vocabulary "
      "(e.g. = @vocab.builtin_vocabulary())"
    )
  mesh, batch_sharding, module, params, batch_size = _params_for(
    checkpoint_path,
    model_config,
    mesh_shape,
    partitioning_rules,
    "encoder_decoder",
    False,
    task_feature_lengths,
    batch_size,
  )
  predict = make_predict_fn(
    module,
    params,
    mesh,
    partitioning_rules,
    batch_sharding,
    max_decode_length=task_feature_lengths["targets"],
    method=decode_method,
    num_beams=num_beams,
    alpha=alpha,
    seed=seed,
  )
  score = make_score_fn(module, params, mesh, partitioning_rules, batch_sharding)
  if input_file is not None:
    return infer_lib.infer_file(
      input_file,
      output_file,
      vocabulary,
      task_feature_lengths["inputs"],
      batch_size,
      predict,
      score_fn=score,
      mode=mode,
      targets_length=task_feature_lengths["targets"],
    )
  return infer_lib.infer_task(
    mixture_or_task_name,
    split,
    task_feature_lengths,
    batch_size,
    predict,
    output_file,
    score_fn=score,
    mode=mode,
    max_examples=max_examples,
  )


def run(job: Callable[[], Any]) -> Any:
  """What a run gin chose (`train_script.run.job = @train_script.train`)."""
  return job()


# ----------------------------------------------------------------------------------------------
# Command line and gin


def _known_gin_files() -> list[str]:
  return sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.gin"), recursive=True)
  )


def _close(name: str, candidates) -> str:
  close = difflib.get_close_matches(name, list(candidates), n=4, cutoff=0.5)
  return f"; did you mean {', '.join(close)}?" if close else ""


def _macro_refs(value, out: set[str]):
  if isinstance(value, gin.config.ConfigurableReference):
    text = repr(value)
    if text.startswith("%") and "." not in text:  # not %gin.REQUIRED
      out.add(text[1:])
  elif isinstance(value, (list, tuple)):
    for v in value:
      _macro_refs(v, out)
  elif isinstance(value, dict):
    for v in value.values():
      _macro_refs(v, out)


def _check_macros(cli_macros: set[str]) -> None:
  """Unknown macros set on the command line, and macros used but never set."""
  defined, used = set(), set()
  for (scope, selector), params in gin.config._CONFIG.items():
    if selector == "gin.macro":
      defined.add(scope)
    for value in params.values():
      _macro_refs(value, used)
  for name in sorted(cli_macros - used):
    raise ConfigError(
      f"--gin.{name}: no gin file uses the macro {name}, so it would be ignored{_close(name, used)}"
    )
  for name in sorted(used - defined):
    hint = (
      " (include a model gin, e.g. --gin_file=configs/models/mt5/small.gin)"
      if name == "MODEL_CONFIG"
      else f" (pass --gin.{name}=...)"
    )
    raise ConfigError(f"gin macro {name} is used but never set{hint}")


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str]) -> None:
  """Parses files and bindings like T5X, turning gin's errors into ones that name the file,
  binding or macro and the close names."""
  gin.clear_config()
  gin.add_config_file_search_path(REPO)
  if not gin_files:
    raise ConfigError(
      "no --gin_file given; pick a run gin, e.g. --gin_file=configs/experiments/quickstart.gin"
    )
  for f in gin_files:
    if not (os.path.isfile(f) or os.path.isfile(os.path.join(REPO, f))):
      raise ConfigError(f"gin file {f} not found{_close(f, _known_gin_files())}")
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings), finalize_config=False)
  except (OSError, ValueError, SyntaxError) as e:
    raise ConfigError(_explain_gin_error(e)) from None
  cli_macros = {
    b.split("=", 1)[0].strip() for b in gin_bindings if "=" in b and "." not in b.split("=", 1)[0]
  }
  _check_macros(cli_macros)
  try:
    gin.finalize()
  except ValueError as e:
    msg = str(e)
    if "%gin.REQUIRED" in msg:
      name = msg.split("/")[0]
      raise ConfigError(
        f"required gin macro {name} is not set: pass --gin.{name}=... "
        f"(strings in quotes: --gin.{name}=\"'...'\")"
      ) from None
    raise ConfigError(msg) from None


def _explain_gin_error(e: Exception) -> str:
  msg = str(e)
  first = msg.splitlines()[0]
  if "doesn't have a parameter named" in first:
    selector = first.split("'")[1]
    param = first.rsplit("named '", 1)[-1].split("'")[0]
    try:
      fn = gin.config._REGISTRY.get_match(selector).wrapped
      import inspect

      names = list(inspect.signature(fn).parameters)
      return f"{first.rstrip('.')}{_close(param, names)} (its parameters: {', '.join(names)})"
    except Exception:
      return first
  if "No configurable matching" in first:
    selector = first.split("'")[1]
    names = [s for s in gin.config._REGISTRY.keys()]
    return f"{first}{_close(selector, names)}"
  if isinstance(e, SyntaxError) or "Failed to parse" in msg:
    return (
      f"bad gin value: {msg.strip()}. Values are Python literals: strings need quotes, "
      f"e.g. --gin.MODEL_DIR=\"'runs/x'\""
    )
  return msg


def _parse_args(argv: Sequence[str]):
  p = argparse.ArgumentParser(
    description="xt5 train / eval / infer (gin-configured)",
    epilog="--gin.NAME=VALUE binds a gin macro or parameter",
  )
  p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
  p.add_argument("--gin_bindings", action="append", default=[], help="NAME=VALUE (repeatable)")
  p.add_argument("--coordinator_address", help="multi-host: host:port of process 0")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  p.add_argument(
    "--distributed",
    action="store_true",
    help="multi-host with addresses from the environment (TPU, SLURM, ...)",
  )
  args, rest = p.parse_known_args(argv)
  bindings = list(args.gin_bindings)
  for item in rest:
    if item.startswith("--gin."):
      bindings.append(item[len("--gin.") :])
    else:
      p.error(f"unknown argument {item}")
  return args, bindings


def drop_known_seqio_notes(record: logging.LogRecord) -> bool:
  """seqio warns on every packed dataset that `*_pretokenized` strings are dropped, and that
  evaluation lengths *may* truncate; neither tells a user anything."""
  text = record.getMessage()
  return not text.startswith(
    (
      "Features not in `features_length` will be removed",
      "Given sequence lengths *may be* insufficient",
    )
  )


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  for noisy in ("absl", "tensorflow", "jax._src", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  logging.getLogger("absl").addFilter(drop_known_seqio_notes)
  args, bindings = _parse_args(sys.argv[1:] if argv is None else argv)
  if args.coordinator_address or args.distributed:
    # CPU processes need gloo for cross-process collectives (harmless on accelerators).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  try:
    parse_gin(args.gin_file, bindings)
    result = gin.get_configurable(run)()
  except (ValueError, NonFiniteLossError, checkpoints.CheckpointError, FileNotFoundError) as e:
    # errors written for users (ConfigError, unknown tasks, bad batch sizes, ...): no traceback
    print(f"xt5: error: {e}", file=sys.stderr)
    return 2 if isinstance(e, ConfigError) else 1
  if isinstance(result, dict) and jax.process_index() == 0:
    print(json.dumps({k: round(v, 4) for k, v in sorted(result.items())}))
  return 0


if __name__ == "__main__":
  sys.modules.setdefault("train", sys.modules["__main__"])  # gin's `import train` finds us
  sys.exit(main())
