"""train.py end to end: gin command line, train -> eval -> infer, resume after SIGKILL,
sharding equivalence, SIGTERM, NaN, corrupted checkpoints, multi-process. Tiny byte-level copy
task (tests/copy_tasks.py), 8 fake CPU devices."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import tests.copy_tasks  # noqa: F401  (registers test_copy)
import train
from models.config import T5Config
from trainer import checkpoints, loop, optimizers
from trainer import params as params_lib
from trainer import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "test_copy"
LENGTHS = {"inputs": 32, "targets": 32}
TINY = T5Config(
  vocab_size=384,
  d_model=32,
  num_heads=2,
  head_dim=16,
  d_ff=64,
  num_encoder_layers=2,
  num_decoder_layers=2,
)

# The same run as gin text, for the command-line tests (subprocesses import the task via gin).
GIN = """
from __gin__ import dynamic_registration
import train as train_script
import tests.copy_tasks
from models import config as model_config
from trainer import optimizers

include 'configs/runs/pretrain.gin'

MODEL_CONFIG = @model_config.T5Config()
model_config.T5Config:
  vocab_size = 384
  d_model = 32
  num_heads = 2
  head_dim = 16
  d_ff = 64
  num_encoder_layers = 2
  num_decoder_layers = 2
MIXTURE_OR_TASK_NAME = 'test_copy'
TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 32}
BATCH_SIZE = 8
LOG_PERIOD = 1
EVAL_PERIOD = None
train_script.train:
  learning_rate = @optimizers.constant()
  show_progress = False
optimizers.constant.learning_rate = 0.01
"""


def run_train(model_dir, **overrides):
  args = dict(
    model_dir=str(model_dir),
    model_config=TINY,
    mixture_or_task_name=TASK,
    task_feature_lengths=LENGTHS,
    train_steps=4,
    batch_size=8,
    learning_rate=optimizers.constant(0.01),
    checkpoint_period=1000,
    log_period=1,
    eval_period=None,
    show_progress=False,
  )
  args.update(overrides)
  return train.train(**args)


def logged(model_dir, key="train/loss"):
  """{step: value} from MODEL_DIR/metrics.jsonl (a resumed run's later lines win)."""
  out = {}
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if key in row:
        out[row["step"]] = row[key]
  return out


def final_params(model_dir):
  ckpt = checkpoints.Checkpointer(os.path.join(model_dir, params_lib.CHECKPOINTS))
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  step, params = ckpt.restore_params(params_lib.abstract_target(TINY, sharding))
  ckpt.close()
  return step, jax.tree.map(np.asarray, params)


def write_gin(tmp_path, extra=""):
  path = tmp_path / "run.gin"
  path.write_text(GIN + extra)
  return str(path)


def subprocess_env(devices=8):
  env = dict(os.environ)
  flags = [
    f
    for f in env.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  ]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def train_cmd(gin_file, model_dir, steps, *extra):
  return [
    sys.executable,
    os.path.join(REPO, "train.py"),
    f"--gin_file={gin_file}",
    f"--gin.MODEL_DIR='{model_dir}'",
    f"--gin.TRAIN_STEPS={steps}",
    *extra,
  ]


# ----------------------------------------------------------------------------------------------


def test_train_then_evaluate_then_infer(tmp_path):
  run = tmp_path / "run"
  final = run_train(
    run,
    train_steps=40,
    checkpoint_period=20,
    log_period=5,
    eval_period=40,
    eval_batches=2,
    infer_eval_examples=6,
  )
  losses = logged(run)
  assert sorted(losses) == list(range(5, 41, 5))
  assert losses[40] < 0.7 * losses[5]
  row = [json.loads(x) for x in open(run / "metrics.jsonl")][-2]  # the last train line
  for key in (
    "train/accuracy",
    "train/z_loss",
    "train/learning_rate",
    "train/mfu",
    "train/seconds_per_step",
    "train/target_tokens_per_second",
  ):
    assert np.isfinite(row[key]) and row[key] > 0, key
  assert row["train/learning_rate"] == pytest.approx(0.01)
  assert {f"{TASK}/loss", f"{TASK}/accuracy", f"{TASK}/bleu", f"{TASK}/chrf"} <= set(final)
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(run))
  assert checkpoints.Checkpointer(str(run / "checkpoints")).steps() == [20, 40]

  # eval mode on the same checkpoint reproduces the run's final teacher-forced numbers
  out = tmp_path / "eval"
  results = train.evaluate(
    checkpoint_path=str(run),
    model_config=TINY,
    mixture_or_task_name=TASK,
    task_feature_lengths=LENGTHS,
    batch_size=8,
    output_dir=str(out),
    eval_batches=2,
    infer_eval_examples=6,
  )
  assert results[f"{TASK}/loss"] == pytest.approx(final[f"{TASK}/loss"], rel=1e-5)
  assert results[f"{TASK}/bleu"] == pytest.approx(final[f"{TASK}/bleu"])
  assert json.loads((out / "eval_metrics.json").read_text()) == pytest.approx(results)

  # infer mode: a task split and a text file, predictions and scores
  infer_args = dict(
    checkpoint_path=str(run), model_config=TINY, batch_size=4, task_feature_lengths=LENGTHS
  )
  n = train.infer(output_file=str(tmp_path / "task.jsonl"), mixture_or_task_name=TASK, **infer_args)
  rows = [json.loads(x) for x in open(tmp_path / "task.jsonl")]
  assert n == len(rows) == len(tests.copy_tasks.TEXTS["validation"])
  assert [r["input"] for r in rows] == tests.copy_tasks.TEXTS["validation"]
  assert all(isinstance(r["prediction"], str) and r["score"] <= 0 for r in rows)
  (tmp_path / "in.txt").write_text("Kane rito.\nMusa le.\nDa gufe pi.\n")
  n = train.infer(
    output_file=str(tmp_path / "file.jsonl"),
    input_file=str(tmp_path / "in.txt"),
    mixture_or_task_name=TASK,
    **infer_args,
  )
  assert n == 3
  (tmp_path / "pairs.txt").write_text("Kane rito.\tKane rito.\nMusa le.\tzzzzzzzzzz\n")
  train.infer(
    output_file=str(tmp_path / "scores.jsonl"),
    input_file=str(tmp_path / "pairs.txt"),
    mixture_or_task_name=TASK,
    mode="score",
    **infer_args,
  )
  copy, junk = [json.loads(x)["score"] for x in open(tmp_path / "scores.jsonl")]
  assert copy > junk  # a copy model prefers the copy


