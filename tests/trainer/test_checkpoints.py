"""Saving and restoring the train state without ever losing work (trainer/checkpoints.py)."""

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from orbax.checkpoint._src.path import async_path

from trainer import checkpoints
from trainer.checkpoints import MANIFEST, Checkpointer, CheckpointError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TMP = ".orbax-checkpoint-tmp"


def small_state(step, scale=1.0):
  return {"step": jnp.int32(step), "w": jnp.arange(32, dtype=jnp.float32) * scale}


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def assert_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.ravel(x).view(np.uint8), np.ravel(y).view(np.uint8))


def data_file(step_dir):
  """The largest file of a step's state: array bytes (small arrays are inlined elsewhere)."""
  files = [
    os.path.join(root, n)
    for root, _, names in os.walk(os.path.join(step_dir, "state"))
    for n in names
  ]
  return max(files, key=os.path.getsize)


def big_state(step):
  # 256 KB of random floats: large enough that orbax stores the array bytes in a data file of
  # their own, where it loads flipped bytes without noticing.
  return {"step": jnp.int32(step), "w": jax.random.normal(jax.random.PRNGKey(step), (1 << 16,))}


def test_keeps_the_newest_k(tmp_path):
  with Checkpointer(str(tmp_path), keep=2) as ckpt:
    for step in range(1, 6):
      ckpt.save(step, small_state(step), {"batches_consumed": step})
  assert ckpt.steps() == [4, 5] and ckpt.latest_step() == 5
  assert sorted(os.listdir(tmp_path)) == ["4", "5"]  # no temporary directories left
  assert ckpt.directory == str(tmp_path) and os.path.isabs(ckpt.directory)


def test_round_trip_is_bit_identical(tmp_path):
  params = {
    "encoder": {
      "kernel": jax.random.normal(jax.random.PRNGKey(0), (8, 6)),
      "scale": jnp.full((6,), 0.5, jnp.bfloat16),
    },
    "bias": jnp.linspace(-1, 1, 5),
  }
  tx = optax.adafactor(1e-3)
  opt_state = tx.update(params, tx.init(params), params)[1]  # non-trivial moments
  state = {"step": jnp.int32(7), "params": params, "opt_state": opt_state}
  data_state = {"batches_consumed": 40, "seed": 0, "mix": {"de": 0.25, "names": ["a", "b"]}}
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(7, state, data_state)
  with open(tmp_path / "7" / MANIFEST) as f:
    files = json.load(f)["files"]
  assert "data_state/metadata" in files and any(r.startswith("state/") for r in files)
  assert all(len(m["sha256"]) == 64 and m["size"] > 0 for m in files.values())

  step, restored, restored_data = Checkpointer(str(tmp_path)).restore(abstract(state))
  assert step == 7 and restored_data == data_state
  assert_identical(restored, state)
  assert int(restored["step"]) == 7 and restored["step"].dtype == jnp.int32


