"""Timing and reporting shared by the benchmarks."""

from __future__ import annotations

import json
import statistics
import time
from typing import Callable, Sequence


def time_calls(fn: Callable[[], object], *, warmup: int = 1, iters: int = 3,
               best: bool = False) -> float:
  """Median (or with `best`, minimum) wall seconds of `fn()`; `fn` must block until its result
  is ready. Use `best` for ceilings: the fastest run is the closest to what the hardware gives."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times) if best else statistics.median(times)


def time_interleaved(fns: dict[str, Callable[[], object]], *, rounds: int = 3) -> dict[str, float]:
  """Median wall seconds of each `fn()`, timed round-robin after one warm-up call each.

  Interleaving spreads a shared machine's slow spells over every contender, so the ratios
  between them hold even when absolute times drift.
  """
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(ts) for name, ts in times.items()}


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
  cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  for i, r in enumerate(cells):
    print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    if i == 0:
      print("  ".join("-" * w for w in widths))


def emit_json(result: dict) -> None:
  """The benchmark's machine-readable result: always the last line printed."""
  print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}),
        flush=True)


def _fmt(x) -> str:
  return f"{x:.3g}" if isinstance(x, float) else str(x)