def test_command_line_writes_operative_config_and_final_json(tmp_path, capsys):
  gin_file = write_gin(tmp_path)
  rc = train.main(
    [
      f"--gin_file={gin_file}",
      f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
      "--gin.TRAIN_STEPS=3",
      "--gin.EVAL_PERIOD=3",
      "--gin.train_script.train.eval_batches=1",
      "--gin.train_script.train.infer_eval_examples=4",
    ]
  )
  assert rc == 0
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert set(json.loads(last)) >= {f"{TASK}/bleu", f"{TASK}/loss"}
  config = (tmp_path / "run" / "config.gin").read_text()
  assert "TRAIN_STEPS = 3" in config and "d_model = 32" in config
  assert "optimizers.constant.learning_rate = 0.01" in config


@pytest.mark.parametrize(
  "flags, expected",
  [
    ([], "required gin macro MODEL_DIR is not set"),
    (
      ["--gin.MODEL_DIR='x'", "--gin.TRAIN_STEPS=3", "--gin.TRAIN_STESP=4"],
      "no gin file uses the macro TRAIN_STESP, so it would be ignored; did you mean TRAIN_STEPS",
    ),
    (
      ["--gin.MODEL_DIR='x'", "--gin.TRAIN_STEPS=3", "--gin.train_script.train.batchsize=4"],
      "doesn't have a parameter named 'batchsize'; did you mean batch_size",
    ),
    (["--gin.MODEL_DIR=runs/x", "--gin.TRAIN_STEPS=3"], "strings need quotes"),
  ],
)
def test_config_errors_name_the_problem(tmp_path, capsys, flags, expected):
  gin_file = write_gin(tmp_path)
  if not flags:  # MODEL_DIR missing, TRAIN_STEPS given
    flags = ["--gin.TRAIN_STEPS=3"]
  assert train.main([f"--gin_file={gin_file}", *flags]) == 2
  assert expected in capsys.readouterr().err


