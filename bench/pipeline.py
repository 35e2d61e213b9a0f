"""Input-pipeline speed: span corruption on the built-in corpora vs the train step that eats it.

  python -m bench.pipeline [--model small --batch 8 --rows 2000]

Two configurations, as pretraining runs them: subword span corruption at 512/114 on `mono` (all
~480 built-in languages sampled ∝ n^0.3, built-in SentencePiece vocabulary) and byte-level at
1024/189 on `byt5_mono` (ByT5, span 20); both packed by seqio's EncDecFeatureConverter into
rows of `--batch`. For each, the rate at which the train step of `--model` (T5.1.1 shapes with
the task's vocabulary) consumes rows of that shape is measured in the same script, after the
pipeline, never concurrently. The pipeline must outrun it >= 10x. Ends with one JSON line.
Needs `python -m tasks.corpora prepare`.
"""

from __future__ import annotations

import argparse
import time

from models import runtime

runtime.configure(reexec=__name__ == "__main__")  # before JAX starts its backend

import numpy as np

import tasks
from bench.train_step import MODELS, make_batch, xt5_step
from bench.util import emit_json, print_table, time_calls
from tasks import corpora, vocab

CONFIGS = {  # name: (task, inputs length, targets length)
  "subword 512/114": ("mono", 512, 114),
  "bytes 1024/189": ("byt5_mono", 1024, 189),
}


def pipeline_rate(
  task: str, inputs: int, targets: int, batch: int, rows: int, warmup_rows: int = 64
) -> dict:
  """Rows/s and examples/s (packed segments) of the packed train pipeline, after warm-up."""
  ds = tasks.get_dataset(
    task, "train", {"inputs": inputs, "targets": targets}, batch_size=batch, shuffle=True, seed=0
  )
  it = tasks.as_numpy(ds, task)
  for _ in range(max(2, warmup_rows // batch)):  # warm-up: open every source, fill prefetch buffers
    next(it)
  t0 = time.perf_counter()
  num_rows = examples = tokens = 0
  while num_rows < rows:
    b = next(it)
    num_rows += b["encoder_input_tokens"].shape[0]
    examples += int(sum(len(np.unique(s[s > 0])) for s in b["encoder_segment_ids"]))
    tokens += int((b["encoder_input_tokens"] > 0).sum())
  seconds = time.perf_counter() - t0
  return {
    "rows_per_s": num_rows / seconds,
    "examples_per_s": examples / seconds,
    "fill": tokens / (num_rows * inputs),
  }


def train_rows_per_s(
  model: str, vocab_size: int, inputs: int, targets: int, batch: int, iters: int
) -> float:
  cfg = MODELS[model].replace(vocab_size=vocab_size)
  return batch / time_calls(xt5_step(cfg, make_batch(cfg, batch, inputs, targets)), iters=iters)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", choices=sorted(MODELS), default="small")
  p.add_argument("--batch", type=int, default=8, help="rows per batch, pipeline and train step")
  p.add_argument("--rows", type=int, default=2000, help="rows timed per configuration")
  p.add_argument("--iters", type=int, default=3, help="timed train steps")
  p.add_argument(
    "--warmup-rows", type=int, default=64, help="rows read before timing (at least 2 batches)"
  )
  args = p.parse_args(argv)
  corpora.require_prepared("bench.pipeline")

  rows, results = [], {}
  for name, (task, inputs, targets) in CONFIGS.items():
    rate = pipeline_rate(task, inputs, targets, args.batch, args.rows, args.warmup_rows)
    vocab_size = vocab.padded_vocab_size(tasks.get(task).output_features["targets"].vocabulary)
    consumed = train_rows_per_s(args.model, vocab_size, inputs, targets, args.batch, args.iters)
    results[name] = {**rate, "train_rows_per_s": consumed, "ratio": rate["rows_per_s"] / consumed}
    rows.append(
      [
        name,
        rate["examples_per_s"],
        rate["rows_per_s"],
        rate["fill"],
        consumed,
        results[name]["ratio"],
      ]
    )
  print(f"packed span corruption, batch {args.batch}; train step: t5.1.1-{args.model} shapes")
  print_table(["config", "examples/s", "rows/s", "row fill", "train rows/s", "ratio"], rows)
  worst = min(results.values(), key=lambda r: r["ratio"])
  emit_json(
    {
      "bench": "pipeline",
      "rows_per_s": worst["rows_per_s"],
      "ratio_vs_train_step": worst["ratio"],
      **{
        f"{name.split()[0]}_{key}": value for name, r in results.items() for key, value in r.items()
      },
    }
  )


if __name__ == "__main__":
  main()
