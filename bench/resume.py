"""Time to restore the training stream's data position, by tf.data iterator vs by replay.

  python -m bench.resume [--task multitask --batch 16 --length 128 --at 10,1000,10000]

One stream of `--task` (packed, `--length` inputs and targets, `--batch` rows) is read to each
position of `--at` in turn; at each, its iterator state is saved (`TrainStream.iterator_state`,
what a checkpoint stores per process) and a fresh stream is restored from it and yields one
batch, which must equal the uninterrupted stream's. Restore time counts building the pipeline,
loading the state and that first batch: what a resumed run waits for. Replay (the fallback,
and what xt5 did before) is timed at the smaller positions only; its time grows with the
position. Ends with one JSON line. Needs `python -m tasks.corpora prepare`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.util import emit_json, print_table
from tasks import corpora
from trainer import data


def _restore_s(config, saved, files, want) -> float:
  t0 = time.perf_counter()
  stream, note = data.TrainStream.resume(config, saved, files)
  got = next(stream)
  seconds = time.perf_counter() - t0
  if note or any(not np.array_equal(want[k], got[k]) for k in want):
    raise RuntimeError(f"the restored stream differs from the uninterrupted one ({note})")
  return seconds


def _replay_s(config, consumed: int) -> float:
  t0 = time.perf_counter()
  next(data.TrainStream(config, consumed))
  return time.perf_counter() - t0


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--task", default="multitask")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--length", type=int, default=128, help="inputs and targets length")
  p.add_argument("--at", default="10,1000,10000", help="consumed batches to restore at")
  p.add_argument("--replay-up-to", type=int, default=1000, help="largest position to replay")
  args = p.parse_args(argv)
  corpora.require_prepared("bench.resume")
  positions = sorted(int(x) for x in args.at.split(","))
  config = data.DatasetConfig(
    args.task, {"inputs": args.length, "targets": args.length}, batch_size=args.batch, seed=0
  )
  stream = data.TrainStream(config)
  rows, result = [], {"bench": "resume", "task": args.task, "batch": args.batch}
  for at in positions:
    while stream.batches_consumed < at:
      next(stream)
    t0 = time.perf_counter()
    files = stream.iterator_state()
    save_s = time.perf_counter() - t0
    saved = stream.state()
    want = next(stream)  # the uninterrupted stream's next batch
    restore_s = _restore_s(config, saved, files, want)
    replay_s = _replay_s(config, at) if at <= args.replay_up_to else None
    state_bytes = sum(map(len, files.values()))
    rows.append([at, restore_s, replay_s if replay_s is not None else "-", save_s, state_bytes])
    result.update(
      {
        f"restore_s_at_{at}": restore_s,
        f"save_s_at_{at}": save_s,
        f"state_bytes_at_{at}": state_bytes,
      }
    )
    if replay_s is not None:
      result[f"replay_s_at_{at}"] = replay_s
  print(f"{args.task}, batch {args.batch}, {args.length}/{args.length}, packed")
  print_table(["consumed batches", "restore s", "replay s", "save s", "state bytes"], rows)
  result["state_bytes"] = max(r[-1] for r in rows)
  emit_json(result)


if __name__ == "__main__":
  main()
