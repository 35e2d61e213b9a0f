"""Process settings for entry points (benchmarks, train.py): call `configure()` before JAX
runs its first computation (XLA reads these flags when its backend starts).

Measured on the 2-core CPU (python -m bench.train_step, T5.1.1-small step): oneDNN custom calls
and the plain scheduler take a bf16 step from 5.5 s to 4.8 s and an fp32 step from 8.3 s to 6.8 s.

`configure(reexec=True)`, which only a `__main__` may ask for, also restarts the process once
under glibc's `hugetlb` malloc tunable. XLA:CPU mallocs each step's temporaries afresh (2.4 GB
for the T5.1.1-small step), glibc serves them with a new mmap, and the kernel then faults them
in 4 KiB at a time: ~850k page faults and ~2.5 s of system time per step. With the tunable those
mappings get transparent huge pages (2 MiB): ~40-70k faults and ~1 s (tests/models/test_runtime.py
checks the effect on a plain malloc). glibc reads tunables only at start-up, hence the restart;
`XT5_NO_REEXEC=1` turns it off, and a notebook or pytest never restarts (export
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 before starting Jupyter for the same effect).
"""

from __future__ import annotations

import os
import platform
import sys

CPU_XLA_FLAGS = (
    "--xla_cpu_experimental_onednn_custom_call=true",
    # the concurrency-optimised scheduler runs big matmuls side by side on 2 cores, each slower.
    "--xla_cpu_enable_concurrency_optimized_scheduler=false",
)
MALLOC_TUNABLE = "glibc.malloc.hugetlb=1"  # madvise(MADV_HUGEPAGE) on malloc's mmaps


def configure(environ=os.environ, extra_xla_flags=(), reexec: bool = False) -> None:
  """Appends xt5's XLA CPU flags and `extra_xla_flags` (each unless its name is already set)
  and PJRT_NPROC (DESIGN §6); with `reexec`, first restarts under `MALLOC_TUNABLE` (above)."""
  if reexec and needs_malloc_reexec(environ):
    tunables = ":".join(filter(None, (environ.get("GLIBC_TUNABLES"), MALLOC_TUNABLE)))
    sys.stdout.flush()
    sys.stderr.flush()
    # sys.orig_argv keeps `-m module` and `-c code`, so the restart is the same command.
    os.execve(sys.executable, sys.orig_argv, {**environ, "GLIBC_TUNABLES": tunables})
  flags = environ.get("XLA_FLAGS", "")
  for flag in CPU_XLA_FLAGS + tuple(extra_xla_flags):
    if flag.split("=")[0] not in flags:
      flags = f"{flags} {flag}".strip()
  environ["XLA_FLAGS"] = flags
  # jax 0.10.2 on a 2-core CPU can deadlock in multi-device collectives without it.
  environ.setdefault("PJRT_NPROC", "16")
  # TensorFlow (the input pipeline) logs CUDA probing and oneDNN notices at import.
  environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def needs_malloc_reexec(environ=os.environ) -> bool:
  """Whether a restart would add `MALLOC_TUNABLE`: Linux with glibc, not yet set, not opted out."""
  return (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
          and MALLOC_TUNABLE.split("=")[0] not in environ.get("GLIBC_TUNABLES", "")
          and not environ.get("XT5_NO_REEXEC"))
