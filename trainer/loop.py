"""The training loop: data stream -> jitted step -> windowed metrics, periodic checkpoints and
evaluations, exact resume, and a clean stop on SIGTERM/SIGINT or a preemption notice.

`train` takes its settings grouped the way T5X does (dataset, optimizer, loss, checkpointing,
evaluation, decoding); train.py's gin-facing `train` builds these from the T5X macros.
`StepWindow` is the piece `interactive.InteractiveModel.train` shares with it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from models import flops
from models.config import T5Config
from trainer import checkpoints, data, evaluation, optimizers
from trainer import mesh as mesh_lib
from trainer import metrics as metrics_lib
from trainer import params as params_lib
from trainer import predict as predict_lib
from trainer import state as state_lib

CONFIG_GIN = "config.gin"  # MODEL_DIR/config.gin: the operative config

log = logging.getLogger("xt5")


class NonFiniteLossError(RuntimeError):
  """The loss or gradient norm became NaN/Inf; the message names the step."""


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The update rule: an optimizer factory of `trainer.optimizers`, its schedule, clipping and
  T5X's microbatching (`accumulation_steps`, T5X's num_microbatches)."""

  optimizer: Callable = optimizers.adafactor
  learning_rate: Callable = optimizers.rsqrt_decay()
  clip_grad_norm: float | None = None
  accumulation_steps: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """How often train-state checkpoints are written and how many are kept."""

  period: int = 1000
  keep: int = 3
  async_save: bool = True
  compress: bool = False


def make_train_step_fn(
  module,
  tx,
  learning_rate,
  shardings,
  placement,
  *,
  accumulation_steps: int = 1,
  loss: state_lib.LossConfig = state_lib.LossConfig(),
  deletion: state_lib.DeletionConfig = state_lib.DeletionConfig(),
):
  """The jitted (state, batch, rng) -> (state, metrics) step, state donated. `deletion`: an
  MrT5 model's regularizer and controller (ignored without a delete gate)."""
  step = state_lib.make_train_step(
    module,
    tx,
    learning_rate,
    accumulation_steps=accumulation_steps,
    z_loss=loss.z_loss,
    label_smoothing=loss.label_smoothing,
    loss_normalizing_factor=loss.loss_normalizing_factor,
    dropout=module.config.dropout_rate > 0,
    deletion=deletion,
  )
  return placement.jit(
    step,
    in_shardings=(shardings, placement.batch_sharding, None),
    out_shardings=(shardings, None),
    donate_argnums=(0,),
  )


class StopSignal:
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


def check_finite(window: Sequence[tuple[int, dict]]) -> None:
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
  window: Sequence[tuple[int, dict]], seconds: float, flops_per_step: float, peak: float | None
) -> dict[str, float]:
  """The logged metrics of a window of (step, step metrics): means, the last learning rate
  (and MrT5's last α), seconds/step, target tokens/s and (given a peak) MFU."""
  host = [{k: float(np.asarray(v)) for k, v in m.items()} for _, m in window]
  tokens = sum(m["num_target_tokens"] for m in host)
  last = [k for k in ("learning_rate", "alpha") if k in host[0]]
  out = {
    k: float(np.mean([m[k] for m in host]))
    for k in host[0]
    if k not in ("num_target_tokens", "num_sequences", *last)
  }
  out.update({k: host[-1][k] for k in last})
  out["seconds_per_step"] = seconds / len(window)
  out["target_tokens_per_second"] = tokens / seconds
  if peak:
    out["mfu"] = metrics_lib.mfu(flops_per_step, out["seconds_per_step"], peak)
  return out


