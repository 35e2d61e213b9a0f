"""Training-loop overhead: `trainer.loop.train` end to end vs the bare jitted train step it runs.

  python -m bench.train_loop [--model quickstart --task translate_en_de --steps 80]

Three contenders, same model, optimizer, schedule, mesh and shardings, in one process:
  bare step        trainer.loop's jitted step (trainer.state, donated state) on one fixed batch of
                   the task, pre-fetched to the device; blocks once, after the block of steps
  step + pipeline  the same jitted step, each batch from a seqio TrainStream (host -> device)
  full loop        `trainer.loop.train` itself: input pipeline, step, host syncs for metrics,
                   TensorBoard + JSONL logs every --log-period steps, async orbax checkpoints
                   every --checkpoint-period steps; eval off, no progress bar

The loop is timed from its own log, without its start-up: a call of `trainer.loop.train` runs W + N
steps, W = one log period of warm-up (jit, restore, data skip, pipeline fill); its time for N
steps is the difference of the `time` stamps of the metrics.jsonl lines that end the warm-up and
the run. Every stamp is taken at the same point of a log cycle, so the difference holds whole
cycles: every step, log and checkpoint save in them (a save after step s runs in the window that
starts at s's line), nothing before or after. Rounds interleave the contenders (bare, pipeline,
loop, ..., bare, pipeline) so a shared machine's slow spells fall on all of them; each round's
loop call resumes the previous one's run. JAX's persistent compilation cache (a temporary
directory) lets each call load the programs compiled before it instead of recompiling.
Seconds per step are means over equal blocks. Ends with one JSON line; `overhead_fraction` is
loop / bare - 1 (target <= 0.05). Needs `python -m tasks.corpora prepare`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import tempfile
import time

from models import runtime

runtime.configure(reexec=__name__ == "__main__")  # before JAX starts its backend

import jax
from jax.experimental.compilation_cache import compilation_cache

import tasks
from bench.util import emit_json, print_table
from models import partitioning
from models.config import T5Config
from models.network import Transformer
from tasks import corpora, vocab
from trainer import data, evaluation, loop, optimizers
from trainer import metrics as metrics_lib
from trainer import state as state_lib

# vocab_size is replaced by the task's (padded) vocabulary size.
MODELS = {
  # configs/experiments/quickstart.gin: mT5 recipe at CPU size, bf16 activations
  "quickstart": T5Config(
    d_model=192,
    num_heads=3,
    head_dim=64,
    d_ff=512,
    num_encoder_layers=3,
    num_decoder_layers=3,
    dtype="bfloat16",
  ),
  "small": T5Config(dtype="bfloat16"),  # T5.1.1/mT5-small shapes
  # a tiny model: exercises the whole script in seconds (tests/bench), measures nothing; one
  # layer a side, since compiling each layer is most of the script's time on it
  "tiny": T5Config(
    d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1
  ),
}
# Per model, unless given on the command line. Rounds of whole checkpoint periods keep the saves
# per timed step at 1 / checkpoint_period; many short rounds beat few long ones on a shared host.
PRESETS = {
  "quickstart": dict(
    batch=16, inputs=128, targets=128, log_period=10, checkpoint_period=20, rounds=4
  ),
  "small": dict(batch=16, inputs=128, targets=128, log_period=10, checkpoint_period=20, rounds=4),
  "tiny": dict(batch=8, inputs=32, targets=32, log_period=2, checkpoint_period=3, rounds=2),
}
RULES = "data_parallel"  # trainer.loop.train's default


def model_config(model: str, task: str) -> T5Config:
  vocabulary = tasks.get(task).output_features["targets"].vocabulary
  return MODELS[model].replace(vocab_size=vocab.padded_vocab_size(vocabulary))


class BareStep:
  """trainer.loop's jitted step (same optimizer, schedule, shardings, donation) outside the loop."""

  def __init__(self, cfg: T5Config, dataset: data.DatasetConfig):
    placement = partitioning.Placement(partitioning.make_mesh(), RULES)
    module = Transformer(cfg)
    lr = optimizers.rsqrt_decay()
    tx = optimizers.make_optimizer(optimizers.adafactor, lr)
    self.batch_sharding = placement.batch_sharding
    self.stream = data.TrainStream(dataset)
    self.batch = data.global_batch(next(self.stream), self.batch_sharding)  # fixed, on device
    shardings = state_lib.state_shardings(module, tx, self.batch, placement)
    self.state = state_lib.init_state(
      module, tx, jax.random.key(0), self.batch, placement, shardings
    )
    self.step_fn = loop.make_train_step_fn(module, tx, lr, shardings, placement)
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


