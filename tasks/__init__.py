"""xt5's data half: seqio Tasks and Mixtures, vocabularies, preprocessors, metrics, corpora.

Importing `tasks` registers every task and mixture (`tasks.builtin`: the built-in corpora;
`tasks.tfds_tasks`: mC4 and WMT); a gin run can add UniMax variants with `tasks.unimax_mixture`
and mixtures at its own rates with `tasks.mixture`; `tasks.pairs_task` registers one over your
own files of (input, target) pairs (`tasks.pair_files`). It knows nothing of JAX models:
`tasks.get_dataset` yields batches in seqio's feature-converter format, which `models/` consumes.
"""

import tensorflow as tf

# The input pipeline runs on the CPU; on a GPU machine TensorFlow would otherwise reserve the
# memory JAX needs (tensorflow-text pulls TensorFlow in; docs/design.md, Known traps).
tf.config.set_visible_devices([], "GPU")

from tasks import builtin, tfds_tasks  # noqa: E402
from tasks.pair_files import BadLineError, pairs_task
from tasks.pipeline import EmptyDatasetError, as_numpy, feature_converter, get_dataset
from tasks.registry import (
  UnknownTaskError,
  add_examples_task,
  add_language_mixture,
  get,
  mixing_proportions,
  mixture,
)
from tasks.unimax import unimax_budget, unimax_mixture

builtin.register()
tfds_tasks.register()

__all__ = [
  "BadLineError",
  "EmptyDatasetError",
  "UnknownTaskError",
  "add_examples_task",
  "add_language_mixture",
  "as_numpy",
  "feature_converter",
  "get",
  "get_dataset",
  "mixing_proportions",
  "mixture",
  "pairs_task",
  "unimax_budget",
  "unimax_mixture",
]
