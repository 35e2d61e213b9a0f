"""xt5's one entry point: train, evaluate and infer T5-family models, configured with gin.

  python train.py --gin_file=configs/models/mt5/small.gin --gin_file=configs/runs/pretrain.gin \
    --gin.MIXTURE_OR_TASK_NAME="'mono'" --gin.MODEL_DIR="'runs/mt5_small'" --gin.TRAIN_STEPS=1000
  python train.py --gin_file=configs/runs/eval.gin --gin.CHECKPOINT_PATH="'runs/mt5_small'" ...
  python train.py --gin_file=configs/runs/infer.gin --gin.INPUT_FILE="'in.txt'" ...

A run gin picks the job (`train_script.run.job = @train_script.train`) and binds the T5X macros
(MODEL_DIR, TRAIN_STEPS, BATCH_SIZE, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, ...). This file
is only the command line: gin parsing, one-line errors, and thin `train` / `evaluate` / `infer`
jobs that group the macros into `trainer/`'s settings. gin binds here and nowhere else; notebooks
and `interactive.py` call `trainer/` directly. Multi-host: pass --coordinator_address/
--num_processes/--process_id, or --distributed to read them from the environment (TPU pods, SLURM).
"""

from __future__ import annotations

from models import runtime

# XLA and TensorFlow settings, before either starts (and, run as a script, the malloc restart)
runtime.configure(reexec=__name__ == "__main__")

import argparse
import difflib
import glob
import importlib
import inspect
import io
import json
import logging
import os
import sys
import tokenize
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import jax

from models.config import T5Config
from tasks.corpora import CorpusNotPreparedError
from tasks.registry import UnknownTaskError
from trainer import checkpoints, data, evaluation, optimizers
from trainer import loop as loop_lib
from trainer import predict as predict_lib
from trainer import state as state_lib
from trainer.mesh import ConfigError
from trainer.predict import DecodeConfig

REPO = os.path.dirname(os.path.abspath(__file__))

# Errors whose messages name the user's mistake and its fix: main prints them as one line.
USER_ERRORS = (
  ValueError,  # ConfigError, bad lengths, meshes and vocabularies, unknown splits, ...
  UnknownTaskError,
  CorpusNotPreparedError,
  FileNotFoundError,
  checkpoints.CheckpointError,
  loop_lib.NonFiniteLossError,
)


def import_task_module(name: str | None) -> None:
  """T5X's MIXTURE_OR_TASK_MODULE: imports a module of the user's own seqio tasks (from the
  working directory or PYTHONPATH) so that they are registered before a task is looked up."""
  if not name:
    return
  if os.getcwd() not in sys.path:
    sys.path.append(os.getcwd())
  try:
    importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name is None or not name.startswith(e.name):
      raise  # the user's module imports something missing: its own traceback says what
    raise ConfigError(
      f"MIXTURE_OR_TASK_MODULE {name!r} was not found: put {name.replace('.', '/')}.py in the "
      f"working directory or a folder on PYTHONPATH"
    ) from None


# ----------------------------------------------------------------------------------------------
# Jobs: gin binds these (run gins pick one with `train_script.run.job = @train_script.train`).
# Each turns the T5X macros into the grouped settings of `trainer/` and calls it.