@contextlib.contextmanager
def compilation_cache_in(path: str):
  """JAX's persistent compilation cache in `path` while inside: each round's `trainer.loop.train`
  loads what the bare step and the previous round compiled (the same programs) instead of
  compiling again, which start-up would otherwise spend. Executables are unchanged."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  previous = {name: getattr(jax.config, name) for name in names}
  jax.config.update(names[0], path)
  jax.config.update(names[1], 0.0)
  compilation_cache.reset_cache()  # the cache is set up once per process: redo it for `path`
  try:
    yield
  finally:
    for name, value in previous.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()


def logged_times(model_dir: str) -> dict[int, float]:
  """{step: wall time} of the train log lines in MODEL_DIR/metrics.jsonl (later lines win)."""
  out = {}
  with open(os.path.join(model_dir, metrics_lib.JSONL)) as f:
    for line in f:
      row = json.loads(line)
      if "train/seconds_per_step" in row:
        out[row["step"]] = row["time"]
  return out


def loop_round(
  model_dir: str,
  cfg: T5Config,
  dataset: data.DatasetConfig,
  start: int,
  warmup: int,
  steps: int,
  log_period: int,
  checkpoint_period: int,
) -> float:
  """Wall seconds of the loop's steps start+warmup+1 .. start+warmup+steps, from its log."""
  end = start + warmup + steps
  loop.train(
    model_dir=model_dir,
    model_config=cfg,
    dataset=dataset,
    train_steps=end,
    optimizer=loop.OptimizerConfig(optimizers.adafactor, optimizers.rsqrt_decay()),
    partitioning_rules=RULES,
    checkpoint=loop.CheckpointConfig(period=checkpoint_period),
    eval=evaluation.EvalConfig(period=None),
    log_period=log_period,
    show_progress=False,
  )
  gc.collect()  # the run's input pipeline stops its threads before the next contender runs
  times = logged_times(model_dir)
  first = start + warmup
  if first not in times or end not in times:
    raise RuntimeError(
      f"loop.train logged no line at step {first} or {end} in "
      f"{model_dir}/{metrics_lib.JSONL}; logged steps: {sorted(times)}"
    )
  return times[end] - times[first]


