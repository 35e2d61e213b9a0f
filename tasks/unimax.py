"""UniMax variants of the language-sampled streams, by name: what a gin run binds.

T5X-style runs name their data with the MIXTURE_OR_TASK_NAME macro; a gin file can make that
name with `unimax_mixture`, which registers the UniMax variant of `base` (once) and returns its
name, while its budget follows the run's own macros (configs/experiments/mono_unimax.gin):

  from __gin__ import dynamic_registration
  import tasks
  MIXTURE_OR_TASK_NAME = @tasks.unimax_mixture()
  tasks.unimax_mixture:
    base = 'mono'
    max_epochs = 1.0
    budget = @tasks.unimax_budget()
  tasks.unimax_budget:
    train_steps = %TRAIN_STEPS
    batch_size = %BATCH_SIZE
    task_feature_lengths = %TASK_FEATURE_LENGTHS
    chars_per_token = 2.0

Bases: the built-in streams (mono, byt5_mono, mono_lm, mono_prefix_lm; budget in characters)
and any registered mixture of per-language tasks, such as mc4 and byt5_mc4 (budget in training
examples: documents). Python callers can use `builtin.add_sampled_monolingual_task` and
`registry.add_language_mixture` with a `language_sampling.UniMax` directly.
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio

from tasks import builtin, language_sampling, registry, tfds_tasks


def unimax_budget(
  train_steps: int,
  batch_size: int,
  task_feature_lengths: Mapping[str, int],
  chars_per_token: float,
) -> float:
  """A run's budget in characters: steps × batch × its longest feature (the encoder's input for
  span corruption, the decoder's for an LM) × characters per token (builtin.CHARS_PER_TOKEN has
  the built-in vocabularies'). Span corruption moves ~15% of the text to the targets, so a
  run reads somewhat more than this."""
  return language_sampling.character_budget(
    train_steps, batch_size, max(task_feature_lengths.values()), chars_per_token
  )


DEFAULT_BUDGETS = {
  **builtin.UNIMAX_BUDGETS,
  "mc4": tfds_tasks.MC4_UNIMAX_BUDGET,
  "byt5_mc4": tfds_tasks.MC4_UNIMAX_BUDGET,
}
DEFAULT_MAX_EPOCHS = 1.0  # = builtin.UNIMAX_MAX_EPOCHS = tfds_tasks.MC4_UNIMAX_MAX_EPOCHS


def default_budget(base: str) -> float:
  """The budget of `{base}_unimax` (registered for mono, byt5_mono, mc4, byt5_mc4)."""
  if base not in DEFAULT_BUDGETS:
    raise ValueError(f"{base!r} has no default UniMax budget; pass budget")
  return DEFAULT_BUDGETS[base]


def unimax_name(
  base: str, budget: float | None = None, max_epochs: float = DEFAULT_MAX_EPOCHS
) -> str:
  """`{base}_unimax` at the defaults (`default_budget`, one epoch), else e.g.
  `mono_unimax_5734400_2ep` (budget rounded; a `.` in the epochs as `p`)."""
  budget = default_budget(base) if budget is None else budget
  if max_epochs == DEFAULT_MAX_EPOCHS and budget == DEFAULT_BUDGETS.get(base):
    return f"{base}_unimax"
  epochs = f"{max_epochs:g}".replace(".", "p")
  return f"{base}_unimax_{round(budget)}_{epochs}ep"


def unimax_mixture(
  base: str = "mono", budget: float | None = None, max_epochs: float = DEFAULT_MAX_EPOCHS
) -> str:
  """Registers `base` re-sampled by UniMax (unless that name is registered already) and returns
  the name. budget None: the base's default (`default_budget`)."""
  unimax = language_sampling.UniMax(default_budget(base) if budget is None else budget, max_epochs)
  name = unimax_name(base, unimax.budget, unimax.max_epochs)
  if name in registry.registered_names():
    return name
  if base in builtin.UNIMAX_BUDGETS:
    builtin.add_sampled_monolingual_task(name, base, unimax)
  elif base in seqio.MixtureRegistry.names():
    task_names = [task.name for task in seqio.get_mixture_or_task(base).tasks]
    registry.add_language_mixture(name, task_names, unimax)
  else:
    raise ValueError(
      f"UniMax needs a language-sampled base: {', '.join(builtin.UNIMAX_BUDGETS)} or a mixture "
      f"of per-language tasks such as mc4; got {base!r}"
    )
  return name