def test_restores_onto_other_device_counts(tmp_path):
  mesh8 = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  values = {
    "w": jnp.arange(64.0).reshape(16, 4),
    "v": jnp.arange(24, dtype=jnp.int32).reshape(8, 3),
  }
  state = jax.device_put(values, NamedSharding(mesh8, P("data")))
  ckpt = Checkpointer(str(tmp_path / "from8"), async_save=False)
  ckpt.save(1, state, {})

  mesh24 = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  targets = [
    NamedSharding(jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,)), P()),
    jax.sharding.SingleDeviceSharding(jax.devices()[3]),
    NamedSharding(mesh24, P("model", None)),
  ]
  for sharding in targets:
    target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), values
    )
    _, restored, _ = ckpt.restore(target)
    assert_identical(restored, values)
    assert all(x.sharding == sharding for x in jax.tree.leaves(restored))

  # and back: written on one device, restored across eight
  single = Checkpointer(str(tmp_path / "from1"))
  single.save(1, jax.device_put(values, jax.devices()[0]), {}, wait=True)
  _, restored, _ = single.restore(abstract(state))
  assert_identical(restored, values)
  assert restored["w"].sharding == NamedSharding(mesh8, P("data"))


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_corrupted_newest_falls_back_to_the_previous(tmp_path, caplog, damage):
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, big_state(1), {"batches_consumed": 1})
  ckpt.save(2, big_state(2), {"batches_consumed": 2}, wait=True)
  path = data_file(tmp_path / "2")
  size = os.path.getsize(path)
  assert size > 1 << 17
  with open(path, "r+b") as f:
    if damage == "truncate":
      f.truncate(size // 2)
    else:  # same size, different bytes in the middle: only the manifest can tell
      f.seek(size // 2)
      chunk = f.read(4)
      f.seek(size // 2)
      f.write(bytes(b ^ 0xFF for b in chunk))
  rel = os.path.relpath(path, tmp_path / "2")

  target = abstract(big_state(0))
  with caplog.at_level(logging.WARNING, logger="trainer.checkpoints"):
    step, state, data_state = ckpt.restore(target)
  assert step == 1 and data_state == {"batches_consumed": 1}
  assert_identical(state, big_state(1))
  warning = " ".join(r.getMessage() for r in caplog.records)
  assert "step 2" in warning and rel in warning

  with pytest.raises(CheckpointError, match=f"step 2 .*unusable.*{rel}"):
    ckpt.restore(target, step=2)

  # Training goes on from step 1; saving step 2 again moves the damaged one aside, not away.
  ckpt.save(2, small_state(2), {"batches_consumed": 2}, wait=True)
  assert ckpt.steps() == [1, 2]
  assert [n for n in os.listdir(tmp_path) if n.startswith("2.corrupt-")]
  step, state, _ = ckpt.restore(abstract(small_state(0)))
  assert step == 2
  assert_identical(state, small_state(2))


def test_no_usable_checkpoint_lists_each_problem(tmp_path):
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  for step in (1, 2):
    ckpt.save(step, small_state(step), {})
    os.truncate(data_file(tmp_path / str(step)), 3)
  with pytest.raises(CheckpointError, match="no usable checkpoint.*step 2: .*step 1: .*truncat"):
    ckpt.restore(abstract(small_state(0)))


def test_checkpoint_without_manifest_is_still_tried(tmp_path, caplog):
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(3, small_state(3), {"seed": 5}, wait=True)
  os.remove(tmp_path / "3" / MANIFEST)  # as if killed between commit and manifest
  with caplog.at_level(logging.WARNING, logger="trainer.checkpoints"):
    step, state, data_state = ckpt.restore(abstract(small_state(0)))
  assert step == 3 and data_state == {"seed": 5}
  assert_identical(state, small_state(3))
  messages = [r.getMessage() for r in caplog.records]
  assert any(MANIFEST in m and "step 3" in m and "unverified" in m for m in messages)


CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    import jax.numpy as jnp
    from trainer.checkpoints import Checkpointer

    directory, kill_at = sys.argv[1], sys.argv[2]
    ckpt = Checkpointer(directory)
    w = jnp.arange(1 << 20, dtype=jnp.float32)  # 4 MB
    ckpt.save(1, {{"step": jnp.int32(1), "w": w}}, {{"n": 1}}, wait=True)
    tmp = os.path.join(directory, "2.orbax-checkpoint-tmp")

    def hook(event, args):
        # "data": orbax opens state/_METADATA once the array bytes are on disk;
        # "commit": the rename that would commit step 2, everything else written.
        path = str(args[0]) if args else ""
        if ((kill_at == "data" and event == "open" and path.startswith(tmp)
             and path.endswith("/_METADATA"))
                or (kill_at == "commit" and event == "os.rename" and path == tmp)):
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    ckpt.save(2, {{"step": jnp.int32(2), "w": w + 1}}, {{"n": 2}}, wait=True)
    print("not killed")
""")


@pytest.mark.parametrize("kill_at", ["data", "commit"])
def test_kill_9_during_save_loses_only_that_save(tmp_path, kill_at):
  script = tmp_path / "child.py"
  script.write_text(CHILD.format(repo=REPO))
  directory = tmp_path / "run"
  proc = subprocess.run(
    [sys.executable, str(script), str(directory), kill_at],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == -9, proc.stdout + proc.stderr[-3000:]
  leftover = directory / ("2" + TMP)
  landed = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(leftover) for n in ns)
  assert landed > 1 << 20  # the array bytes of step 2 had reached the disk

  ckpt = Checkpointer(str(directory))
  assert ckpt.steps() == [1] and ckpt.latest_step() == 1
  target = {
    "step": jax.ShapeDtypeStruct((), jnp.int32),
    "w": jax.ShapeDtypeStruct((1 << 20,), jnp.float32),
  }
  step, state, data_state = ckpt.restore(target)
  assert step == 1 and data_state == {"n": 1}
  np.testing.assert_array_equal(state["w"], np.arange(1 << 20, dtype=np.float32))

  ckpt.save(2, {"step": jnp.int32(2), "w": state["w"] * 2}, {"n": 2}, wait=True)
  assert ckpt.steps() == [1, 2] and sorted(os.listdir(directory)) == ["1", "2"]
  step, state, _ = ckpt.restore(target)
  assert step == 2 and float(state["w"][3]) == 6.0


def test_only_saving_removes_leftovers_of_killed_saves(tmp_path):
  leftover = tmp_path / ("7" + TMP) / "state"
  leftover.mkdir(parents=True)
  (leftover / "part").write_bytes(b"x" * 100)
  ckpt = Checkpointer(str(tmp_path))
  assert ckpt.steps() == [] and ckpt.latest_step() is None
  with pytest.raises(CheckpointError, match="no checkpoint exists"):
    ckpt.restore(abstract(small_state(0)))
  assert leftover.exists()  # a reader (an eval job) must not touch a trainer's work in flight
  ckpt.save(8, small_state(8), {}, wait=True)
  assert sorted(os.listdir(tmp_path)) == ["8"]


def test_full_disk_is_refused_before_writing(tmp_path, monkeypatch):
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, small_state(1), {"n": 1}, wait=True)
  monkeypatch.setattr(checkpoints, "_free_bytes", lambda directory: 100)
  with pytest.raises(CheckpointError, match=f"disk full.*{tmp_path}.*step 1"):
    ckpt.save(2, small_state(2), {"n": 2})
  assert sorted(os.listdir(tmp_path)) == ["1"]
  step, state, _ = ckpt.restore(abstract(small_state(0)))
  assert step == 1
  assert_identical(state, small_state(1))


@pytest.mark.parametrize("raised_by", ["wait", "next_save"])
def test_disk_full_during_background_write(tmp_path, monkeypatch, raised_by):
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, small_state(1), {"n": 1}, wait=True)
  write_text = async_path.write_text

  async def full_disk(path, text):
    if f"2{TMP}" in str(path) and str(path).endswith("_METADATA"):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return await write_text(path, text)

  monkeypatch.setattr(async_path, "write_text", full_disk)
  ckpt.save(2, small_state(2), {"n": 2})  # returns; the write fails in the background
  with pytest.raises(CheckpointError, match=f"disk full.*step 2 in {tmp_path}.*step 1"):
    ckpt.wait() if raised_by == "wait" else ckpt.save(3, small_state(3), {"n": 3})
  assert sorted(os.listdir(tmp_path)) == ["1"]  # the partial step 2 is gone
  step, state, _ = ckpt.restore(abstract(small_state(0)))
  assert step == 1
  assert_identical(state, small_state(1))

  monkeypatch.setattr(async_path, "write_text", write_text)  # space freed: saving works again
  ckpt.save(2, small_state(2), {"n": 2}, wait=True)
  assert ckpt.steps() == [1, 2]
  ckpt.close()


def test_empty_or_unknown_directory(tmp_path):
  missing = tmp_path / "nope"
  for directory in (missing, tmp_path):
    ckpt = Checkpointer(str(directory))
    assert ckpt.steps() == [] and ckpt.latest_step() is None
    with pytest.raises(CheckpointError, match=f"no checkpoint exists in {directory}"):
      ckpt.restore(abstract(small_state(0)))
  assert not missing.exists()  # readers create nothing


def test_bad_requests_are_refused_with_the_fix(tmp_path):
  with pytest.raises(ValueError, match="keep must be an int >= 1"):
    Checkpointer(str(tmp_path), keep=0)
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  with pytest.raises(TypeError, match="JSON round trip.*int\\(\\)"):
    ckpt.save(1, small_state(1), {"batches_consumed": np.int64(3)})
  with pytest.raises(TypeError, match="JSON round trip"):
    ckpt.save(1, small_state(1), {"shape": (1, 2)})  # would come back as a list
  ckpt.save(5, small_state(5), {})
  with pytest.raises(CheckpointError, match="step 5 already exists"):
    ckpt.save(5, small_state(5), {})
  with pytest.raises(CheckpointError, match="newer step 5"):
    ckpt.save(4, small_state(4), {})
  with pytest.raises(CheckpointError, match=r"step 9 does not exist.*\[5\]"):
    ckpt.restore(abstract(small_state(0)), step=9)
  assert ckpt.steps() == [5]


def test_arrays_are_stored_uncompressed_unless_asked(tmp_path):
  state = {"step": jnp.int32(1), "w": jnp.zeros((1 << 18,), jnp.float32)}  # 1 MB of zeros
  sizes = {}
  for compress in (False, True):
    directory = tmp_path / f"compress_{compress}"
    with Checkpointer(str(directory), compress=compress) as ckpt:
      ckpt.save(1, state, {})
    sizes[compress] = os.path.getsize(data_file(directory / "1"))
    _, restored, _ = Checkpointer(str(directory)).restore(abstract(state))
    assert_identical(restored, state)
  assert sizes[False] >= 1 << 20 > 100 * sizes[True]  # zstd squeezes zeros to almost nothing


def thread_nices(name):
  """{native thread id: niceness} of this process's threads called `name`."""
  nices = {}
  for tid in checkpoints._thread_ids(name):
    try:
      nices[tid] = os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:  # ended meanwhile
      pass
  return nices


def test_writer_threads_are_lowered_before_the_write_starts(tmp_path, monkeypatch):
  # during a write, orbax's Python threads hold the GIL between the scan's /proc reads
  calls = []
  monkeypatch.setattr(checkpoints, "_renice_threads", lambda name, nice: calls.append("renice"))
  with Checkpointer(str(tmp_path)) as ckpt:
    orbax_save = ckpt._mngr.save

    def write(*args, **kwargs):
      calls.append("write")
      return orbax_save(*args, **kwargs)

    monkeypatch.setattr(ckpt._mngr, "save", write)
    ckpt.save(1, big_state(1), {})
    ckpt.save(2, big_state(2), {})
  assert calls == ["renice", "write"] * 2


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread niceness is Linux's")
def test_save_lowers_the_tensorstore_writer_threads_to_nice_19(tmp_path):
  # a stand-in writer thread, present before any save, with the name tensorstore gives its pool
  named, release = threading.Event(), threading.Event()

  def stand_in():
    with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
      f.write(checkpoints._TENSORSTORE_THREAD)
    named.set()
    release.wait()

  thread = threading.Thread(target=stand_in, daemon=True)
  thread.start()
  named.wait()
  caller = threading.get_native_id()
  caller_nice = os.getpriority(os.PRIO_PROCESS, caller)
  try:
    with Checkpointer(str(tmp_path / "left_alone"), writer_nice=None) as ckpt:
      ckpt.save(1, big_state(1), {})
    assert thread_nices(checkpoints._TENSORSTORE_THREAD)[thread.native_id] == caller_nice
    with Checkpointer(str(tmp_path / "lowered")) as ckpt:
      ckpt.save(1, big_state(1), {})
      ckpt.wait()
      pool = set(thread_nices(checkpoints._TENSORSTORE_THREAD)) - {thread.native_id}
      assert pool  # tensorstore still names its threads so (else nothing gets lowered)
      ckpt.save(2, big_state(2), {})
      nices = thread_nices(checkpoints._TENSORSTORE_THREAD)
    assert nices[thread.native_id] == 19
    assert all(nices[tid] == 19 for tid in pool if tid in nices)  # the real pool, too
    assert os.getpriority(os.PRIO_PROCESS, caller) == caller_nice  # the trainer's own thread
  finally:
    release.set()


ITERATOR = {"index": b"\x01index", "data-00000-of-00001": os.urandom(4096)}


def test_iterator_files_commit_with_the_step_per_process(tmp_path):
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, small_state(1), {"batches_consumed": 1})  # a step without iterator files
    ckpt.save(2, small_state(2), {"batches_consumed": 2}, data_iterator=ITERATOR, wait=True)
    files = sorted(os.listdir(tmp_path / "2" / checkpoints.ITERATOR_ITEM))
    files = [f for f in files if f.startswith("process_")]  # orbax adds commit_success.txt
    assert files == ["process_0.data-00000-of-00001", "process_0.index"]
    manifest = json.loads((tmp_path / "2" / MANIFEST).read_text())["files"]
    assert "data_iterator/process_0.index" in manifest
    step, _, data_state, iterator = ckpt.restore(abstract(small_state(0)), data_iterator=True)
    assert (step, data_state["batches_consumed"], iterator) == (2, 2, ITERATOR)
    assert ckpt.restore(abstract(small_state(0)), step=1, data_iterator=True)[3] is None
    assert len(ckpt.restore(abstract(small_state(0)))) == 3  # the old signature


def test_iterator_files_of_other_processes_are_not_read(tmp_path, monkeypatch):
  with Checkpointer(str(tmp_path)) as ckpt:
    monkeypatch.setattr(checkpoints, "_iterator_process", lambda: 1)
    ckpt.save(3, small_state(3), {}, data_iterator=ITERATOR, wait=True)
    names = os.listdir(tmp_path / "3" / checkpoints.ITERATOR_ITEM)
    assert {n.split(".")[0] for n in names if n.startswith("process_")} == {"process_1"}
    assert ckpt.restore(abstract(small_state(0)), data_iterator=True)[3] == ITERATOR
    monkeypatch.setattr(checkpoints, "_iterator_process", lambda: 0)
    assert ckpt.restore(abstract(small_state(0)), data_iterator=True)[3] is None


def test_damaged_iterator_file_falls_back_to_the_previous_step(tmp_path, caplog):
  with Checkpointer(str(tmp_path)) as ckpt:
    for step in (1, 2):
      ckpt.save(step, small_state(step), {"batches_consumed": step}, data_iterator=ITERATOR)
  victim = tmp_path / "2" / checkpoints.ITERATOR_ITEM / "process_0.data-00000-of-00001"
  blob = bytearray(victim.read_bytes())
  blob[100:164] = os.urandom(64)
  victim.write_bytes(bytes(blob))
  with Checkpointer(str(tmp_path)) as ckpt:
    step, _, data_state, iterator = ckpt.restore(abstract(small_state(0)), data_iterator=True)
  assert (step, data_state["batches_consumed"], iterator) == (1, 1, ITERATOR)
  assert "checkpoint step 2" in caplog.text and "process_0.data-00000-of-00001" in caplog.text
