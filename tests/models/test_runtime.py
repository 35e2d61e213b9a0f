"""models/runtime.py: the once-only restart under glibc's hugetlb malloc tunable."""

import os
import subprocess
import sys

import pytest

from models import runtime

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Prints what the (possibly restarted) process sees, and the page faults a 256 MiB malloc costs.
PROBE = """
import ctypes, resource, sys
from models import runtime
print("start", flush=True)
runtime.configure(reexec=True)
import os
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
n = 256 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(libc.malloc(n), 1, n)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print("argv", sys.argv[1:], "tunables", os.environ.get("GLIBC_TUNABLES"), "faults", faults)
"""


def _probe(env_extra):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XT5_NO_REEXEC")}
  env.update(env_extra)
  out = subprocess.run([sys.executable, "-c", PROBE, "--an-arg", "x y"], cwd=REPO, env=env,
                       capture_output=True, text=True, check=True).stdout.splitlines()
  argv_line = out[-1]
  faults = int(argv_line.rsplit(" ", 1)[1])
  return out, argv_line, faults


def _thp_available() -> bool:
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return "[never]" not in f.read()
  except OSError:
    return False


@pytest.mark.skipif(not runtime.needs_malloc_reexec({}), reason="needs Linux with glibc")
def test_reexec_once_keeps_argv_and_cuts_page_faults():
  out, line, faults = _probe({})
  # restarted exactly once ("start" printed by both runs), same arguments, tunable added
  assert out.count("start") == 2, out
  assert "argv ['--an-arg', 'x y']" in line and runtime.MALLOC_TUNABLE in line
  kept_out, kept_line, _ = _probe({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"})
  assert "glibc.malloc.trim_threshold=1:" + runtime.MALLOC_TUNABLE in kept_line  # appended
  plain_out, plain_line, plain_faults = _probe({"XT5_NO_REEXEC": "1"})
  assert plain_out.count("start") == 1 and "tunables None" in plain_line
  # 256 MiB in 4 KiB pages is 65536 faults; in 2 MiB pages, 128 (plus the interpreter's own).
  assert plain_faults > 60000
  if _thp_available():
    assert faults < plain_faults / 10, (faults, plain_faults)


def test_configure_without_reexec_leaves_the_process_alone():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  runtime.configure(env)
  assert "GLIBC_TUNABLES" not in env
  assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8",
                                      *runtime.CPU_XLA_FLAGS]
  assert not runtime.needs_malloc_reexec({"GLIBC_TUNABLES": runtime.MALLOC_TUNABLE})
  assert not runtime.needs_malloc_reexec({"XT5_NO_REEXEC": "1"})