def measure(
  cfg: T5Config,
  dataset: data.DatasetConfig,
  model_dir: str,
  rounds: int,
  per_round: int,
  log_period: int,
  checkpoint_period: int,
) -> dict[str, list[float]]:
  """Seconds per step of each contender's timed blocks, in interleaved rounds."""
  warmup = log_period  # the loop's first log window: compile (or cache load), restore, data skip
  bare = BareStep(cfg, dataset)
  bare.run(2)  # compile
  bare.run(2, fed=True)  # fill the pipeline
  blocks = {"bare step": [], "step + pipeline": [], "full loop": []}

  def bare_blocks(r):
    bare.run(1)  # settle: what the previous contender left running (its threads, gc) ends here
    order = (("bare step", False), ("step + pipeline", True))
    for name, fed in order[::-1] if r % 2 else order:  # neither always follows the loop
      blocks[name].append(bare.run(per_round, fed) / per_round)

  for r in range(rounds):
    bare_blocks(r)
    blocks["full loop"].append(
      loop_round(
        model_dir,
        cfg,
        dataset,
        r * (warmup + per_round),
        warmup,
        per_round,
        log_period,
        checkpoint_period,
      )
      / per_round
    )
  bare_blocks(rounds)  # the sandwich's other slice: drift before and after hits both sides
  return blocks


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", choices=sorted(MODELS), default="quickstart")
  p.add_argument("--task", default="translate_en_de", help="a built-in seqio task or mixture")
  p.add_argument(
    "--steps",
    type=int,
    default=80,
    help="timed steps per contender over all rounds (rounded up to log periods)",
  )
  for flag in PRESETS["quickstart"]:
    defaults = ", ".join(f"{m} {d[flag]}" for m, d in PRESETS.items())
    p.add_argument(f"--{flag.replace('_', '-')}", type=int, help=f"default per --model: {defaults}")
  p.add_argument(
    "--model-dir",
    help="the loop's MODEL_DIR, kept afterwards; must not exist (default: a temporary directory)",
  )
  args = p.parse_args(argv)
  opts = {
    k: v if (v := getattr(args, k)) is not None else d for k, d in PRESETS[args.model].items()
  }
  if min(args.steps, *opts.values()) < 1:
    p.error(
      "--steps, --batch, --inputs, --targets, --log-period, --checkpoint-period and "
      "--rounds must be >= 1"
    )
  if args.model_dir and os.path.exists(args.model_dir):
    p.error(f"--model-dir {args.model_dir} exists and the loop would resume it: pass a new path")
  corpora.require_prepared("bench.train_loop")

  rounds, log_period, ckpt_period = opts["rounds"], opts["log_period"], opts["checkpoint_period"]
  per_round = -(-args.steps // rounds // log_period) * log_period  # whole log windows
  cfg = model_config(args.model, args.task)
  dataset = data.DatasetConfig(
    args.task,
    {"inputs": opts["inputs"], "targets": opts["targets"]},
    "train",
    opts["batch"],
    seed=0,
  )  # as train.py's train builds it
  with tempfile.TemporaryDirectory(prefix="xt5_bench_loop_") as tmp:
    with compilation_cache_in(os.path.join(tmp, "jax_cache")):
      blocks = measure(
        cfg,
        dataset,
        os.path.abspath(args.model_dir or os.path.join(tmp, "run")),
        rounds,
        per_round,
        log_period,
        ckpt_period,
      )
  sec = {name: statistics.mean(b) for name, b in blocks.items()}  # blocks are equally long
  # a save after step s runs inside the window that begins at s's log line
  saves = sum(
    s % ckpt_period == 0
    for r in range(rounds)
    for s in range(r * (log_period + per_round) + log_period, (r + 1) * (log_period + per_round))
  )

  print(
    f"{args.model} ({cfg.d_model}d, {cfg.num_encoder_layers}+{cfg.num_decoder_layers} "
    f"layers, {cfg.dtype}) on {args.task}, batch {opts['batch']}, lengths {opts['inputs']}/"
    f"{opts['targets']}, {jax.device_count()} {jax.devices()[0].platform} device(s); loop "
    f"logs every {log_period}, checkpoints every {ckpt_period} ({saves} async saves in its "
    f"{rounds * per_round} timed steps); {rounds} interleaved rounds"
  )
  print_table(
    ["run", "s/step", "vs bare", "blocks", "block s/step min-max"],
    [
      [
        name,
        t,
        f"{t / sec['bare step'] - 1:+.1%}",
        len(blocks[name]),
        f"{min(blocks[name]):.3g}-{max(blocks[name]):.3g}",
      ]
      for name, t in sec.items()
    ],
  )
  bare = blocks["bare step"]
  paired = [loop / ((bare[r] + bare[r + 1]) / 2) - 1 for r, loop in enumerate(blocks["full loop"])]
  print(
    "per round, loop vs the bare blocks either side: "
    + ", ".join(f"{x:+.1%}" for x in paired)
    + " (their spread shows the host's noise)"
  )
  emit_json(
    {
      "bench": "train_loop",
      "bare_s": sec["bare step"],
      "pipeline_fed_s": sec["step + pipeline"],
      "loop_s": sec["full loop"],
      "overhead_fraction": sec["full loop"] / sec["bare step"] - 1,
      "pipeline_overhead_fraction": sec["step + pipeline"] / sec["bare step"] - 1,
      "timed_loop_steps": rounds * per_round,
      "checkpoints_in_window": saves,
    }
  )


if __name__ == "__main__":
  main()
