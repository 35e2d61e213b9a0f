"""Saving and restoring the train state so that a run never loses more than the work done since
its last committed checkpoint. Built on orbax's `CheckpointManager` (async saves, keep-K).

    ckpt = Checkpointer("runs/mt5_small", keep=3)
    ckpt.save(step, state, {"batches_consumed": 40, "seed": 0})  # returns after device->host copy
    step, state, data_state = ckpt.restore(abstract_state)       # newest usable checkpoint
    ckpt.close()                                                 # waits for the background write

`save(..., data_iterator=files)` also stores this process's serialized input-pipeline iterator
(`TrainStream.iterator_state()`: {suffix: bytes}); `restore(..., data_iterator=True)` returns it
as a fourth element (None when the step has none: saved before iterators were stored, or by a
pipeline tf.data cannot checkpoint).

Layout of DIRECTORY:
  <step>/state/                  orbax PyTreeSave of the state pytree (OCDBT, zarr3)
  <step>/data_state/metadata     orbax JsonSave of the small data-pipeline dict
  <step>/data_iterator/process_<i>.<suffix>   process i's tf.data iterator checkpoint
                                 (`process_<i>.index`, `process_<i>.data-00000-of-00001`); absent
                                 in steps saved before xt5 stored iterators
  <step>/_CHECKPOINT_METADATA, <step>/commit_success.txt      orbax's step metadata
  <step>/xt5_manifest.json       {"version": 1, "files": {relative path: {"size", "sha256"}}} of
                                 every file of the step except orbax's two step-metadata files
  <step>.orbax-checkpoint-tmp/   a save in progress, or one that was killed or failed: never
                                 read, removed by the next save
  <step>.corrupt-<unix time>/    a step that restore() found unusable, moved aside (never deleted)
                                 by the next save so keep-K retention cannot keep it over new work

Cost to the training steps: a save blocks the caller only for the device->host copy; the write
runs on tensorstore's thread pool. On a host with few cores that pool's CPU comes out of XLA's
threads, so arrays are stored uncompressed by default (zstd roughly doubles the pool's CPU per save
for files a few percent smaller), and save() lowers the pool's threads to nice 19 (Linux) so that
they write in the cores' idle moments. It does so before it starts the write, when no save's Python
threads compete with it for the GIL. The pool starts during a process's first save or restore (a
save that starts it writes at normal priority) and grows now and then: threads that appear during a
save are lowered by the next one. Most of a save's CPU is orbax's Python threads', a roughly fixed
cost per array; they stay at normal priority: they take the GIL, and one starved by the scheduler
while holding it would stall the training thread too. The measurements are in the README's
Benchmarks section.

Why it is safe: orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it when complete,
so a killed save leaves no committed step. Orbax may load truncated or flipped array bytes
silently, so process 0 hashes every file from orbax's background thread just before that rename
(`post_finalization_callback`): the manifest commits with the step and the training step never
waits for the hashing. restore() checks the manifest (on process 0, sharing its verdict) and falls
back to the previous step when the newest is damaged. Every process calls every method; only
process 0 writes manifests or moves and removes directories.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

MANIFEST = "xt5_manifest.json"
_TMP_SUFFIX = ocp.path.atomicity_types.TMP_DIR_SUFFIX  # ".orbax-checkpoint-tmp"
# Orbax rewrites or creates these at commit, after the manifest has been written.
_UNHASHED = frozenset({"_CHECKPOINT_METADATA", "commit_success.txt", MANIFEST, MANIFEST + ".tmp"})


ITERATOR_ITEM = "data_iterator"


class CheckpointError(RuntimeError):
  """A checkpoint could not be saved or restored; the message names the directory, the step or
  the file, and what to do."""


def _iterator_process() -> int:
  """Whose iterator files this process writes and reads (tests stand in for other processes)."""
  return jax.process_index()


class IteratorFilesHandler(ocp.CheckpointHandler):
  """Orbax handler for each process's serialized input-pipeline iterator: process i writes its
  files as `process_<i>.<suffix>` into the item's directory of the step being saved, so they
  commit atomically with the step and process 0's manifest covers them.

  The bytes are taken from the iterator by the caller, on the training thread at the step being
  saved; this handler only writes them (orbax runs it before the save returns)."""

  def save(self, directory, args: IteratorFilesSave) -> None:
    prefix = f"process_{_iterator_process()}."
    for suffix, blob in (args.files or {}).items():
      (directory / (prefix + suffix)).write_bytes(blob)

  def restore(self, directory, args: IteratorFilesRestore | None = None) -> dict | None:
    del args
    prefix = f"process_{_iterator_process()}."
    names = [p.name for p in directory.iterdir() if p.name.startswith(prefix)]
    if not names:
      return None
    return {name[len(prefix) :]: (directory / name).read_bytes() for name in sorted(names)}

  def metadata(self, directory):
    return None

  def finalize(self, directory) -> None:
    pass

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(IteratorFilesHandler, for_save=True)
@dataclasses.dataclass
class IteratorFilesSave(ocp.args.CheckpointArgs):
  files: dict | None = None  # {suffix: bytes}; None or {}: nothing stored for this process


@ocp.args.register_with_handler(IteratorFilesHandler, for_restore=True)
@dataclasses.dataclass
class IteratorFilesRestore(ocp.args.CheckpointArgs):
  pass


def _free_bytes(directory: str) -> int:
  """Free bytes on the disk holding `directory` (tests replace this to simulate a full disk)."""
  return shutil.disk_usage(directory).free


def _files(step_dir: str) -> list[str]:
  """Paths (relative to `step_dir`) of the files a manifest covers."""
  rels = (
    os.path.relpath(os.path.join(root, name), step_dir)
    for root, _, names in os.walk(step_dir)
    for name in names
  )
  return sorted(rel for rel in rels if rel not in _UNHASHED)


def _sha256s(step_dir: str, rels: list[str]) -> list[str]:
  def digest(rel):
    with open(os.path.join(step_dir, rel), "rb") as f:
      return hashlib.file_digest(f, "sha256").hexdigest()

  # hashlib releases the GIL on large reads, so a few threads hash big checkpoints faster.
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    return list(pool.map(digest, rels))


def write_manifest(step_dir: str) -> None:
  """Records the size and sha256 of every file of the step in `step_dir/xt5_manifest.json`."""
  rels = _files(step_dir)
  files = {
    rel: {"size": os.path.getsize(os.path.join(step_dir, rel)), "sha256": digest}
    for rel, digest in zip(rels, _sha256s(step_dir, rels))
  }
  tmp = os.path.join(step_dir, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump({"version": 1, "files": files}, f, indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(step_dir, MANIFEST))


def verify_manifest(step_dir: str) -> str | None:
  """What is wrong with the step's files compared with its manifest (one line per file, at most
  three), or None when every file is intact."""
  try:
    with open(os.path.join(step_dir, MANIFEST)) as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError) as e:
    return f"its manifest {MANIFEST} is unreadable ({e})"
  problems, to_hash = [], []
  for rel, meta in sorted(files.items()):
    path = os.path.join(step_dir, rel)
    size = os.path.getsize(path) if os.path.isfile(path) else None
    if size is None:
      problems.append(f"file {rel} is missing")
    elif size != meta["size"]:
      problems.append(
        f"file {rel} is {size} bytes, the manifest says {meta['size']} (truncated or overwritten)"
      )
    else:
      to_hash.append(rel)
  for rel, digest in zip(to_hash, _sha256s(step_dir, to_hash)):
    if digest != files[rel]["sha256"]:
      problems.append(f"file {rel} has changed bytes (sha256 differs from the manifest)")
  return "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "") if problems else None


def _restore_args(target: Any) -> Any:
  """Orbax's restore arguments putting each array of `target` (arrays or ShapeDtypeStructs)
  onto its sharding (this process's first device where it has none), shape and dtype."""

  def args(t):
    sharding = getattr(t, "sharding", None)
    if sharding is None:
      sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=t.shape, dtype=t.dtype)

  return jax.tree.map(args, target)


