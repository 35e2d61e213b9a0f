"""Timing and reporting shared by the benchmarks."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence


def time_calls(
  fn: Callable[[], object], *, warmup: int = 1, iters: int = 3, best: bool = False
) -> float:
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


class PeerProcess:
  """The peer (HF PyTorch) in a child process of the same script.

  PyTorch's OpenMP workers and allocator slow XLA when both live in one process (README,
  Benchmarks), and nobody trains that way, so each side gets a process of its own. The child builds
  its callables with `factory(*args)` ("module:function" returning {name: callable}); `peer[name]`
  is a blocking call that runs one of them there, so peer calls interleave with local ones in
  `time_interleaved`.
  """

  def __init__(self, factory: str, *args):
    ctx = multiprocessing.get_context("spawn")
    self._conn, child = ctx.Pipe()
    self._proc = ctx.Process(target=_peer_main, args=(child, factory, args), daemon=True)
    self._proc.start()
    child.close()  # the child's end lives in the child alone: its death ends our recv() with EOF
    self._receive()  # the child's ready signal: its callables are built

  def _receive(self):
    try:
      msg = self._conn.recv()
    except EOFError:
      self._proc.join(timeout=10)
      raise RuntimeError(
        f"peer process exited (code {self._proc.exitcode}) before answering"
      ) from None
    if isinstance(msg, BaseException):
      raise RuntimeError(f"peer process failed: {msg!r}") from msg
    return msg

  def __getitem__(self, name: str) -> Callable[[], object]:
    def call():
      self._conn.send(name)
      return self._receive()

    return call

  def close(self):
    if self._proc.is_alive():
      self._conn.send(None)
      self._proc.join(timeout=30)


def _peer_main(conn, factory: str, args):
  try:
    module, fn = factory.split(":")
    fns = getattr(importlib.import_module(module), fn)(*args)
    conn.send("ready")
    while (name := conn.recv()) is not None:
      conn.send(fns[name]())
  except BaseException as e:  # reported to the parent, which raises it
    conn.send(e)


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
  cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  for i, r in enumerate(cells):
    print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    if i == 0:
      print("  ".join("-" * w for w in widths))


def emit_json(result: dict) -> None:
  """The benchmark's machine-readable result: always the last line printed."""
  print(
    json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}),
    flush=True,
  )


def _fmt(x) -> str:
  return f"{x:.3g}" if isinstance(x, float) else str(x)
