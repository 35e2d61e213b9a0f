"""models/runtime.py: the once-only restart under glibc malloc tunables, and where it applies."""

import os
import subprocess
import sys

import pytest

from models import runtime

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Prints what the (possibly restarted) process sees, and the page faults that touching a
# 256 MiB malloc costs the second time (after the first such block was freed).
PROBE = """
import ctypes, resource, sys
from models import runtime
print("start", flush=True)
runtime.configure(reexec=True)
import os
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 256 << 20
libc.free(ctypes.memset(libc.malloc(n), 1, n))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(libc.malloc(n), 1, n)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print("argv", sys.argv[1:], "tunables", os.environ.get("GLIBC_TUNABLES"), "faults", faults)
"""


def _probe(env_extra):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XT5_NO_REEXEC")}
  env.update(env_extra)
  out = subprocess.run(
    [sys.executable, "-c", PROBE, "--an-arg", "x y"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    check=True,
  ).stdout.splitlines()
  argv_line = out[-1]
  faults = int(argv_line.rsplit(" ", 1)[1])
  return out, argv_line, faults


@pytest.mark.skipif(not runtime.needs_malloc_reexec({}), reason="needs Linux with glibc")
def test_reexec_once_keeps_argv_and_reuses_freed_memory():
  out, line, faults = _probe({})
  # restarted exactly once ("start" printed by both runs), same arguments, tunables added
  assert out.count("start") == 2, out
  assert "argv ['--an-arg', 'x y']" in line
  assert f"tunables {':'.join(runtime.MALLOC_TUNABLES)} " in line
  # a tunable the user set keeps its value; the others are appended
  kept_out, kept_line, _ = _probe({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"})
  kept = [t for t in runtime.MALLOC_TUNABLES if "trim_threshold" not in t]
  assert f"tunables glibc.malloc.trim_threshold=1:{':'.join(kept)} " in kept_line
  plain_out, plain_line, plain_faults = _probe({"XT5_NO_REEXEC": "1"})
  assert plain_out.count("start") == 1 and "tunables None" in plain_line
  # by default the freed block went back to the kernel: 256 MiB in 4 KiB pages is 65536 faults;
  # under the tunables the second block reuses the first one's pages.
  assert plain_faults > 60000
  assert faults < 1000, faults


def test_configure_without_reexec_leaves_the_process_alone():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  runtime.configure(env)
  assert "GLIBC_TUNABLES" not in env
  assert env["XLA_FLAGS"].split() == [
    "--xla_force_host_platform_device_count=8",
    *runtime.CPU_XLA_FLAGS,
  ]
  assert not runtime.needs_malloc_reexec({"GLIBC_TUNABLES": ":".join(runtime.MALLOC_TUNABLES)})
  assert runtime.needs_malloc_reexec({"GLIBC_TUNABLES": runtime.MALLOC_TUNABLES[0]}) == (
    runtime.needs_malloc_reexec({})
  )
  assert not runtime.needs_malloc_reexec({"XT5_NO_REEXEC": "1"})


def _fake_dev(tmp_path, *names):
  dev = tmp_path / "dev"
  dev.mkdir(parents=True)
  for name in names:
    path = dev / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
  return str(dev)


def test_runs_on_cpu_follows_jax_platforms_then_visible_accelerators(tmp_path):
  bare = _fake_dev(tmp_path)
  assert runtime.runs_on_cpu({}, dev=bare)
  assert runtime.runs_on_cpu({"JAX_PLATFORMS": "cpu"}, dev=bare)
  assert not runtime.runs_on_cpu({"JAX_PLATFORMS": "cuda,cpu"}, dev=bare)
  assert not runtime.runs_on_cpu({"JAX_PLATFORMS": "tpu"}, dev=bare)
  assert not runtime.runs_on_cpu({"CUDA_VISIBLE_DEVICES": "0"}, dev=bare)
  assert not runtime.runs_on_cpu({"TPU_ACCELERATOR_TYPE": "v5litepod-8"}, dev=bare)
  # a plain VFIO container node is no TPU; a numbered group is
  assert runtime.runs_on_cpu({}, dev=_fake_dev(tmp_path / "a", "vfio/vfio"))
  assert not runtime.runs_on_cpu({}, dev=_fake_dev(tmp_path / "b", "vfio/vfio", "vfio/0"))
  assert not runtime.runs_on_cpu({}, dev=_fake_dev(tmp_path / "c", "accel0"))
  gpu = _fake_dev(tmp_path / "d", "nvidia0")
  assert not runtime.runs_on_cpu({}, dev=gpu)
  assert runtime.runs_on_cpu({"CUDA_VISIBLE_DEVICES": ""}, dev=gpu)
  assert runtime.runs_on_cpu({"CUDA_VISIBLE_DEVICES": "-1"}, dev=gpu)
  # JAX_PLATFORMS decides over what /dev shows
  assert runtime.runs_on_cpu({"JAX_PLATFORMS": "cpu"}, dev=gpu)


def test_accelerator_hosts_get_no_restart_and_no_pjrt_nproc(monkeypatch):
  monkeypatch.setattr(runtime, "runs_on_cpu", lambda environ=None, dev="/dev": False)
  env = {}
  runtime.configure(env, reexec=True)  # would exec (and never return) on a CPU host
  assert "PJRT_NPROC" not in env and "GLIBC_TUNABLES" not in env
  assert not runtime.needs_malloc_reexec({})
  assert env["XLA_FLAGS"].split() == list(runtime.CPU_XLA_FLAGS)
