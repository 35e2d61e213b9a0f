"""Looking up tasks and mixtures by name; mixtures with mT5's or UniMax's language sampling;
tasks over in-memory examples (the interactive model's `train` on a list of pairs)."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from tasks import language_sampling

# mT5: sample language l with probability ∝ n_l ** alpha (seqio: temperature = 1 / alpha).
DEFAULT_ALPHA = 0.3


class UnknownTaskError(KeyError):
  def __str__(self) -> str:  # KeyError would print the message quoted
    return self.args[0]


def registered_names() -> list[str]:
  return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def get(name: str) -> seqio.Task | seqio.Mixture:
  """The task or mixture called `name`; unknown names get the closest registered ones."""
  if name in seqio.MixtureRegistry.names():
    return seqio.get_mixture_or_task(name)
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  names = registered_names()
  close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
  hint = f" Did you mean {', '.join(repr(n) for n in close)}?" if close else ""
  raise UnknownTaskError(
    f"no task or mixture named {name!r}.{hint} ({len(names)} are registered; "
    f"`python -m tasks list` prints them.)"
  )


def language_rate(alpha: float = DEFAULT_ALPHA, maximum: int | None = None) -> functools.partial:
  """Mixing-rate function n ** alpha, n = the task's number of training examples."""
  language_sampling.check_alpha(alpha)
  return functools.partial(seqio.mixing_rate_num_examples, temperature=1.0 / alpha, maximum=maximum)


class UniMaxRate:
  """Mixing-rate function: each task's UniMax allocation among `task_names`, sized by their
  training examples (so `unimax.budget` counts examples). seqio asks one task at a time; the
  first call reads every task's size."""

  def __init__(self, task_names: Sequence[str], unimax: language_sampling.UniMax):
    self.task_names, self.unimax = tuple(task_names), unimax
    self._allocations: dict[str, float] | None = None

  def sizes(self) -> dict[str, int]:
    sizes = {}
    for name in self.task_names:
      n = seqio.get_mixture_or_task(name).num_input_examples("train")
      if n is None:
        raise ValueError(f"UniMax needs the size of {name!r}'s train split; seqio has none")
      sizes[name] = n
    return sizes

  def __call__(self, task: seqio.Task) -> float:
    if self._allocations is None:
      self._allocations = language_sampling.unimax_allocations(
        self.sizes(), self.unimax.budget, self.unimax.max_epochs
      )
    return self._allocations[task.name]


def add_language_mixture(
  name: str,
  task_names: Sequence[str],
  sampling: language_sampling.Sampling = DEFAULT_ALPHA,
  maximum: int | None = None,
) -> seqio.Mixture:
  """Registers a mixture over per-language tasks sampled ∝ n ** alpha (`sampling` an alpha; mT5
  uses 0.3; `maximum` caps n) or by UniMax (`sampling` a `language_sampling.UniMax` whose
  budget counts training examples), n being each task's training examples."""
  language_sampling.check_sampling(sampling)
  if isinstance(sampling, language_sampling.UniMax):
    if maximum is not None:
      raise ValueError("maximum caps n in n ** alpha; UniMax caps epochs with max_epochs instead")
    rate = UniMaxRate(task_names, sampling)
  else:
    rate = language_rate(sampling, maximum)
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(task_names), default_rate=rate)


def mixture(name: str, rates: Mapping[str, float]) -> str:
  """Registers (or replaces) the mixture `name` of registered tasks or mixtures at the given
  rates and returns its name: a gin run sets its own weights without code, e.g.

    MIXTURE_OR_TASK_NAME = @tasks.mixture()
    tasks.mixture.name = 'my_mix'
    tasks.mixture.rates = {'byt5_mono': 0.1, 'byt5_translate_en_de': 0.9}
  """
  if not rates:
    raise ValueError(f"mixture {name!r} needs at least one task")
  for task_name, rate in rates.items():
    get(task_name)  # an unknown name: the closest registered ones
    if not rate > 0:
      raise ValueError(f"mixture {name!r}: the rate of {task_name!r} must be > 0, got {rate}")
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(task_name, float(rate)) for task_name, rate in rates.items()])
  return name


def mixing_proportions(mixture: seqio.Mixture) -> dict[str, float]:
  """Each task's share of the samples (rates normalised to sum to 1)."""
  rates = {task.name: float(mixture.get_rate(task)) for task in mixture.tasks}
  total = sum(rates.values())
  return {name: rate / total for name, rate in rates.items()}


def add_examples_task(
  name: str,
  examples: Sequence[tuple[str, str]],
  vocabulary: seqio.Vocabulary,
  metric_fns: Sequence = (),
  splits: Sequence[str] = ("train", "validation"),
) -> seqio.Task:
  """Registers (or replaces) a Task over in-memory (input, target) text pairs, tokenized with
  `vocabulary` and EOS-terminated like every other task; each split holds all the pairs."""
  if not examples:
    raise ValueError(f"task {name!r} needs at least one (input, target) pair")
  inputs = [str(x) for x, _ in examples]
  targets = [str(y) for _, y in examples]

  def source(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"inputs": inputs, "targets": targets})

  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(
      source, splits=list(splits), num_input_examples={s: len(inputs) for s in splits}
    ),
    preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    output_features={"inputs": seqio.Feature(vocabulary), "targets": seqio.Feature(vocabulary)},
    metric_fns=list(metric_fns),
  )
