"""bench.mrt5: the gate it sets deletes the asked fraction, and the script runs end to end on a tiny
model (one round) and ends with its JSON line. It measures nothing here."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import mrt5 as bench_mrt5
from models import mrt5
from models.network import Transformer


@pytest.mark.parametrize("delta", [0.25, 0.5, 0.75])
def test_gate_deleting_deletes_the_asked_fraction_of_its_calibration_batch(delta):
  base, gate_layer = bench_mrt5.SIZES["tiny"]
  cfg = base.replace(delete_gate_layer=gate_layer, **bench_mrt5.GATE)
  module = Transformer(cfg)
  calib = bench_mrt5.random_bytes(3, 40, seed=1)
  # some padding: only real bytes count
  calib = calib.at[0, 30:].set(0)
  short = jnp.full((1, 4), 3, jnp.int32)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), short, short)["params"])
  p = bench_mrt5.gate_deleting(module, params, calib, delta)
  g = bench_mrt5.gate_values(module, p, calib)
  real = np.asarray(calib) > 0
  deleted = (np.asarray(g) <= cfg.gate_threshold) & real
  # the quantile splits the real bytes' logits: exact up to one byte
  assert abs(deleted.sum() - delta * real.sum()) <= 1, (deleted.sum(), real.sum())
  assert float(mrt5.deleted_fraction(g, real, cfg.gate_threshold)) == pytest.approx(
    deleted.sum() / real.sum()
  )


@pytest.mark.slow
def test_mrt5_bench_runs_and_reports_speedups(capsys):
  bench_mrt5.main(
    [
      "--size=tiny",
      "--batch=2",
      "--input_length=64",
      "--decode_lengths=4",
      "--deltas=0.5",
      "--bucket=8",
      "--iters=1",
      "--train_batch=2",
      "--train_inputs=16",
      "--train_targets=4",
    ]
  )
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["bench"] == "mrt5"
  assert result["speedup_at_0.5"] == result["speedup_at_0.5_decode4"] > 0
  assert result["speedup_at_0.5_twice_decode4"] > 0
  assert result["encoder_speedup_at_0.5"] > 0 and result["no_gate_s_encode"] > 0
  # calibrated on another batch of the same distribution: near, not exactly, half deleted
  assert 0.3 < result["deleted_fraction_at_0.5"] < 0.7
  assert result["kept_length_at_0.5"] == mrt5.kept_length_for(result["max_kept_at_0.5"], 64, 8)
  assert result["kept_length_at_0.5"] < 64  # the compacted length really shrinks
  assert result["train_step_no_gate_s"] > 0 and result["train_step_soft_deletion_s"] > 0


@pytest.mark.parametrize("flag", ["--deltas=1.5", "--decode_lengths=0", "--batch=0"])
def test_bad_arguments_are_one_line_errors(flag, capsys):
  with pytest.raises(SystemExit) as e:
    bench_mrt5.main(["--size=tiny", flag])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert flag.split("=")[0] in err[-1]