# A new user's mistakes on the command line: each is one line naming the problem and the fix,
# a non-zero exit, and no traceback (main returns instead of raising). All fail before compiling.
MISTAKES = [
  (["--gin.MIXTURE_OR_TASK_NAME='test_cpy'"], "no task or mixture named 'test_cpy'"),
  (["--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 32}"], "TASK_FEATURE_LENGTHS['inputs']"),
  (["--gin.TASK_FEATURE_LENGTHS={'targets': 32}"], "TASK_FEATURE_LENGTHS['inputs'] is None"),
  (["--gin.TASK_FEATURE_LENGTHS=None"], "TASK_FEATURE_LENGTHS must be a dict"),
  (["--gin.TRAIN_STEPS=-5"], "TRAIN_STEPS must be a positive integer, got -5"),
  (["--gin.BATCH_SIZE=0"], "BATCH_SIZE must be a positive integer"),
  (["--gin.BATCH_SIZE=12"], "whole multiple of the 8 data-parallel devices"),
  (["--gin.CHECKPOINT_PERIOD=0"], "CHECKPOINT_PERIOD must be a positive integer"),
  (["--gin.MESH_SHAPE={'data': 3, 'model': 3}"], "needs 9 devices"),
  (["--gin.PARTITIONING_RULES='fsdpp'"], "unknown partitioning rules 'fsdpp'"),
  (["--gin.INITIAL_CHECKPOINT_PATH='/no/such/ckpt'"], "/no/such/ckpt does not exist"),
  (["--gin.MIXTURE_OR_TASK_MODULE='no_such_tasks'"], "MIXTURE_OR_TASK_MODULE 'no_such_tasks'"),
  (["--gin.model_config.T5Config.vocab_size=100"], "vocabulary"),
]


