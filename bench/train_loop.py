"""Training-loop overhead: `train.train` end to end vs the bare jitted train step it runs.

  python -m bench.train_loop [--model quickstart --task translate_en_de --steps 100 --rounds 2]

Three contenders, same model, optimizer, mesh and shardings, in one process:
  bare step   the jitted train step of trainer.state, jitted as train.py jits it (donated
              state), on one fixed, pre-fetched device batch of the task; blocks after the block
  step + pipeline  the same jitted step fed by a seqio TrainStream (host batches -> device)
  full loop   `train.train` itself: input pipeline, step, host sync for metrics, TensorBoard +
              JSONL logging every --log-period steps, async orbax checkpoints every
              --checkpoint-period steps; eval off, no progress bar

The loop is timed from its own log: `train.train` to W + N steps, W one log period of warm-up
(compile, restore, data skip, pipeline fill), then the wall time between the `time` stamps of
the metrics.jsonl lines at steps W and W + N, over N. That window holds every per-step cost of
the loop (logging stamps are taken at the same point of each log cycle) and none of its
start-up. Rounds interleave the contenders (bare, pipeline, loop, ..., bare, pipeline): each
round resumes the previous round's run for another W + N steps (a fresh call recompiles; W
absorbs that), so a shared machine's slow spells fall on all of them. Seconds per step are
pooled over rounds (total time / total steps). Ends with one JSON line; `overhead_fraction` is
loop / bare - 1 (target <= 0.05). Needs `python -m tasks.corpora prepare`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time

from models import runtime

runtime.configure()  # before JAX starts its backend

import jax

import tasks
import train
from bench.util import emit_json, print_table
from models import partitioning
from models.config import T5Config
from models.network import Transformer
from tasks import corpora, vocab
from trainer import data, metrics as metrics_lib, optimizers, state as state_lib

# vocab_size is replaced by the task's (padded) vocabulary size.
MODELS = {
    # configs/experiments/quickstart.gin: mT5 recipe at CPU size, bf16 activations
    "quickstart": T5Config(d_model=192, num_heads=3, head_dim=64, d_ff=512, num_encoder_layers=3,
                           num_decoder_layers=3, dtype="bfloat16"),
    "small": T5Config(dtype="bfloat16"),  # T5.1.1/mT5-small shapes
    # a tiny model: exercises the whole script in seconds (tests/bench), measures nothing
    "tiny": T5Config(d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=2,
                     num_decoder_layers=2),
}
# per model: (log period, checkpoint period, rounds) unless given on the command line
SCHEDULES = {"quickstart": (10, 25, 2), "small": (10, 25, 2), "tiny": (2, 3, 2)}
RULES = "data_parallel"  # train.train's default


def model_config(model: str, task: str) -> T5Config:
  vocabulary = tasks.get(task).output_features["targets"].vocabulary
  return MODELS[model].replace(vocab_size=vocab.padded_vocab_size(vocabulary))


def dataset_config(task: str, lengths: dict, batch: int) -> data.DatasetConfig:
  return data.DatasetConfig(task, lengths, "train", batch, seed=0)  # as train.train builds it


class BareStep:
  """train.py's jitted step (same optimizer, schedule, shardings, donation) outside the loop."""

  def __init__(self, cfg: T5Config, dataset: data.DatasetConfig):
    mesh = partitioning.make_mesh()
    module = Transformer(cfg)
    lr = optimizers.rsqrt_decay()
    tx = optimizers.make_optimizer(optimizers.adafactor, lr)
    self.batch_sharding = partitioning.batch_sharding(mesh, RULES)
    self.stream = data.TrainStream(dataset)
    self.batch = data.global_batch(next(self.stream), self.batch_sharding)  # fixed, on device
    shardings = state_lib.state_shardings(module, tx, self.batch, mesh, RULES)
    self.state = state_lib.init_state(module, tx, jax.random.key(0), self.batch, mesh, RULES,
                                      shardings)
    self.step_fn = partitioning.jit(state_lib.make_train_step(module, tx, lr), mesh, RULES,
                                    in_shardings=(shardings, self.batch_sharding, None),
                                    out_shardings=(shardings, None), donate_argnums=(0,))
    self.rng = jax.random.key(1)

  def run(self, steps: int, fed: bool = False) -> float:
    """Wall seconds of `steps` steps, dispatched back to back and waited for at the end; `fed`
    takes each batch from the input pipeline instead of the fixed device batch."""
    t0 = time.perf_counter()
    for _ in range(steps):
      batch = data.global_batch(next(self.stream), self.batch_sharding) if fed else self.batch
      self.state, metrics = self.step_fn(self.state, batch, self.rng)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - t0


def logged_times(model_dir: str) -> dict[int, float]:
  """{step: wall time} of the train log lines in MODEL_DIR/metrics.jsonl (later lines win)."""
  out = {}
  with open(os.path.join(model_dir, metrics_lib.JSONL)) as f:
    for line in f:
      row = json.loads(line)
      if "train/seconds_per_step" in row:
        out[row["step"]] = row["time"]
  return out