_TENSORSTORE_THREAD = "ts_pool_worker"  # the name tensorstore gives its pool's threads


def _thread_ids(name: str) -> list[int]:
  """Native ids of this process's threads called `name` (Linux /proc; elsewhere, none)."""
  try:
    tids = os.listdir("/proc/self/task")
  except OSError:
    return []
  found = []
  for tid in tids:
    try:
      with open(f"/proc/self/task/{tid}/comm") as f:
        if f.read().strip() == name:
          found.append(int(tid))
    except OSError:  # the thread ended meanwhile
      pass
  return found


def _renice_threads(name: str, nice: int) -> None:
  """Raises the niceness of this process's threads called `name` to `nice` (Linux; elsewhere,
  or where /proc is unreadable, nothing). Never lowers one: that needs privileges."""
  for tid in _thread_ids(name):
    try:
      if os.getpriority(os.PRIO_PROCESS, tid) < nice:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:  # the thread ended meanwhile
      pass


def _disk_full(exc: BaseException | None) -> bool:
  """Whether ENOSPC/EDQUOT caused the exception (tensorstore reports it only as text)."""
  while exc is not None:
    if (
      getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
      or "No space left on device" in str(exc)
      or "Disk quota exceeded" in str(exc)
    ):
      return True
    exc = exc.__cause__ or exc.__context__
  return False


