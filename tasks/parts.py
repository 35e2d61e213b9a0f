"""The parts every task definition shares, built-in (`tasks.builtin`) and TFDS (`tasks.tfds_tasks`).

Output features that end every sequence with EOS, the preprocessor chains of the unsupervised
and translation tasks (text -> tokens -> seqio's cache point -> objective -> EOS), and the
task-name form of a language tag.
"""

from __future__ import annotations

import functools

import seqio

from tasks import preprocessors


def task_suffix(tag: str) -> str:
  """A language tag in task names: seqio names allow no hyphens, so `pt-BR` becomes `pt_BR`."""
  return tag.replace("-", "_")


def output_features(vocabulary: seqio.Vocabulary, inputs: bool = True) -> dict[str, seqio.Feature]:
  features = {"targets": seqio.Feature(vocabulary, add_eos=True)}
  if inputs:
    features["inputs"] = seqio.Feature(vocabulary, add_eos=True, required=False)
  return features


def unsupervised_preprocessors(objective, cacheable: bool = True) -> list:
  """Raw documents -> cleaned `targets` text -> tokens -> (cache point) -> objective -> EOS."""
  cache = [seqio.CacheDatasetPlaceholder()] if cacheable else []
  return [
    preprocessors.clean_documents,
    seqio.preprocessors.tokenize,
    *cache,
    objective,
    seqio.preprocessors.append_eos_after_trim,
  ]


def translation_preprocessors(source: str, target: str) -> list:
  return [
    functools.partial(preprocessors.translate, source_language=source, target_language=target),
    seqio.preprocessors.tokenize,
    seqio.CacheDatasetPlaceholder(),
    seqio.preprocessors.append_eos_after_trim,
  ]