def train(
  *,
  model_dir: str,
  model_config: T5Config,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  train_steps: int,
  batch_size: int,
  mixture_or_task_module: str | None = None,
  converter: str | None = None,
  pack: bool = True,
  seed: int = 0,
  optimizer: Callable = optimizers.adafactor,
  learning_rate: Callable = optimizers.rsqrt_decay(),
  clip_grad_norm: float | None = None,
  accumulation_steps: int = 1,
  z_loss: float = 1e-4,
  label_smoothing: float = 0.0,
  loss_normalizing_factor="per_token",
  deletion_target: float | None = 0.4,
  deletion_k_p: float = 0.5,
  deletion_k_i: float = 1e-5,
  deletion_alpha0: float = 0.0,
  deletion_delay: int = 0,
  deletion_bucket: int = 64,
  mesh_shape: Mapping[str, int] | None = None,
  partitioning_rules: str | Sequence = "data_parallel",
  initial_checkpoint_path: str | None = None,
  checkpoint_period: int = 1000,
  keep_checkpoints: int = 3,
  async_checkpoint: bool = True,
  compress_checkpoints: bool = False,
  log_period: int = 100,
  eval_period: int | None = 1000,
  eval_split: str = "validation",
  eval_batches: int | None = 20,
  infer_eval_examples: int | None = None,
  infer_eval_batch_size: int | None = None,
  decode_method: str = "greedy",
  num_beams: int = 4,
  alpha: float = 0.6,
  show_progress: bool = True,
) -> dict[str, float]:
  """Trains until `train_steps` (resuming from MODEL_DIR's newest checkpoint); returns the
  final evaluation metrics (or the last train metrics when evaluation is off).

  `converter` (seqio's feature converter, for this job and `evaluate` / `infer`): None picks
  the architecture's, 'encoder_decoder' or 'decoder_only' (seqio's DecoderFeatureConverter:
  prefix-LM features of a task with inputs, LM features of a targets-only task); 'prefix_lm'
  insists on inputs.

  `deletion_*` (MrT5 models only, i.e. a config with `delete_gate_layer`): the target fraction
  of encoder tokens to delete (None: a fixed regularizer weight `deletion_alpha0`), the PI
  controller's gains, its starting α, the steps before the regularizer starts
  (`trainer.state.DeletionConfig`), and the bucket the kept length of hard deletion is rounded
  up to when decoding (`models.mrt5.kept_length_for`).
  """
  import_task_module(mixture_or_task_module)
  return loop_lib.train(
    model_dir=model_dir,
    model_config=model_config,
    dataset=data.DatasetConfig(
      mixture_or_task_name,
      task_feature_lengths,
      "train",
      batch_size,
      converter,
      pack,
      True,
      seed,
    ),
    train_steps=train_steps,
    optimizer=loop_lib.OptimizerConfig(
      optimizer, learning_rate, clip_grad_norm, accumulation_steps
    ),
    loss=state_lib.LossConfig(z_loss, label_smoothing, loss_normalizing_factor),
    deletion=state_lib.DeletionConfig(
      deletion_target, deletion_k_p, deletion_k_i, deletion_alpha0, deletion_delay
    ),
    mesh_shape=mesh_shape,
    partitioning_rules=partitioning_rules,
    initial_checkpoint_path=initial_checkpoint_path,
    checkpoint=loop_lib.CheckpointConfig(
      checkpoint_period, keep_checkpoints, async_checkpoint, compress_checkpoints
    ),
    eval=evaluation.EvalConfig(
      eval_period, eval_split, eval_batches, infer_eval_examples, infer_eval_batch_size
    ),
    decode=DecodeConfig(decode_method, num_beams, alpha, deletion_bucket=deletion_bucket),
    log_period=log_period,
    show_progress=show_progress,
    operative_gin=gin.operative_config_str() if gin.config_is_locked() else "",
  )


def evaluate(
  *,
  checkpoint_path: str,
  model_config: T5Config,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  batch_size: int,
  output_dir: str,
  mixture_or_task_module: str | None = None,
  split: str = "validation",
  converter: str | None = None,
  pack: bool = True,
  eval_batches: int | None = None,
  infer_eval_examples: int | None = None,
  decode_method: str = "greedy",
  num_beams: int = 4,
  alpha: float = 0.6,
  deletion_bucket: int = 64,
  mesh_shape=None,
  partitioning_rules="data_parallel",
  seed: int = 0,
) -> dict:
  """Teacher-forced and inference metrics of a checkpoint; written to
  OUTPUT_DIR/eval_metrics.json and TensorBoard."""
  import_task_module(mixture_or_task_module)
  return evaluation.evaluate_checkpoint(
    checkpoint_path=checkpoint_path,
    model_config=model_config,
    mixture_or_task_name=mixture_or_task_name,
    task_feature_lengths=task_feature_lengths,
    batch_size=batch_size,
    output_dir=output_dir,
    split=split,
    converter=converter,
    pack=pack,
    eval_batches=eval_batches,
    infer_eval_examples=infer_eval_examples,
    decode=DecodeConfig(decode_method, num_beams, alpha, deletion_bucket=deletion_bucket),
    mesh_shape=mesh_shape,
    partitioning_rules=partitioning_rules,
    seed=seed,
  )