def _agree(problem: str | None) -> str | None:
  """Makes every process take the same branch: a problem found on any process is one everywhere.
  A no-op with one process; otherwise a tiny all-gather, so every process must call it."""
  if jax.process_count() == 1:
    return problem
  flags = np.asarray(multihost_utils.process_allgather(np.int32(problem is not None)))
  if problem is None and flags.any():
    problem = f"process {int(np.argmax(flags))} found a problem (details in its log)"
  return problem


def committed_steps(directory: str) -> list[int]:
  """Committed steps in `directory`, ascending (orbax renames a step directory only when it
  is complete); [] when there is none. Needs no manager: cheap to ask of any path."""
  if not os.path.isdir(directory):
    return []
  return sorted(
    int(name)
    for name in os.listdir(directory)
    if name.isdigit() and os.path.isdir(os.path.join(directory, name))
  )


class Checkpointer:
  """Saves and restores (train state, data state) under `directory`, keeping the newest `keep`.

  `async_save=False` makes every save() wait until its step is committed."""

  def __init__(
    self,
    directory: str,
    *,
    keep: int = 3,
    async_save: bool = True,
    compress: bool = False,
    writer_nice: int | None = 19,
  ):
    """`compress` stores arrays zstd-compressed (smaller files, about twice the writer's
    CPU); `writer_nice` is the niceness given to tensorstore's writer threads on Linux, None
    leaves them as they are. Restoring reads either kind of file."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
      raise ValueError(f"keep must be an int >= 1 (checkpoints to keep), got {keep!r}")
    self.directory = os.path.abspath(os.fspath(directory))
    self._keep, self._async, self._writer_nice = keep, async_save, writer_nice
    self._saving: int | None = None  # the step of the latest save started
    self._skipped: list[int] = []  # newer steps the last restore() found unusable
    options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(keep),
      # Readers (eval jobs) must neither create the directory nor clean it while a trainer
      # writes there: save() does both.
      create=False,
      cleanup_tmp_directories=False,
      # Always orbax's async checkpointer: the manifest hook needs it; async_save=False waits.
      enable_async_checkpointing=True,
      async_options=ocp.AsyncOptions(post_finalization_callback=self._write_manifest),
    )
    handlers = {
      "state": ocp.PyTreeCheckpointHandler(use_compression=compress),
      "data_state": ocp.JsonCheckpointHandler(),
      ITERATOR_ITEM: IteratorFilesHandler(),
    }
    self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def steps(self) -> list[int]:
    """Committed steps, ascending."""
    return committed_steps(self.directory)

  def latest_step(self) -> int | None:
    """The newest committed step (restore() checks that it is intact), or None."""
    steps = self.steps()
    return steps[-1] if steps else None

  def save(
    self,
    step: int,
    state: Any,
    data_state: dict,
    *,
    data_iterator: dict[str, bytes] | None = None,
    wait: bool = False,
  ) -> None:
    """Saves `state` (a pytree of jax arrays) and `data_state` (a JSON dict) as `step`, with
    this process's `data_iterator` files ({suffix: bytes}) when given.

    Returns once the arrays are copied to host memory; the write goes on in the background and
    its failure is raised by wait(), close() or the next save()."""
    step = int(step)
    if step < 0:
      raise ValueError(f"checkpoint step must be >= 0, got {step}")
    try:
      ok = isinstance(data_state, dict) and json.loads(json.dumps(data_state)) == data_state
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise TypeError(
        "data_state must be a dict that survives a JSON round trip (str keys; "
        "int, float, str, bool, None, lists, dicts); convert numpy scalars "
        f"with int()/float() and tuples to lists. Got {data_state!r:.200}"
      )
    self.wait()  # a failed background save surfaces before anything new starts
    if self._writer_nice is not None:
      # now, while no save runs: during one, each /proc read waits for the GIL behind
      # orbax's Python threads (see the module docstring)
      _renice_threads(_TENSORSTORE_THREAD, self._writer_nice)
    problem = None
    if jax.process_index() == 0:
      try:
        problem = self._prepare(step)
      except OSError as e:  # never leave the other processes waiting in _agree
        problem = f"cannot prepare {self.directory} for checkpoint step {step}: {e}"
    self._skipped = []
    problem = _agree(problem)  # also a barrier: process 0 has moved and cleaned by now
    if problem:
      raise CheckpointError(problem)
    self._mngr.reload()  # orbax's list of steps must match the disk for keep-K
    self._saving = step
    args = ocp.args.Composite(
      state=ocp.args.PyTreeSave(state),
      data_state=ocp.args.JsonSave(data_state),
      **{ITERATOR_ITEM: IteratorFilesSave(dict(data_iterator or {}))},
    )
    try:
      self._mngr.save(step, args=args, force=True)  # force: orbax may not skip it silently
    except Exception as e:
      raise self._failed(step, e) from e
    if wait or not self._async:
      self.wait()

  def restore(
    self, target: Any, step: int | None = None, *, data_iterator: bool = False
  ) -> tuple[int, Any, dict] | tuple[int, Any, dict, dict[str, bytes] | None]:
    """(step, state, data_state) of `step`, or of the newest usable step when None; with
    `data_iterator`, also this process's iterator files ({suffix: bytes}, or None when the step
    has none for this process).

    `target` is a pytree like the state of arrays or of `jax.ShapeDtypeStruct`s with
    shardings: the state is restored onto those shardings, whatever mesh saved it."""
    items = {
      "state": ocp.args.PyTreeRestore(item=target, restore_args=_restore_args(target)),
      "data_state": ocp.args.JsonRestore(),
    }

    def load(s):
      args = dict(items)
      # steps saved before iterators were stored have no such item
      has_iterator = os.path.isdir(os.path.join(self.directory, str(s), ITERATOR_ITEM))
      if data_iterator and has_iterator:
        args[ITERATOR_ITEM] = IteratorFilesRestore()
      restored = self._mngr.restore(s, args=ocp.args.Composite(**args))
      result = s, restored["state"], dict(restored["data_state"])
      if data_iterator:
        result += (restored[ITERATOR_ITEM] if has_iterator else None,)
      return result

    return self._restore_usable(step, load)

  def restore_params(self, target_params: Any, step: int | None = None) -> tuple[int, Any]:
    """(step, params): only the state's "params" subtree, onto `target_params`' shardings;
    what evaluation, inference and finetuning need (no optimizer state, so no optimizer)."""
    args = ocp.args.PyTreeRestore(
      item={"params": target_params},
      restore_args={"params": _restore_args(target_params)},
      partial_restore=True,
    )

    def load(s):
      with ocp.PyTreeCheckpointer() as reader:
        restored = reader.restore(os.path.join(self.directory, str(s), "state"), args=args)
      return s, restored["params"]

    return self._restore_usable(step, load)

  def _restore_usable(self, step: int | None, load):
    """load(step) of `step`, or of the newest step that verifies and loads."""
    self.wait()
    steps = self.steps()
    if not steps:
      raise CheckpointError(f"no checkpoint exists in {self.directory}; check the path")
    if step is not None and int(step) not in steps:
      raise CheckpointError(
        f"checkpoint step {step} does not exist in {self.directory}; steps there: {steps}"
      )
    skipped = []
    for s in [int(step)] if step is not None else steps[::-1]:
      problem = _agree(self._verify(s) if jax.process_index() == 0 else None)
      if problem is None:
        try:
          result = load(s)
        except Exception as e:  # tensorstore appends a long spec: keep the cause
          cause = str(e).split(" [tensorstore_spec=")[0][:600]
          problem = f"orbax could not load it: {type(e).__name__}: {cause}"
        problem = _agree(problem)
      if problem is None:
        self._skipped = [bad for bad, _ in skipped]
        return result
      if step is not None:
        raise CheckpointError(
          f"checkpoint step {s} in {self.directory} is unusable: {problem}. Steps "
          f"there: {steps}; restore another step, or step=None for the newest usable."
        )
      logger.warning(
        "checkpoint step %d in %s is unusable, trying the previous one: %s",
        s,
        self.directory,
        problem,
      )
      skipped.append((s, problem))
    raise CheckpointError(
      f"no usable checkpoint in {self.directory}: "
      + "; ".join(f"step {s}: {p}" for s, p in skipped)
      + ". Restore a copy, or move the directory aside to start afresh."
    )

  def wait(self) -> None:
    """Blocks until the background save is committed; raises CheckpointError if it failed."""
    try:
      self._mngr.wait_until_finished()
    except Exception as e:
      raise self._failed(self._saving, e) from e

  def close(self) -> None:
    """wait(), then releases orbax's threads."""
    try:
      self.wait()
    finally:
      self._mngr.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    try:
      self.close()
    except CheckpointError:
      if exc_type is None:
        raise
      logger.exception("while handling another error, closing the checkpointer failed")

  def _prepare(self, step: int) -> str | None:
    """Process 0, before a save: creates the directory, removes what killed or failed saves
    left, moves unusable steps aside; what forbids saving `step` (or None)."""
    os.makedirs(self.directory, exist_ok=True)
    self._remove_tmp()  # this process waited for its saves: none is in flight
    for bad in self._skipped:
      src = os.path.join(self.directory, str(bad))
      if os.path.isdir(src):
        dst = f"{src}.corrupt-{int(time.time())}"
        os.rename(src, dst)
        logger.warning("moved unusable checkpoint step %d aside to %s", bad, dst)
    steps = self.steps()
    if step in steps:
      return (
        f"checkpoint step {step} already exists in {self.directory}; save each step "
        f"once (steps there: {steps})"
      )
    if steps and step < steps[-1]:
      return (
        f"cannot save step {step} into {self.directory}: it holds the newer step "
        f"{steps[-1]}, and keep={self._keep} would delete the new checkpoint first. "
        "Resume from the newest step or save into a new directory."
      )
    last = os.path.join(self.directory, str(steps[-1])) if steps else None
    needed = sum(os.path.getsize(os.path.join(last, r)) for r in _files(last)) if last else 0
    free = _free_bytes(self.directory)
    if free < needed:  # orbax deletes old steps only after the new one is committed
      return (
        f"disk full: {free} bytes free in {self.directory}, the last checkpoint took "
        f"{needed}; not saving step {step}. The newest intact checkpoint, step "
        f"{steps[-1]}, is untouched. Free space on that disk (or lower keep=) and "
        "resume from it."
      )
    return None

  def _failed(self, step: int | None, exc: BaseException) -> CheckpointError:
    if jax.process_index() == 0:
      self._remove_tmp()
    steps = self.steps()
    newest = f"step {steps[-1]}" if steps else "none"
    what = f"could not save checkpoint step {step} in {self.directory}"
    if _disk_full(exc):
      return CheckpointError(
        f"disk full: {what} ({exc}). The newest intact checkpoint, {newest}, is untouched "
        f"and the partial step {step} was removed. Free space on that disk (or lower "
        "keep=) and resume from it."
      )
    return CheckpointError(
      f"{what}: {type(exc).__name__}: {exc}. The partial step was "
      f"removed; the newest intact checkpoint is {newest}."
    )

  def _remove_tmp(self) -> None:
    if os.path.isdir(self.directory):
      for name in os.listdir(self.directory):
        if _TMP_SUFFIX in name:
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def _write_manifest(self) -> None:
    # Orbax's background thread, process 0 only, after every process wrote its shards and
    # before the step directory is renamed (if orbax ever calls it later, the step is final).
    tmp = os.path.join(self.directory, f"{self._saving}{_TMP_SUFFIX}")
    step_dir = tmp if os.path.isdir(tmp) else os.path.join(self.directory, str(self._saving))
    if not os.path.isdir(step_dir):
      raise CheckpointError(
        f"checkpoint step {self._saving}: no directory to write "
        f"{MANIFEST} into under {self.directory}"
      )
    write_manifest(step_dir)

  def _verify(self, step: int) -> str | None:
    step_dir = os.path.join(self.directory, str(step))
    if not os.path.exists(os.path.join(step_dir, MANIFEST)):
      logger.warning(
        "checkpoint step %d in %s has no %s (saved by another tool, or before "
        "manifests); trying it unverified",
        step,
        self.directory,
        MANIFEST,
      )
      return None
    return verify_manifest(step_dir)
