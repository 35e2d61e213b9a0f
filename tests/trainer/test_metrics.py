"""TensorBoard + JSONL logging and MFU (trainer/metrics.py)."""

import json
import math

import pytest

from trainer import metrics


def test_writes_jsonl_and_tensorboard(tmp_path):
  with metrics.MetricsLogger(str(tmp_path), total_steps=10, show_progress=False) as logger:
    out = logger.write(5, {"loss": 2.5, "accuracy": 0.25})
    logger.write(10, {"bleu": 7.0, "bad": float("nan")}, prefix="eval")
    logger.advance(10)
  assert out == {"train/loss": 2.5, "train/accuracy": 0.25}
  lines = [json.loads(x) for x in (tmp_path / metrics.JSONL).read_text().splitlines()]
  assert lines[0]["step"] == 5 and lines[0]["train/loss"] == 2.5
  assert lines[1]["eval/bleu"] == 7.0 and lines[1]["eval/bad"] == "nan"
  events = [p for p in tmp_path.iterdir() if p.name.startswith("events.out.tfevents")]
  assert events and events[0].stat().st_size > 0
  from tensorboard.backend.event_processing import event_accumulator

  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  tags = acc.Tags()["tensors"] + acc.Tags()["scalars"]
  assert "train/loss" in tags and "eval/bleu" in tags


def test_non_primary_process_writes_nothing(tmp_path):
  logger = metrics.MetricsLogger(str(tmp_path / "x"), total_steps=3, is_primary=False)
  logger.write(1, {"loss": 1.0})
  logger.close()
  assert not (tmp_path / "x").exists()


def test_peak_flops_and_mfu():
  class Dev:
    def __init__(self, kind):
      self.device_kind = kind

  assert metrics.peak_flops_per_device(Dev("NVIDIA H100 80GB HBM3")) == 989e12
  assert metrics.peak_flops_per_device(Dev("TPU v5 lite")) == 197e12
  assert metrics.peak_flops_per_device(Dev("cpu")) is None
  assert metrics.mfu(1e12, 0.5, 4e12) == pytest.approx(0.5)
  peak, what = metrics.peak_flops()  # CPU here: measured, positive, finite
  assert math.isfinite(peak) and peak > 1e8 and "measured" in what