class StepWindow:
  """The steps since the last log line: their metrics stay on the device until `summary`."""

  def __init__(self, flops_per_step: float = 0.0, peak: float | None = None):
    self.steps: list[tuple[int, dict]] = []
    self._flops, self._peak = flops_per_step, peak
    self._start = time.perf_counter()

  def __len__(self) -> int:
    return len(self.steps)

  def add(self, step: int, metrics: dict) -> None:
    self.steps.append((step, metrics))

  def check_finite(self) -> None:
    check_finite(self.steps)

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` (e.g. an evaluation) out of the window's step time."""
    self._start += seconds

  def summary(self) -> dict[str, float]:
    """Checks the window, waits for its last step, returns its metrics and starts a new one
    (the summary's own time counts in the next window)."""
    self.check_finite()
    jax.block_until_ready(self.steps[-1][1])
    now = time.perf_counter()
    out = summarise_window(self.steps, now - self._start, self._flops, self._peak)
    self.steps, self._start = [], now
    return out


def write_config(model_dir: str, model_config: T5Config, operative_gin: str = "") -> None:
  """The model's config (which `trainer.params.read_model_config` gives back) and the
  operative gin config, when there is one."""
  if jax.process_index() != 0:
    return
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, params_lib.MODEL_CONFIG_JSON), "w") as f:
    json.dump(model_config.to_dict(), f, indent=2)
  if operative_gin:
    with open(os.path.join(model_dir, CONFIG_GIN), "w") as f:
      f.write(operative_gin)


def final_summary(results: Mapping[str, float], model_dir: str, checkpoint_dir: str) -> str:
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
  dataset: data.DatasetConfig,
  train_steps: int,
  optimizer: OptimizerConfig = OptimizerConfig(),
  loss: state_lib.LossConfig = state_lib.LossConfig(),
  deletion: state_lib.DeletionConfig = state_lib.DeletionConfig(),
  mesh_shape: Mapping[str, int] | None = None,
  partitioning_rules: str | Sequence = "data_parallel",
  initial_checkpoint_path: str | None = None,
  checkpoint: CheckpointConfig = CheckpointConfig(),
  eval: evaluation.EvalConfig = evaluation.EvalConfig(),
  decode: predict_lib.DecodeConfig = predict_lib.DecodeConfig(),
  log_period: int = 100,
  show_progress: bool = True,
  operative_gin: str = "",
) -> dict[str, float]:
  """Trains until `train_steps` (resuming from MODEL_DIR's newest checkpoint); returns the
  final evaluation metrics (or the last train metrics when evaluation is off). `deletion`:
  an MrT5 model's gate regularizer and PI controller (unused without a delete gate)."""
  model_dir = os.path.abspath(os.path.expanduser(model_dir))
  # None: the architecture's converter; a converter the model cannot read is refused
  dataset = dataclasses.replace(
    dataset, converter=mesh_lib.model_converter(model_config, dataset.converter)
  )
  name, lengths = dataset.mixture_or_task_name, dataset.task_feature_lengths
  batch_size, converter, pack, seed = (
    dataset.batch_size,
    dataset.converter,
    dataset.pack,
    dataset.seed,
  )
  mesh_lib.check_positive(
    train_steps=train_steps,
    batch_size=batch_size,
    log_period=log_period,
    checkpoint_period=checkpoint.period,
    keep_checkpoints=checkpoint.keep,
    eval_period=eval.period,
    eval_batches=eval.batches,
    accumulation_steps=optimizer.accumulation_steps,
  )
  mesh_lib.check_feature_lengths(name, lengths)
  lengths = dict(lengths)
  mesh_lib.check_vocabulary(name, model_config)
  mesh_lib.check_output_path(model_dir, "MODEL_DIR", directory=True)
  placement, module = mesh_lib.setup_model(model_config, mesh_shape, partitioning_rules)
  mesh_lib.check_batch_size(batch_size, optimizer.accumulation_steps, placement)
  tx = optimizers.make_optimizer(
    optimizer.optimizer, optimizer.learning_rate, optimizer.clip_grad_norm
  )
  example = mesh_lib.example_batch(converter, pack, lengths, batch_size)
  shardings = state_lib.state_shardings(module, tx, example, placement)
  ckpt = checkpoints.Checkpointer(
    os.path.join(model_dir, params_lib.CHECKPOINTS),
    keep=checkpoint.keep,
    async_save=checkpoint.async_save,
    compress=checkpoint.compress,
  )
  write_config(model_dir, model_config, operative_gin)

  data_state = iterator_state = None
  if ckpt.latest_step() is not None:
    target = state_lib.abstract_state(module, tx, example, shardings)
    start_step, state, data_state, iterator_state = ckpt.restore(target, data_iterator=True)
    log.info("resuming from %s step %d", ckpt.directory, start_step)
  else:
    params = None
    if initial_checkpoint_path:
      params = params_lib.load_initial_params(
        initial_checkpoint_path, model_config, shardings["params"]
      )
    state = state_lib.init_state(
      module,
      tx,
      jax.random.key(seed),
      example,
      placement,
      shardings,
      params,
      alpha0=deletion.alpha0,
    )
    start_step = 0
  stream, note = data.TrainStream.resume(dataset, data_state, iterator_state)
  if note:
    log.warning(note)

  step_fn = make_train_step_fn(
    module,
    tx,
    optimizer.learning_rate,
    shardings,
    placement,
    accumulation_steps=optimizer.accumulation_steps,
    loss=loss,
    deletion=deletion,
  )
  eval_fn = placement.jit(
    state_lib.make_eval_step(module, z_loss=loss.z_loss),
    in_shardings=(shardings["params"], placement.batch_sharding),
  )
  evaluator = None
  if eval.period:
    evaluator = evaluation.make_inference_evaluator(
      name,
      eval.split,
      lengths,
      placement.round_batch_size(eval.infer_batch_size or batch_size),
      converter=converter,
      log_dir=os.path.join(model_dir, "inference_eval"),
      max_examples=eval.infer_examples,
      seed=seed,
    )

  def run_eval(step: int, params) -> dict[str, float]:
    results = evaluation.evaluate_params(
      module,
      params,
      placement,
      eval_fn,
      evaluator,
      mixture_or_task_name=name,
      split=eval.split,
      task_feature_lengths=lengths,
      batch_size=batch_size,
      converter=converter,
      pack=pack,
      eval_batches=eval.batches,
      decode=decode,
      seed=seed,
      step=step,
    )
    logger.write(step, results, prefix="eval")
    return results

  flops_per_step = flops.train_step_matmul_flops(
    model_config, batch_size, lengths.get("inputs", 0), lengths["targets"]
  )
  peak, peak_what = metrics_lib.peak_flops()
  logger = metrics_lib.MetricsLogger(
    model_dir, total_steps=train_steps, start_step=start_step, show_progress=show_progress
  )
  logger.message(
    f"xt5: training {name} in {model_dir} from step {start_step} "
    f"to {train_steps} on {placement.mesh.devices.size} devices {dict(placement.mesh.shape)}, "
    f"dropout {model_config.dropout_rate}, activations {model_config.dtype}; "
    f"MFU against {peak_what} {peak / 1e12:.3g} TFLOP/s"
  )
  rng = jax.random.key(seed + 1)
  window = StepWindow(flops_per_step, peak)
  last_saved = start_step
  final: dict[str, float] = {}
  stopped_by = None
  try:
    with StopSignal() as stop:
      step = start_step
      while step < train_steps:
        batch = data.global_batch(next(stream), placement.batch_sharding)
        state, step_metrics = step_fn(state, batch, rng)
        step += 1
        window.add(step, step_metrics)
        stopping = stop.should_stop(step)
        log_now = step % log_period == 0 or step == train_steps or stopping
        save_now = step % checkpoint.period == 0 or step == train_steps or stopping
        if save_now and not log_now:
          window.check_finite()
        if log_now and window:
          final = logger.write(step, window.summary())
          logger.advance(step, loss=final["train/loss"])
        elif len(window) > 1:  # one step in flight: the bar counts finished steps
          jax.block_until_ready(window.steps[-2][1]["loss"])
          logger.advance(step - 1)
        if save_now:
          ckpt.save(
            step, state, stream.state(), data_iterator=stream.iterator_state(), wait=stopping
          )
          last_saved = step
        if stopping:
          stopped_by = stop.received or "preemption"
          break
        if eval.period and step % eval.period == 0 and step != train_steps:
          t_eval = time.perf_counter()
          run_eval(step, state["params"])
          window.exclude(time.perf_counter() - t_eval)  # evals are not step time
    ckpt.wait()
    if stopped_by:
      logger.message(
        f"xt5: {stopped_by} received: saved step {last_saved} to "
        f"{ckpt.directory}; run the same command to resume."
      )
      return final
    if eval.period:
      final = run_eval(step, state["params"])
    logger.message(final_summary(final, model_dir, ckpt.directory))
  except NonFiniteLossError as e:
    logger.message(f"xt5: {e} (newest checkpoint: step {ckpt.latest_step()})")
    raise
  finally:
    logger.close()
    ckpt.__exit__(*sys.exc_info())  # waits; never hides the error on its way out
  return final