@pytest.mark.parametrize("flags, expected", MISTAKES, ids=[m[1][:40] for m in MISTAKES])
def test_user_mistakes_are_one_line_errors(tmp_path, capsys, flags, expected):
  gin_file = write_gin(tmp_path)
  argv = [f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEPS=3"]
  assert train.main(argv + flags) != 0
  err = capsys.readouterr().err
  errors = [line for line in err.splitlines() if line.startswith("xt5: error")]
  assert len(errors) == 1 and expected in errors[0], errors
  assert "In call to configurable" not in err and "Traceback" not in err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A 2-step run of the tiny model, for the evaluate / infer command lines."""
  run = tmp_path_factory.mktemp("trained") / "run"
  run_train(run, train_steps=2)
  return run


def _corrupt_copy(run, dest):
  """A copy of `run` whose only checkpoint has one flipped byte in an array file."""
  import shutil

  shutil.copytree(run, dest)
  arrays = sorted((dest / "checkpoints").glob("*/state/ocdbt.process_0/d/*"))
  data = bytearray(arrays[0].read_bytes())
  data[len(data) // 2] ^= 0xFF
  arrays[0].write_bytes(data)
  return arrays[0].name


# The same kind of mistakes on the evaluate and infer command lines, against a trained run.
JOB_MISTAKES = [
  ("eval", ["--gin.CHECKPOINT_PATH='/no/such/run'"], "checkpoint path /no/such/run does not exist"),
  ("eval", ["--gin.EVAL_SPLIT='tset'"], "EVAL_SPLIT='tset': 'test_copy' has no such split"),
  ("eval", ["--gin.DECODE_METHOD='beems'"], "method='beems'; expected one of"),
  ("eval", ["--gin.EVAL_OUTPUT_DIR='{file}/out'"], "is a file; choose another path"),
  ("eval", ["--gin.CHECKPOINT_PATH='{corrupt}'"], "has changed bytes"),
  ("eval", ["--gin.CHECKPOINT_PATH='{tmp}'"], "is not a checkpoint xt5 can read"),
  ("infer", ["--gin.INPUT_FILE='/no/in.txt'"], "input file /no/in.txt does not exist"),
  ("infer", ["--gin.INFER_MODE='scroe'"], "unknown mode 'scroe'"),
  ("infer", ["--gin.INFER_SPLIT='tset'"], "INFER_SPLIT='tset'"),
  ("infer", ["--gin.INPUT_FILE='{file}'", "--gin.INFER_MODE='score'"], "afile:1 has no tab"),
  ("infer", ["--gin.MIXTURE_OR_TASK_NAME=None"], "infer needs MIXTURE_OR_TASK_NAME"),
  ("infer", ["--gin.INFER_OUTPUT_FILE='{file}/o.jsonl'"], "is a file; choose another path"),
  ("infer", ["--gin.CHECKPOINT_PATH='{corrupt}'"], "has changed bytes"),
  ("train", ["--gin.MODEL_DIR='{file}'"], "MODEL_DIR {file} is a file, not a directory"),
]


@pytest.mark.parametrize(
  "job, flags, expected", JOB_MISTAKES, ids=[f"{m[0]}-{m[2][:30]}" for m in JOB_MISTAKES]
)
def test_evaluate_and_infer_mistakes_are_one_line_errors(
  trained_run, tmp_path, capsys, job, flags, expected
):
  """A flipped byte in the only checkpoint names the file; bad paths name the path."""
  (tmp_path / "afile").write_text("abc\n")
  names = {"file": tmp_path / "afile", "tmp": tmp_path}
  if any("{corrupt}" in f for f in flags):
    names["corrupt"] = tmp_path / "corrupt"
    flipped = _corrupt_copy(trained_run, names["corrupt"])
    expected = f"{flipped} {expected}"
  flags = [f.format(**names) for f in flags]
  expected = expected.format(**names)
  model = GIN.split("include")[0] + GIN.split("include 'configs/runs/pretrain.gin'")[1]
  (tmp_path / "model.gin").write_text(model.split("MIXTURE_OR_TASK_NAME")[0])
  common = [
    f"--gin_file={tmp_path / 'model.gin'}",
    "--gin.MIXTURE_OR_TASK_NAME='test_copy'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
    "--gin.BATCH_SIZE=8",
  ]
  if job == "train":
    argv = [f"--gin_file={write_gin(tmp_path)}", "--gin.TRAIN_STEPS=3"]
  elif job == "eval":
    argv = ["--gin_file=configs/runs/eval.gin", *common]
    argv += [f"--gin.CHECKPOINT_PATH='{trained_run}'", f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'e'}'"]
  else:
    argv = ["--gin_file=configs/runs/infer.gin", *common]
    argv += [f"--gin.CHECKPOINT_PATH='{trained_run}'", f"--gin.INFER_OUTPUT_FILE='{tmp_path}/o'"]
  assert train.main(argv + flags) != 0
  err = capsys.readouterr().err
  errors = [line for line in err.splitlines() if line.startswith("xt5: error")]
  assert len(errors) == 1 and expected in errors[0], errors
  assert "In call to configurable" not in err and "Traceback" not in err


def test_tasks_from_the_users_own_module(tmp_path, monkeypatch, capsys):
  """T5X's MIXTURE_OR_TASK_MODULE: a module in the working directory registers the task."""
  (tmp_path / "my_copy_tasks.py").write_text(
    "import seqio\nimport tasks\n"
    "tasks.add_examples_task('my_copy', [('ab', 'ab'), ('cd', 'cd')] * 8, seqio.ByteVocabulary())\n"
  )
  monkeypatch.chdir(tmp_path)
  gin_file = write_gin(tmp_path)
  rc = train.main(
    [
      f"--gin_file={gin_file}",
      f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
      "--gin.TRAIN_STEPS=1",
      "--gin.MIXTURE_OR_TASK_MODULE='my_copy_tasks'",
      "--gin.MIXTURE_OR_TASK_NAME='my_copy'",
    ]
  )
  assert rc == 0, capsys.readouterr().err
  assert "my_copy_tasks" in sys.modules


def test_missing_model_config_and_missing_gin_file(tmp_path, capsys):
  assert (
    train.main(
      [
        "--gin_file=configs/runs/pretrain.gin",
        "--gin.MODEL_DIR='x'",
        "--gin.TRAIN_STEPS=1",
        "--gin.MIXTURE_OR_TASK_NAME='test_copy'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}",
      ]
    )
    == 2
  )
  err = capsys.readouterr().err
  assert "MODEL_CONFIG is used but never set" in err and "configs/models/mt5/small.gin" in err
  assert train.main(["--gin_file=configs/runs/pretrian.gin"]) == 2
  assert "did you mean configs/runs/pretrain.gin" in capsys.readouterr().err


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """6 uninterrupted steps of the tiny model, checkpoints at 2, 4 and 6: the reference the resume
  tests compare with (constant learning rate, so its first 4 steps are a 4-step run's too).
  Tests only read it."""
  run = tmp_path_factory.mktemp("straight") / "run"
  run_train(run, train_steps=6, checkpoint_period=2)
  return run


def test_resume_after_sigkill_is_bit_identical(straight_run, tmp_path):
  """6 straight steps vs 4 steps, SIGKILL right after the step-4 checkpoint, then resume."""
  straight, resumed = straight_run, tmp_path / "resumed"
  gin_file = write_gin(tmp_path, "\nCHECKPOINT_PERIOD = 2\n")
  # The child kills itself (SIGKILL: no handler, no cleanup) once step 4 is committed.
  killer = (
    "import os, signal, sys, runpy\n"
    "from trainer import checkpoints\n"
    "save = checkpoints.Checkpointer.save\n"
    "def save_then_die(self, step, *a, **k):\n"
    "    save(self, step, *a, **k)\n"
    "    if step == 4:\n"
    "        self.wait(); os.kill(os.getpid(), signal.SIGKILL)\n"
    "checkpoints.Checkpointer.save = save_then_die\n"
    f"sys.argv = {train_cmd(gin_file, resumed, 6)[1:]!r}\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
  )
  env = subprocess_env()
  killed = subprocess.run(
    [sys.executable, "-c", killer], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert checkpoints.Checkpointer(str(resumed / "checkpoints")).steps() == [2, 4]
  done = subprocess.run(
    train_cmd(gin_file, resumed, 6), env=env, cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert logged(resumed) == logged(straight)  # every step's loss, bit for bit
  (s1, p1), (s2, p2) = final_params(straight), final_params(resumed)
  assert s1 == s2 == 6
  jax.tree.map(np.testing.assert_array_equal, p1, p2)


def test_one_device_and_eight_devices_agree(tmp_path):
  runs = {
    "one": dict(mesh_shape={"data": 1, "model": 1}),
    "data": dict(),
    "fsdp": dict(partitioning_rules="fsdp"),
    "2d": dict(mesh_shape={"data": 4, "model": 2}, partitioning_rules="2d"),
  }
  losses = {}
  for name, kw in runs.items():
    run_train(tmp_path / name, train_steps=4, **kw)
    losses[name] = logged(tmp_path / name)
  for name in ("data", "fsdp", "2d"):
    np.testing.assert_allclose(
      list(losses[name].values()), list(losses["one"].values()), atol=1e-5, err_msg=name
    )


def test_resume_on_a_different_mesh(straight_run, tmp_path):
  run = tmp_path / "run"
  run_train(run, train_steps=2, checkpoint_period=2, partitioning_rules="fsdp")  # 8 devices
  run_train(run, train_steps=4, checkpoint_period=2, mesh_shape={"data": 2, "model": 1})
  assert checkpoints.Checkpointer(str(run / "checkpoints")).steps() == [2, 4]
  resumed, want = logged(run), logged(straight_run)
  assert sorted(resumed) == [1, 2, 3, 4]
  np.testing.assert_allclose([resumed[s] for s in (3, 4)], [want[s] for s in (3, 4)], atol=1e-5)


def test_sigterm_finishes_the_step_saves_and_exits_zero(tmp_path):
  gin_file = write_gin(tmp_path)
  run = tmp_path / "run"
  proc = subprocess.Popen(
    train_cmd(gin_file, run, 100000),
    env=subprocess_env(),
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  jsonl = run / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and not (jsonl.exists() and jsonl.read_text().count("\n") >= 3):
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  steps = checkpoints.Checkpointer(str(run / "checkpoints")).steps()
  assert len(steps) == 1 and steps[0] >= 3
  assert max(logged(run)) == steps[0]
  assert f"SIGTERM received: saved step {steps[0]}" in out + err


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  make_step = state_lib.make_train_step

  def poisoned(*args, **kwargs):
    step = make_step(*args, **kwargs)

    def nan_at_step_7(state, batch, rng):
      new, metrics = step(state, batch, rng)
      bad = state["step"] == 6  # the 7th step
      metrics["loss"] = jax.numpy.where(bad, jax.numpy.nan, metrics["loss"])
      return new, metrics

    return nan_at_step_7

  monkeypatch.setattr(state_lib, "make_train_step", poisoned)
  run = tmp_path / "run"
  with pytest.raises(loop.NonFiniteLossError, match="loss is nan at step 7"):
    run_train(run, train_steps=20, checkpoint_period=5, log_period=10)
  assert checkpoints.Checkpointer(str(run / "checkpoints")).steps() == [5]


def test_corrupted_newest_checkpoint_falls_back_to_the_previous(straight_run, tmp_path, caplog):
  run = tmp_path / "run"
  run_train(run, train_steps=4, checkpoint_period=2)
  step4 = run / "checkpoints" / "4" / "state"
  victim = max((p for p in step4.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(victim.read_bytes())
  data[len(data) // 2 : len(data) // 2 + 64] = os.urandom(64)
  victim.write_bytes(bytes(data))
  run_train(run, train_steps=6, checkpoint_period=2)
  assert "checkpoint step 4" in caplog.text and "unusable" in caplog.text
  assert checkpoints.Checkpointer(str(run / "checkpoints")).steps() == [2, 4, 6]
  assert logged(run) == logged(straight_run)  # steps 3-6 redone from step 2, identically


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_and_one_process_restores(tmp_path):
  gin_file = write_gin(
    tmp_path,
    "\nCHECKPOINT_PERIOD = 2\nEVAL_PERIOD = 4\n"
    "train_script.train.eval_batches = 1\n"
    "train_script.train.infer_eval_examples = 4\n",
  )
  run = tmp_path / "run"
  address = f"localhost:{_free_port()}"
  procs = [
    subprocess.Popen(
      train_cmd(
        gin_file,
        run,
        4,
        f"--coordinator_address={address}",
        "--num_processes=2",
        f"--process_id={i}",
      ),
      env=subprocess_env(devices=4),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  try:
    results = [p.communicate(timeout=400) for p in procs]
  finally:
    for p in procs:  # jax.distributed catches SIGTERM, so SIGKILL
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, results):
    assert p.returncode == 0, err[-3000:]
  losses = logged(run)
  assert sorted(losses) == [1, 2, 3, 4]
  assert all(np.isfinite(v) for v in losses.values())
  bleu = logged(run, f"eval/{TASK}/bleu")  # decoding and seqio metrics across 2 processes
  assert list(bleu) == [4] and 0 <= bleu[4] <= 100
  step, params = final_params(run)  # this process: one process, 8 devices
  assert step == 4
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


# ----------------------------------------------------------------------------------------------
# MrT5: a delete gate, its regularizer and the PI controller (trainer/state.py)

GATED = TINY.replace(delete_gate_layer=1, use_softmax1=True)
GATED_GIN = """
model_config.T5Config.delete_gate_layer = 1
model_config.T5Config.use_softmax1 = True
train_script.train.deletion_target = 0.9
train_script.train.deletion_k_p = 2.0
train_script.train.deletion_alpha0 = 0.1
"""
GATED_KW = dict(model_config=GATED, deletion_target=0.9, deletion_k_p=2.0, deletion_alpha0=0.1)


def gated_controller(model_dir, step):
  """The PI controller stored in MODEL_DIR's checkpoint `step` (a partial restore)."""
  import orbax.checkpoint as ocp

  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {k: jax.ShapeDtypeStruct((), np.float32, sharding=sharding) for k in ("p", "i", "alpha")}
  args = ocp.args.PyTreeRestore(
    item={state_lib.PI_KEY: target},
    restore_args={state_lib.PI_KEY: checkpoints._restore_args(target)},
    partial_restore=True,
  )
  with ocp.PyTreeCheckpointer() as reader:
    got = reader.restore(os.path.join(model_dir, "checkpoints", str(step), "state"), args=args)
  return {k: float(v) for k, v in got[state_lib.PI_KEY].items()}


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory):
  """6 steps of a gated model, checkpoints at 3 and 6, evaluated (and decoded) at the end."""
  run = tmp_path_factory.mktemp("gated") / "straight"
  final = run_train(
    run,
    train_steps=6,
    checkpoint_period=3,
    eval_period=6,
    eval_batches=1,
    infer_eval_examples=4,
    **GATED_KW,
  )
  return run, final


def test_gated_run_logs_deletion_evaluates_and_infers(gated_run, tmp_path):
  run, final = gated_run
  rows = [json.loads(x) for x in open(run / "metrics.jsonl")]
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == list(range(1, 7))
  for r in train_rows:
    for key in ("train/deleted_fraction", "train/gate_loss", "train/alpha", "train/mean_gate"):
      assert np.isfinite(r[key]), key
    assert 0 <= r["train/deleted_fraction"] <= 1 and r["train/gate_loss"] <= 0
  assert train_rows[0]["train/alpha"] == pytest.approx(0.1)  # alpha0, then the controller's
  assert train_rows[1]["train/alpha"] > 0.1  # the target 0.9 is far above what it deletes
  assert 0 <= final[f"{TASK}/deleted_fraction"] <= 1
  assert {f"{TASK}/loss", f"{TASK}/bleu"} <= set(final)  # decoding (hard deletion) ran
  assert json.loads((run / "model_config.json").read_text())["delete_gate_layer"] == 1
  # infer on the gated checkpoint: predictions and scores, with hard deletion
  args = dict(
    checkpoint_path=str(run), model_config=GATED, batch_size=4, task_feature_lengths=LENGTHS
  )
  out = tmp_path / "task.jsonl"
  n = train.infer(output_file=str(out), mixture_or_task_name=TASK, max_examples=4, **args)
  rows = [json.loads(x) for x in open(out)]
  assert n == len(rows) == 4 and all(isinstance(r["prediction"], str) for r in rows)
  train.infer(
    output_file=str(tmp_path / "s.jsonl"),
    mixture_or_task_name=TASK,
    mode="score",
    max_examples=4,
    **args,
  )
  assert all(json.loads(x)["score"] <= 0 for x in open(tmp_path / "s.jsonl"))


def test_gated_resume_after_sigkill_is_bit_identical(gated_run, tmp_path):
  """The gated run of `gated_run` vs 3 steps, SIGKILL after the step-3 checkpoint, resume."""
  straight, _ = gated_run
  resumed = tmp_path / "resumed"
  gin_file = write_gin(tmp_path, GATED_GIN + "\nCHECKPOINT_PERIOD = 3\n")
  killer = (
    "import os, signal, sys, runpy\n"
    "from trainer import checkpoints\n"
    "save = checkpoints.Checkpointer.save\n"
    "def save_then_die(self, step, *a, **k):\n"
    "    save(self, step, *a, **k)\n"
    "    if step == 3:\n"
    "        self.wait(); os.kill(os.getpid(), signal.SIGKILL)\n"
    "checkpoints.Checkpointer.save = save_then_die\n"
    f"sys.argv = {train_cmd(gin_file, resumed, 6)[1:]!r}\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
  )
  env = subprocess_env()
  killed = subprocess.run(
    [sys.executable, "-c", killer], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert checkpoints.Checkpointer(str(resumed / "checkpoints")).steps() == [3]
  assert gated_controller(resumed, 3) == gated_controller(straight, 3)
  done = subprocess.run(
    train_cmd(gin_file, resumed, 6), env=env, cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr[-3000:]
  for key in ("train/loss", "train/alpha", "train/deleted_fraction", "train/gate_loss"):
    assert logged(resumed, key) == logged(straight, key), key  # bit for bit
  assert gated_controller(resumed, 6) == gated_controller(straight, 6)
  assert gated_controller(straight, 6)["alpha"] > 0.1
  with (
    checkpoints.Checkpointer(str(straight / "checkpoints")) as a,
    checkpoints.Checkpointer(str(resumed / "checkpoints")) as b,
  ):
    target = params_lib.abstract_target(GATED, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    (s1, p1), (s2, p2) = a.restore_params(target), b.restore_params(target)
  assert s1 == s2 == 6
  jax.tree.map(np.testing.assert_array_equal, p1, p2)