def infer(
  *,
  checkpoint_path: str,
  model_config: T5Config,
  output_file: str,
  batch_size: int,
  task_feature_lengths: Mapping[str, int],
  mixture_or_task_name: str | None = None,
  mixture_or_task_module: str | None = None,
  split: str = "validation",
  input_file: str | None = None,
  vocabulary=None,
  mode: str = "predict",
  max_examples: int | None = None,
  converter: str | None = None,
  decode_method: str = "greedy",
  num_beams: int = 4,
  alpha: float = 0.6,
  deletion_bucket: int = 64,
  mesh_shape=None,
  partitioning_rules="data_parallel",
  seed: int = 0,
) -> int:
  """Decodes (mode 'predict') or scores (mode 'score') a task split, or a text file, into
  JSONL; resumes a partly written OUTPUT_FILE. Returns the number of lines written.

  A text file is tokenized with `vocabulary`, else with MIXTURE_OR_TASK_NAME's vocabulary."""
  import_task_module(mixture_or_task_module)
  return predict_lib.infer_checkpoint(
    checkpoint_path=checkpoint_path,
    model_config=model_config,
    output_file=output_file,
    batch_size=batch_size,
    task_feature_lengths=task_feature_lengths,
    mixture_or_task_name=mixture_or_task_name,
    split=split,
    input_file=input_file,
    vocabulary=vocabulary,
    mode=mode,
    max_examples=max_examples,
    converter=converter,
    decode=DecodeConfig(decode_method, num_beams, alpha, deletion_bucket=deletion_bucket),
    mesh_shape=mesh_shape,
    partitioning_rules=partitioning_rules,
    seed=seed,
  )


def run(job: Callable[[], Any]) -> Any:
  """What a run gin chose (`train_script.run.job = @train_script.train`)."""
  return job()


# ----------------------------------------------------------------------------------------------
# Command line and gin


def _known_gin_files() -> list[str]:
  return sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.gin"), recursive=True)
  )


def _close(name: str, candidates) -> str:
  close = difflib.get_close_matches(name, list(candidates), n=4, cutoff=0.5)
  return f"; did you mean {', '.join(close)}?" if close else ""


def _macro_refs(text: str) -> set[str]:
  """Macros a gin value's text refers to (`%NAME`; not `%gin.REQUIRED`, not inside strings)."""
  tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)]
  return {
    b.string
    for a, b, c in zip(tokens, tokens[1:], tokens[2:] + [None])
    if a.string == "%" and b.type == tokenize.NAME and not (c is not None and c.string == ".")
  }


def _check_macros(cli_macros: set[str]) -> None:
  """Unknown macros set on the command line, and macros used but never set (read from gin's
  printed config, `gin.config_str()`: one `NAME = value` or `selector.param = value` a line)."""
  defined, used = set(), set()
  for line in gin.config_str().splitlines():
    name, eq, value = line.partition(" = ")
    if not eq or line.startswith("#"):
      continue
    if "." not in name and "/" not in name:
      defined.add(name)
    used |= _macro_refs(value)
  for name in sorted(cli_macros - used):
    raise ConfigError(
      f"--gin.{name}: no gin file uses the macro {name}, so it would be ignored{_close(name, used)}"
    )
  for name in sorted(used - defined):
    hint = (
      " (include a model gin, e.g. --gin_file=configs/models/mt5/small.gin)"
      if name == "MODEL_CONFIG"
      else f" (pass --gin.{name}=...)"
    )
    raise ConfigError(f"gin macro {name} is used but never set{hint}")


