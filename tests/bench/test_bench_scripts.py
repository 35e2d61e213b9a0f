"""The benchmark scripts run end to end (tiny model, one round) and end with their JSON line.

They measure nothing here; this keeps `make bench` from rotting, since CI never runs it. So every
size a script takes is set as small as still runs each of its code paths (the ceiling's matmul,
the pipeline's warm-up, resume's replay).
"""

import json

import pytest

from bench import decode, train_step


def _last_json(capsys):
  lines = capsys.readouterr().out.strip().splitlines()
  return json.loads(lines[-1])


@pytest.mark.slow
def test_train_step_bench_runs_and_reports_ratios(capsys):
  train_step.main(
    "--model tiny --batch 2 --inputs 16 --targets 8 --iters 1 --ceiling-n 256".split()
  )
  result = _last_json(capsys)
  assert result["bench"] == "train_step"
  for key in ("ratio_vs_hf_fp32", "ratio_vs_hf_bf16", "fraction_of_fp32_ceiling"):
    assert result[key] > 0


@pytest.mark.slow
def test_decode_bench_runs_and_reports_ratios(capsys):
  decode.main(
    ["--model", "tiny", "--batch", "2", "--inputs", "8", "--new-tokens", "4", "--iters", "1"]
  )
  result = _last_json(capsys)
  assert result["bench"] == "decode"
  assert result["ratio_vs_hf_greedy"] > 0 and result["ratio_vs_hf_beam"] > 0


@pytest.mark.slow
def test_pipeline_bench_runs_and_reports_ratios(capsys, builtin_data):
  from bench import pipeline  # noqa: PLC0415 (imports tasks: TensorFlow)

  pipeline.main(
    ["--model", "tiny", "--batch", "2", "--rows", "4", "--iters", "1", "--warmup-rows", "4"]
  )
  result = _last_json(capsys)
  assert result["bench"] == "pipeline"
  assert result["rows_per_s"] > 0 and result["ratio_vs_train_step"] > 0


@pytest.mark.slow
def test_train_loop_bench_runs_and_reports_overhead(capsys, builtin_data):
  from bench import train_loop  # noqa: PLC0415 (imports tasks: TensorFlow)

  train_loop.main(["--model", "tiny", "--steps", "6"])
  result = _last_json(capsys)
  assert result["bench"] == "train_loop"
  assert result["bare_s"] > 0 and result["loop_s"] > 0 and result["pipeline_fed_s"] > 0
  # the JSON rounds times to 4 decimals: compare ratios, not differences
  assert 1 + result["overhead_fraction"] == pytest.approx(
    result["loop_s"] / result["bare_s"], rel=0.05
  )
  # 2 rounds of 3 steps, rounded up to whole log windows of 2: 8 timed steps, whose windows
  # (steps 2-5 after a 2-step warm-up, then 8-11) hold the saves after steps 3 and 9
  assert result["timed_loop_steps"] == 8 and result["checkpoints_in_window"] == 2


@pytest.mark.slow
def test_resume_bench_runs_and_reports_restore_times(capsys, builtin_data):
  from bench import resume  # noqa: PLC0415 (imports tasks: TensorFlow)

  # replay (a pipeline built again) at the first position only
  resume.main("--task mono --batch 2 --length 32 --at 1,3 --replay-up-to 1".split())
  result = _last_json(capsys)
  assert result["bench"] == "resume"
  assert result["restore_s_at_1"] > 0 and result["restore_s_at_3"] > 0
  assert result["replay_s_at_1"] > 0 and "replay_s_at_3" not in result
  assert result["state_bytes"] == max(result["state_bytes_at_1"], result["state_bytes_at_3"]) > 0
