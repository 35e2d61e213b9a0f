"""The benchmark scripts run end to end (tiny model, one round) and end with their JSON line.

They measure nothing here; this keeps `make bench` from rotting, since CI never runs it.
"""

import json

import pytest

from bench import decode, train_step


def _last_json(capsys):
  lines = capsys.readouterr().out.strip().splitlines()
  return json.loads(lines[-1])


@pytest.mark.slow
def test_train_step_bench_runs_and_reports_ratios(capsys):
  train_step.main(["--model", "tiny", "--batch", "2", "--inputs", "16", "--targets", "8",
                   "--iters", "1"])
  result = _last_json(capsys)
  assert result["bench"] == "train_step"
  for key in ("ratio_vs_hf_fp32", "ratio_vs_hf_bf16", "fraction_of_fp32_ceiling"):
    assert result[key] > 0


@pytest.mark.slow
def test_decode_bench_runs_and_reports_ratios(capsys):
  decode.main(["--model", "tiny", "--batch", "2", "--inputs", "8", "--new-tokens", "4",
               "--iters", "1"])
  result = _last_json(capsys)
  assert result["bench"] == "decode"
  assert result["ratio_vs_hf_greedy"] > 0 and result["ratio_vs_hf_beam"] > 0


@pytest.mark.slow
def test_pipeline_bench_runs_and_reports_ratios(capsys):
  from bench import pipeline  # noqa: PLC0415 (imports tasks: TensorFlow)
  from tasks import corpora, vocab  # noqa: PLC0415

  corpora.prepare(progress=False)  # no-op after `make test`'s prepare step
  vocab.prepare_builtin(progress=False)
  pipeline.main(["--model", "tiny", "--batch", "2", "--rows", "4", "--iters", "1"])
  result = _last_json(capsys)
  assert result["bench"] == "pipeline"
  assert result["rows_per_s"] > 0 and result["ratio_vs_train_step"] > 0