def _configurable_names() -> list[str]:
  """`alias.name` for every public callable of the modules the gin files import."""
  names = []
  for line in gin.config_str().splitlines():
    words = line.split()
    if words[:1] == ["import"] or (words[:1] == ["from"] and "import" in words):
      module = ".".join(words[1:2] + words[3:4]) if words[0] == "from" else words[1]
      alias = words[-1]
      names += [
        f"{alias}.{attr}"
        for attr, value in vars(sys.modules.get(module, object)).items()
        if callable(value) and not attr.startswith("_")
      ]
  return names


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str]) -> None:
  """Parses files and bindings like T5X, turning gin's errors into ones that name the file,
  binding or macro and the close names."""
  gin.clear_config()
  gin.add_config_file_search_path(REPO)
  if not gin_files:
    raise ConfigError(
      "no --gin_file given; pick a run gin, e.g. --gin_file=configs/experiments/quickstart.gin"
    )
  for f in gin_files:
    if not (os.path.isfile(f) or os.path.isfile(os.path.join(REPO, f))):
      raise ConfigError(f"gin file {f} not found{_close(f, _known_gin_files())}")
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings), finalize_config=False)
  except (OSError, ValueError, SyntaxError) as e:
    raise ConfigError(_explain_gin_error(e)) from None
  cli_macros = {
    b.split("=", 1)[0].strip() for b in gin_bindings if "=" in b and "." not in b.split("=", 1)[0]
  }
  _check_macros(cli_macros)
  try:
    gin.finalize()
  except ValueError as e:
    msg = str(e)
    if "%gin.REQUIRED" in msg:
      name = msg.split("/")[0]
      raise ConfigError(
        f"required gin macro {name} is not set: pass --gin.{name}=... "
        f"(strings in quotes: --gin.{name}=\"'...'\")"
      ) from None
    raise ConfigError(msg) from None


def _explain_gin_error(e: Exception) -> str:
  msg = str(e)
  first = msg.splitlines()[0]
  if "doesn't have a parameter named" in first:
    selector = first.split("'")[1]
    param = first.rsplit("named '", 1)[-1].split("'")[0]
    try:
      names = list(inspect.signature(gin.get_configurable(selector)).parameters)
    except (ValueError, TypeError):
      return first
    return f"{first.rstrip('.')}{_close(param, names)} (its parameters: {', '.join(names)})"
  if "No configurable matching" in first:
    selector = first.split("'")[1]
    return f"{first}{_close(selector, _configurable_names())}"
  if isinstance(e, SyntaxError) or "Failed to parse" in msg:
    return (
      f"bad gin value: {msg.strip()}. Values are Python literals: strings need quotes, "
      f"e.g. --gin.MODEL_DIR=\"'runs/x'\""
    )
  return msg


def _parse_args(argv: Sequence[str]):
  p = argparse.ArgumentParser(
    description="xt5 train / eval / infer (gin-configured)",
    epilog="--gin.NAME=VALUE binds a gin macro or parameter",
  )
  p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
  p.add_argument("--gin_bindings", action="append", default=[], help="NAME=VALUE (repeatable)")
  p.add_argument("--coordinator_address", help="multi-host: host:port of process 0")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  p.add_argument(
    "--distributed",
    action="store_true",
    help="multi-host with addresses from the environment (TPU, SLURM, ...)",
  )
  args, rest = p.parse_known_args(argv)
  bindings = list(args.gin_bindings)
  for item in rest:
    if item.startswith("--gin."):
      bindings.append(item[len("--gin.") :])
    else:
      p.error(f"unknown argument {item}")
  return args, bindings


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  for noisy in ("absl", "tensorflow", "jax._src", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  logging.getLogger("absl").addFilter(data.drop_known_seqio_notes)
  args, bindings = _parse_args(sys.argv[1:] if argv is None else argv)
  if args.coordinator_address or args.distributed:
    # CPU processes need gloo for cross-process collectives (harmless on accelerators).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  try:
    parse_gin(args.gin_file, bindings)
    result = gin.get_configurable(run)()
  except USER_ERRORS as e:
    # the user's mistakes (settings, tasks, lengths, paths, checkpoints, vocabularies, batch
    # sizes): one line; anything else keeps its traceback
    # gin appends "In call to configurable ..." lines to errors raised under a binding
    message = str(e).split("\n  In call to configurable")[0]
    print(f"xt5: error: {message}", file=sys.stderr)
    return 2 if isinstance(e, ConfigError) else 1
  if isinstance(result, dict) and jax.process_index() == 0:
    print(json.dumps({k: round(v, 4) for k, v in sorted(result.items())}))
  return 0


if __name__ == "__main__":
  sys.modules.setdefault("train", sys.modules["__main__"])  # gin's `import train` finds us
  sys.exit(main())
