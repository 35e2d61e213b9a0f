"""Process-wide settings for the test suite.

pytest imports this before any test module, so the environment below is in place before the first
`import jax` (XLA reads these flags when its backend starts).
"""

import atexit
import os
import shutil
import tempfile

import pytest

from models import runtime  # imports no jax

# The entry points' XLA flags and PJRT_NPROC (jax 0.10.2 on a 2-core CPU can deadlock in
# collectives across 8 devices without it), so tests run what users run; plus 8 fake
# CPU devices so mesh / sharding tests run without accelerators.
runtime.configure(extra_xla_flags=("--xla_force_host_platform_device_count=8",))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never download: Hugging Face models/tokenizers are built locally by the tests themselves.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# mT5's real vocabulary cannot be downloaded here; the mc4/WMT task tests run their definitions with
# a small SentencePiece model trained on synthetic text (tests/tasks/conftest.py) at this path. Set
# before any test module imports `tasks`, which registers the mc4 tasks with the path it reads.
os.environ.setdefault(
  "XT5_MT5_VOCAB",
  os.path.join(tempfile.gettempdir(), f"xt5-test-mt5-vocab-{os.getuid()}", "sentencepiece.model"),
)
# JAX's persistent compilation cache, fresh for each session and shared through the environment
# with xdist workers and the train.py subprocesses: many tests compile the same tiny programs
# (train step, eval, decoders), and every such compile after the first loads the executable XLA
# built the first time. Each program is still compiled in the session. The size limit turns on
# JAX's file lock, so concurrent processes never read a half-written entry. The process that
# made the directory removes it when it exits (with xdist, the controller, after its workers).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _jax_cache = tempfile.mkdtemp(prefix=f"xt5-test-jax-cache-{os.getuid()}-")
  atexit.register(shutil.rmtree, _jax_cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _jax_cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))


@pytest.fixture(scope="session")
def builtin_data():
  """The built-in corpora and vocabulary (a no-op after `make test`'s prepare step)."""
  from tasks import corpora  # noqa: PLC0415 (imports TensorFlow)
  from tasks.vocab import training  # noqa: PLC0415

  corpora.prepare(progress=False)
  training.prepare_builtin(progress=False)
