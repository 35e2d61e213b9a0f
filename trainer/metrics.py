"""Where training numbers go: TensorBoard event files, a JSONL log and a console progress bar,
plus the MFU estimate.

    logger = MetricsLogger(model_dir, total_steps=10_000, start_step=0)
    logger.write(step, {"loss": 2.3, ...}, prefix="train")   # TB + MODEL_DIR/metrics.jsonl
    logger.advance(step, loss=2.3)                           # progress bar with rate and ETA

Only the primary process writes files; every process may call every method.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping

import jax
import numpy as np
from tqdm.auto import tqdm

JSONL = "metrics.jsonl"

# Dense bf16 peak FLOP/s per device by `device.device_kind` prefix (vendor datasheets).
PEAK_FLOPS = {
  "TPU v2": 45e12,
  "TPU v3": 123e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
  "NVIDIA H200": 989e12,
  "NVIDIA H100": 989e12,
  "NVIDIA A100": 312e12,
  "NVIDIA L4": 121e12,
  "NVIDIA A10G": 125e12,
  "NVIDIA V100": 125e12,
}


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  """The device's dense bf16 peak, or None when its kind is not in `PEAK_FLOPS` (CPUs)."""
  kind = (device or jax.devices()[0]).device_kind
  for prefix in sorted(PEAK_FLOPS, key=len, reverse=True):
    if kind.startswith(prefix):
      return PEAK_FLOPS[prefix]
  return None


def measure_host_matmul_flops(n: int = 1024, iters: int = 3, warmup: int = 1) -> float:
  """FLOP/s of an n×n fp32 matmul on the first local device: the CPU's stand-in for a peak
  (fake CPU devices share one host, so the host, not the device, is the unit)."""
  a = jax.device_put(
    np.random.default_rng(0).normal(size=(n, n)).astype(np.float32), jax.local_devices()[0]
  )
  mm = jax.jit(lambda x: x @ x)
  for _ in range(warmup):
    mm(a).block_until_ready()
  best = math.inf
  for _ in range(iters):
    t0 = time.perf_counter()
    mm(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


def peak_flops(devices=None) -> tuple[float, str]:
  """(Peak FLOP/s of the whole job, what it is): datasheet peak × device count on
  accelerators; on CPU, this host's measured fp32 matmul rate × process count."""
  devices = devices or jax.devices()
  per_device = peak_flops_per_device(devices[0])
  if per_device is not None:
    return per_device * len(devices), f"{devices[0].device_kind} bf16 peak"
  return measure_host_matmul_flops() * jax.process_count(), "measured host fp32 matmul rate"


def mfu(flops_per_step: float, seconds_per_step: float, peak: float) -> float:
  """Model FLOPs utilisation: the model's matmul FLOPs per second over the job's peak."""
  return flops_per_step / seconds_per_step / peak


def _scalar(v) -> float:
  return float(np.asarray(v))


class MetricsLogger:
  """TensorBoard + JSONL + tqdm for one run directory."""

  def __init__(
    self,
    log_dir: str | None,
    *,
    total_steps: int,
    start_step: int = 0,
    is_primary: bool | None = None,
    show_progress: bool = True,
  ):
    self.is_primary = jax.process_index() == 0 if is_primary is None else is_primary
    self._writer = None
    self._jsonl = None
    if log_dir and self.is_primary:
      from clu import metric_writers  # TF summary writer; import only when writing

      os.makedirs(log_dir, exist_ok=True)
      self._writer = metric_writers.SummaryWriter(log_dir)
      self._jsonl = open(os.path.join(log_dir, JSONL), "a")
    self._bar = tqdm(
      total=total_steps,
      initial=start_step,
      unit="step",
      dynamic_ncols=True,
      disable=not (show_progress and self.is_primary),
      smoothing=0.1,
    )
    self._step = start_step

  def write(self, step: int, scalars: Mapping[str, float], prefix: str = "train") -> dict:
    """Writes `prefix/name` scalars at `step` (TensorBoard and one JSONL line); returns
    them as floats."""
    values = {f"{prefix}/{k}" if prefix else k: _scalar(v) for k, v in scalars.items()}
    if self._writer is not None:
      self._writer.write_scalars(step, values)
      self._writer.flush()
    if self._jsonl is not None:
      line = {"step": int(step), "time": round(time.time(), 3)}
      line.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
      self._jsonl.write(json.dumps(line) + "\n")
      self._jsonl.flush()
    return values

  def advance(self, step: int, **postfix: float) -> None:
    """Moves the bar to `step` (rate and ETA from tqdm), showing `postfix` values."""
    if postfix:
      self._bar.set_postfix({k: f"{_scalar(v):.4g}" for k, v in postfix.items()}, refresh=False)
    self._bar.update(step - self._step)
    self._step = step

  def message(self, text: str) -> None:
    """A line on the console that does not break the bar."""
    if self.is_primary:
      self._bar.write(text)

  def close(self) -> None:
    self._bar.close()
    if self._writer is not None:
      self._writer.close()
    if self._jsonl is not None:
      self._jsonl.close()
    self._writer = self._jsonl = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
