"""Process settings for entry points (benchmarks, train.py): call `configure()` before JAX
runs its first computation (XLA reads these flags when its backend starts). On CPU, oneDNN's
custom calls and the plain scheduler make the train step faster (README, Benchmarks).

`configure(reexec=True)`, which only a `__main__` may ask for, also restarts the process once under
glibc malloc tunables (`MALLOC_TUNABLES`). XLA:CPU mallocs each step's temporaries afresh; by
default glibc serves such a block with a new mmap and unmaps it on free, and the kernel faults it
back in 4 KiB at a time on every step. With the tunables, big blocks come from one brk heap that is
never trimmed, in 2 MiB pages, so a step takes no page faults; the price is a resident set that
never shrinks from its peak. tests/models/test_runtime.py checks the effect on a plain malloc. glibc
reads tunables only at start-up, hence the restart; `XT5_NO_REEXEC=1` turns it off, and a notebook
or pytest never restarts (export GLIBC_TUNABLES with `MALLOC_TUNABLES` joined by ':' before starting
Jupyter for the same effect); a tunable already in GLIBC_TUNABLES keeps its value.

The restart and PJRT_NPROC are for CPU computation only: `configure` applies them where
`runs_on_cpu` says JAX will compute on the CPU, decided from the environment and /dev before jax
is imported (see its rule). The XLA CPU flags are set everywhere (they touch only XLA:CPU).
"""

from __future__ import annotations

import glob
import os
import platform
import sys

CPU_XLA_FLAGS = (
  "--xla_cpu_experimental_onednn_custom_call=true",
  # the concurrency-optimised scheduler runs big matmuls side by side on 2 cores, each slower.
  "--xla_cpu_enable_concurrency_optimized_scheduler=false",
)
MALLOC_TUNABLES = (
  "glibc.malloc.arena_max=1",  # every thread on the main arena, whose heap grows with brk
  "glibc.malloc.mmap_max=0",  # big blocks from that heap, not from a fresh mmap each
  "glibc.malloc.trim_threshold=1099511627776",  # 1 TiB: freed memory stays for the next step
  "glibc.malloc.hugetlb=1",  # madvise(MADV_HUGEPAGE): the heap in 2 MiB pages
)


def configure(environ=os.environ, extra_xla_flags=(), reexec: bool = False) -> None:
  """Appends xt5's XLA CPU flags and `extra_xla_flags` (each unless its name is already set)
  and PJRT_NPROC (docs/design.md, Known traps); with `reexec`, first restarts under
  `MALLOC_TUNABLES` (above)."""
  if reexec and needs_malloc_reexec(environ):
    tunables = ":".join(filter(None, (environ.get("GLIBC_TUNABLES"), *_missing_tunables(environ))))
    sys.stdout.flush()
    sys.stderr.flush()
    # sys.orig_argv keeps `-m module` and `-c code`, so the restart is the same command.
    os.execve(sys.executable, sys.orig_argv, {**environ, "GLIBC_TUNABLES": tunables})
  flags = environ.get("XLA_FLAGS", "")
  for flag in CPU_XLA_FLAGS + tuple(extra_xla_flags):
    if flag.split("=")[0] not in flags:
      flags = f"{flags} {flag}".strip()
  environ["XLA_FLAGS"] = flags
  if runs_on_cpu(environ):
    # jax 0.10.2 on a 2-core CPU can deadlock in multi-device collectives without it.
    environ.setdefault("PJRT_NPROC", "16")
  # TensorFlow (the input pipeline) logs CUDA probing and oneDNN notices at import.
  environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def runs_on_cpu(environ=os.environ, dev: str = "/dev") -> bool:
  """Whether JAX will compute on the CPU, decided without importing jax. The rule:

  1. JAX_PLATFORMS set (non-empty): its first platform, JAX's default backend, is 'cpu'.
  2. Otherwise, no accelerator is visible: no NVIDIA GPU (`{dev}/nvidia0`, unless
     CUDA_VISIBLE_DEVICES is '' or '-1', which hide it), no CUDA_VISIBLE_DEVICES naming
     devices, no TPU device (`{dev}/accel*`, or a numbered group in `{dev}/vfio/`) and no
     TPU_* environment variable.
  """
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  cuda_visible = environ.get("CUDA_VISIBLE_DEVICES")
  gpus_hidden = cuda_visible is not None and cuda_visible.strip() in ("", "-1")
  if not gpus_hidden and (cuda_visible is not None or os.path.exists(f"{dev}/nvidia0")):
    return False
  vfio_groups = [p for p in glob.glob(f"{dev}/vfio/*") if os.path.basename(p) != "vfio"]
  if glob.glob(f"{dev}/accel*") or vfio_groups:
    return False
  return not any(name.startswith("TPU_") for name in environ)


def needs_malloc_reexec(environ=os.environ) -> bool:
  """Whether a restart would add `MALLOC_TUNABLES`: Linux with glibc, computing on the CPU
  (`runs_on_cpu`), one of them not yet set, not opted out."""
  return (
    sys.platform.startswith("linux")
    and runs_on_cpu(environ)
    and platform.libc_ver()[0] == "glibc"
    and bool(_missing_tunables(environ))
    and not environ.get("XT5_NO_REEXEC")
  )


def _missing_tunables(environ):
  """The entries of `MALLOC_TUNABLES` whose names GLIBC_TUNABLES does not set yet."""
  names = {t.split("=")[0] for t in environ.get("GLIBC_TUNABLES", "").split(":")}
  return [t for t in MALLOC_TUNABLES if t.split("=")[0] not in names]
