"""A model on a mesh: the placement a run uses, the batch shapes it compiles for, and the checks
that refuse a task, vocabulary or batch size before anything is compiled."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from models import partitioning
from models.config import T5Config
from models.network import Transformer
from trainer import params as params_lib


class ConfigError(ValueError):
  """A setting that cannot be used; the message says which and how to fix it."""


def make_placement(
  mesh_shape: Mapping[str, int] | None, rules: str | Sequence = "data_parallel"
) -> partitioning.Placement:
  """The mesh of `mesh_shape` with `rules`. On one process a fully given shape may use fewer
  than all devices (the first ones), e.g. {'data': 1} to compare against a single-device run."""
  devices = jax.devices()
  if mesh_shape and jax.process_count() == 1 and -1 not in mesh_shape.values():
    n = int(np.prod(list(mesh_shape.values())))
    if n < len(devices):
      devices = devices[:n]
  return partitioning.Placement(partitioning.make_mesh(mesh_shape, devices=devices), rules)


def setup_model(
  model_config: T5Config, mesh_shape, partitioning_rules
) -> tuple[partitioning.Placement, Transformer]:
  """(placement, module) for running `model_config` on `mesh_shape` with `partitioning_rules`."""
  return make_placement(mesh_shape, partitioning_rules), Transformer(model_config)


def example_batch(
  converter: str, pack: bool, task_feature_lengths: Mapping[str, int], batch_size: int
) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of the model features the converter makes (what init and jit need)."""
  import tasks

  lengths = tasks.feature_converter(converter, pack).get_model_feature_lengths(
    dict(task_feature_lengths)
  )
  return {k: jax.ShapeDtypeStruct((batch_size, n), np.int32) for k, n in lengths.items()}


LM_CONVERTERS = ("decoder_only", "prefix_lm")


def model_converter(model_config: T5Config, converter: str | None = None) -> str:
  """The feature converter a model is fed: `converter`, or by default the architecture's
  ('encoder_decoder'; 'decoder_only', seqio's DecoderFeatureConverter, which makes prefix-LM
  features of a task with inputs and LM features of a targets-only one). Refuses a converter
  whose features the architecture cannot read."""
  from tasks import pipeline

  if converter is None:
    return "decoder_only" if model_config.architecture == "decoder_only" else "encoder_decoder"
  known = sorted(pipeline.FEATURE_CONVERTERS)
  if converter not in known:
    raise ConfigError(f"unknown feature converter {converter!r}; choose one of {known}")
  if (converter in LM_CONVERTERS) != (model_config.architecture == "decoder_only"):
    wanted = LM_CONVERTERS if model_config.architecture == "decoder_only" else ("encoder_decoder",)
    raise ConfigError(
      f"a {model_config.architecture} model cannot read {converter!r} features; use the "
      f"converter {' or '.join(map(repr, wanted))}"
    )
  return converter


def check_vocabulary(mixture_or_task_name: str, cfg: T5Config) -> None:
  """Refuses a task whose vocabulary has ids past the model's embedding."""
  import tasks
  from tasks import vocab

  provider = tasks.get(mixture_or_task_name)
  for name, feature in provider.output_features.items():
    vocab.check_fits(
      feature.vocabulary, cfg.vocab_size, f"{mixture_or_task_name!r} {name} vocabulary"
    )


def check_feature_lengths(
  mixture_or_task_name: str, task_feature_lengths: Mapping[str, int] | None
) -> None:
  """Refuses TASK_FEATURE_LENGTHS that miss one of the task's features or give a length < 1."""
  import tasks

  wanted = sorted(tasks.get(mixture_or_task_name).output_features)
  example = ", ".join(f"'{k}': 128" for k in wanted)
  if not isinstance(task_feature_lengths, Mapping):
    raise ConfigError(
      f"TASK_FEATURE_LENGTHS must be a dict of the features of {mixture_or_task_name!r}, "
      f'e.g. --gin.TASK_FEATURE_LENGTHS="{{{example}}}"'
    )
  for k in wanted:
    n = task_feature_lengths.get(k)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
      raise ConfigError(
        f"TASK_FEATURE_LENGTHS[{k!r}] is {n!r}: {mixture_or_task_name!r} needs a positive "
        f'length for each of its features, e.g. --gin.TASK_FEATURE_LENGTHS="{{{example}}}"'
      )


def check_split(mixture_or_task_name: str, split: str, setting: str) -> None:
  """Refuses a split that none of the task's (or mixture's) tasks has."""
  import seqio

  import tasks

  have = sorted({s for t in seqio.get_subtasks(tasks.get(mixture_or_task_name)) for s in t.splits})
  if split not in have:
    raise ConfigError(
      f"{setting}={split!r}: {mixture_or_task_name!r} has no such split; its splits are {have}"
    )


def check_output_path(path: str, setting: str, *, directory: bool) -> None:
  """Refuses an output path that cannot be created: a file where a directory is needed (or the
  other way round), a file on the way to it, or a folder the user cannot write in."""
  path = os.path.abspath(os.path.expanduser(path))
  kind = "directory" if directory else "file"
  if os.path.exists(path) and os.path.isdir(path) != directory:
    raise ConfigError(
      f"{setting} {path} is a {'file' if directory else 'directory'}, not a {kind}; "
      f"choose another path"
    )
  parent = path if directory else os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ConfigError(
      f"{setting} {path} cannot be created: {parent} is a file; choose another path"
    )
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigError(f"{setting} {path} cannot be written: no write permission in {parent}")


def check_positive(**settings: int | None) -> None:
  """Refuses a count setting (steps, periods, batch size) that is not a positive integer;
  None passes (it means "off" or "all" where a setting allows it)."""
  for name, value in settings.items():
    if value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ConfigError(f"{name.upper()} must be a positive integer, got {value!r}")


def check_batch_size(
  batch_size: int, accumulation_steps: int, placement: partitioning.Placement
) -> None:
  """Refuses a batch whose microbatches do not split evenly over the data-parallel devices."""
  n = placement.data_parallel_size
  per_step = batch_size // max(accumulation_steps, 1)
  if batch_size % max(accumulation_steps, 1) or per_step % n:
    raise ConfigError(
      f"BATCH_SIZE={batch_size} with ACCUMULATION_STEPS={accumulation_steps} gives "
      f"microbatches of {batch_size / max(accumulation_steps, 1):g} rows, which must be a "
      f"whole multiple of the {n} data-parallel devices"
    )


def load_model(
  checkpoint_path: str,
  model_config: T5Config,
  mesh_shape,
  partitioning_rules,
  *,
  converter: str,
  pack: bool,
  task_feature_lengths: Mapping[str, int],
  batch_size: int,
):
  """(placement, module, params, batch size rounded for the mesh): a checkpoint's params on
  the mesh, for evaluation and inference."""
  placement, module = setup_model(model_config, mesh_shape, partitioning_rules)
  batch_size = placement.round_batch_size(batch_size)
  example = example_batch(converter, pack, task_feature_lengths, batch_size)
  shardings = placement.param_shardings(partitioning.abstract_params(module, example))
  params = params_lib.load_params(checkpoint_path, model_config, shardings)
  return placement, module, params, batch_size
