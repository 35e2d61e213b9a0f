"""Looking up tasks and mixtures by name; mixtures with mT5's language sampling."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence

import seqio

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


def add_language_mixture(name: str, task_names: Sequence[str], alpha: float = DEFAULT_ALPHA,
                         maximum: int | None = None) -> seqio.Mixture:
    """Registers a mixture over per-language tasks sampled ∝ n ** alpha (mT5 uses 0.3)."""
    seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, list(task_names), default_rate=language_rate(alpha, maximum))


def mixing_proportions(mixture: seqio.Mixture) -> dict[str, float]:
    """Each task's share of the samples (rates normalised to sum to 1)."""
    rates = {task.name: float(mixture.get_rate(task)) for task in mixture.tasks}
    total = sum(rates.values())
    return {name: rate / total for name, rate in rates.items()}