def loop_round(model_dir: str, cfg: T5Config, dataset: data.DatasetConfig, start: int,
               warmup: int, steps: int, log_period: int, checkpoint_period: int) -> float:
  """Wall seconds of the loop's steps start+warmup+1 .. start+warmup+steps, from its log."""
  end = start + warmup + steps
  train.train(model_dir=model_dir, model_config=cfg,
              mixture_or_task_name=dataset.mixture_or_task_name,
              task_feature_lengths=dict(dataset.task_feature_lengths), train_steps=end,
              batch_size=dataset.batch_size, seed=dataset.seed, optimizer=optimizers.adafactor,
              learning_rate=optimizers.rsqrt_decay(), partitioning_rules=RULES,
              checkpoint_period=checkpoint_period, log_period=log_period, eval_period=None,
              show_progress=False)
  gc.collect()  # the run's input pipeline stops its threads before the next contender runs
  times = logged_times(model_dir)
  first = start + warmup
  if first not in times or end not in times:
    raise RuntimeError(f"train.train logged no line at step {first} or {end} in "
                       f"{model_dir}/{metrics_lib.JSONL}; logged steps: {sorted(times)}")
  return times[end] - times[first]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", choices=sorted(MODELS), default="quickstart")
  p.add_argument("--task", default="translate_en_de", help="a built-in seqio task or mixture")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--inputs", type=int, default=128)
  p.add_argument("--targets", type=int, default=128)
  p.add_argument("--steps", type=int, default=100,
                 help="timed steps per contender, over all rounds (rounded up to log periods)")
  p.add_argument("--rounds", type=int, help="interleaved rounds (default: per model)")
  p.add_argument("--log-period", type=int, help="loop log period (default: per model)")
  p.add_argument("--checkpoint-period", type=int, help="loop checkpoint period (per model)")
  p.add_argument("--model-dir", help="the loop's MODEL_DIR; must not exist (default: a temp dir)")
  args = p.parse_args(argv)
  log_period, ckpt_period, rounds = (
      given if given is not None else default for given, default in
      zip((args.log_period, args.checkpoint_period, args.rounds), SCHEDULES[args.model]))
  if min(args.steps, rounds, log_period, ckpt_period) < 1:
    p.error("--steps, --rounds, --log-period and --checkpoint-period must be >= 1")
  if args.model_dir and os.path.exists(args.model_dir):
    p.error(f"--model-dir {args.model_dir} exists; the loop would resume it: pass a new path")
  corpora.require_prepared("bench.train_loop")

  per_round = -(-args.steps // rounds // log_period) * log_period  # whole log windows
  warmup = log_period  # the loop's first log window: compile, restore, data skip
  lengths = {"inputs": args.inputs, "targets": args.targets}
  cfg = model_config(args.model, args.task)
  dataset = dataset_config(args.task, lengths, args.batch)
  bare = BareStep(cfg, dataset)
  bare.run(2)  # compile
  bare.run(2, fed=True)  # fill the pipeline
  totals = {"bare step": 0.0, "step + pipeline": 0.0, "full loop": 0.0}
  counts = dict.fromkeys(totals, 0)

  def bare_blocks():
    for name, fed in (("bare step", False), ("step + pipeline", True)):
      totals[name] += bare.run(per_round, fed)
      counts[name] += per_round

  with tempfile.TemporaryDirectory(prefix="xt5_bench_loop_") as tmp:
    model_dir = os.path.abspath(args.model_dir or os.path.join(tmp, "run"))
    for r in range(rounds):
      bare_blocks()
      totals["full loop"] += loop_round(model_dir, cfg, dataset, r * (warmup + per_round),
                                        warmup, per_round, log_period, ckpt_period)
      counts["full loop"] += per_round
    bare_blocks()  # the sandwich's other slice: drift hits both sides
  sec = {name: totals[name] / counts[name] for name in totals}
  timed = [s for r in range(rounds) for s in range(r * (warmup + per_round) + warmup,
                                                     (r + 1) * (warmup + per_round))]
  saves = sum(s % ckpt_period == 0 for s in timed)  # saves after step s land in the window

  print(f"{args.model} ({cfg.d_model}d, {cfg.num_encoder_layers}+{cfg.num_decoder_layers} "
        f"layers, {cfg.dtype}) on {args.task}, batch {args.batch}, lengths {args.inputs}/"
        f"{args.targets}, {jax.device_count()} {jax.devices()[0].platform} device(s); loop: "
        f"log every {log_period}, checkpoint every {ckpt_period} ({saves} async saves in "
        f"{counts['full loop']} timed steps), {rounds} interleaved rounds")
  print_table(["run", "steps", "s/step", "vs bare"],
              [[name, counts[name], sec[name], f"{sec[name] / sec['bare step'] - 1:+.1%}"]
               for name in totals])
  emit_json({
      "bench": "train_loop",
      "bare_s": sec["bare step"], "pipeline_fed_s": sec["step + pipeline"],
      "loop_s": sec["full loop"],
      "overhead_fraction": sec["full loop"] / sec["bare step"] - 1,
      "pipeline_overhead_fraction": sec["step + pipeline"] / sec["bare step"] - 1,
      "timed_steps": counts["full loop"], "checkpoints_in_window": saves,
  })


if __name__ == "__main__":
  main()
