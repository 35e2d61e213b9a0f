"""Training SentencePiece vocabularies: on a task or mixture, and the built-in one on the corpora.

`train_sentencepiece` makes T5's kind of model (unigram, byte fallback, pad 0 / eos 1 / unk 2,
seqio's 100 extra ids on top); `train_from_mixture` feeds it text sampled by a mixture's rates
(`python -m tasks.vocab train`), `prepare_builtin` the built-in corpus sampled as `mono` is
(`python -m tasks.corpora prepare` runs it). Apart from `tasks.vocab` because it reads tasks,
and the tasks read `tasks.vocab`'s vocabularies.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm
import seqio
import tensorflow as tf
from tqdm import tqdm

from tasks import builtin, language_sampling, registry, vocab


def _raw_text_dataset(task: seqio.Task, split: str, seed: int) -> tf.data.Dataset:
  """The task's examples after its text preprocessors, before tokenization."""
  dataset = task.source.get_dataset(split=split, shuffle=True, seed=seed)
  for preprocessor in task.preprocessors:
    if preprocessor is seqio.preprocessors.tokenize or isinstance(
      preprocessor, seqio.CacheDatasetPlaceholder
    ):
      break
    dataset = seqio.utils.add_kwargs_to_transform(
      preprocessor, sequence_length=None, output_features=task.output_features
    )(dataset)
  return dataset


def task_lines(task: seqio.Task, split: str, limit: int, seed: int = 0) -> Iterator[str]:
  """Up to `limit` non-empty lines of a task's raw `inputs`/`targets` text."""
  count = 0
  for example in _raw_text_dataset(task, split, seed).as_numpy_iterator():
    for key in ("inputs", "targets"):
      value = example.get(key)
      if not isinstance(value, bytes):
        continue
      for line in value.decode("utf-8", errors="replace").splitlines():
        if line.strip():
          yield line
          count += 1
          if count >= limit:
            return


def mixture_lines(
  name: str, split: str, max_lines: int, seed: int = 0, progress: bool = True
) -> list[str]:
  """Lines from a task or mixture, each task's share proportional to its mixing rate."""
  provider = registry.get(name)
  if isinstance(provider, seqio.Mixture):
    rates = {task.name: provider.get_rate(task) for task in provider.tasks}
    tasks = provider.tasks
  else:
    rates, tasks = {provider.name: 1.0}, [provider]
  total = sum(rates.values())
  lines: list[str] = []
  with tqdm(
    total=max_lines, desc=f"sampling text from {name}", unit="line", disable=not progress
  ) as bar:
    for task in tasks:
      quota = max(1, math.ceil(max_lines * rates[task.name] / total))
      for line in task_lines(task, split, quota, seed):
        lines.append(line)
        bar.update()
  random.Random(seed).shuffle(lines)
  return lines[:max_lines]


def train_sentencepiece(
  lines: Iterable[str],
  vocab_size: int,
  out_dir: str | os.PathLike,
  character_coverage: float = 0.9995,
) -> Path:
  """Trains a unigram model with `vocab_size - 100` pieces (+100 extra ids from seqio).

  T5's special ids: pad 0, eos 1, unk 2, no bos. Byte fallback keeps rare scripts encodable
  without <unk>.
  """
  num_pieces = vocab_size - vocab.EXTRA_IDS
  min_size = 256 + 3 + 16 + vocab.EXTRA_IDS  # bytes, specials, a few real pieces, the sentinels
  if vocab_size < min_size:
    raise ValueError(
      f"vocab size {vocab_size} is too small: byte fallback needs 259 pieces, "
      f"plus {vocab.EXTRA_IDS} extra ids; use at least {min_size}"
    )
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as f:
    n = 0
    for line in lines:
      f.write(line.replace("\n", " ") + "\n")
      n += 1
    text_path = f.name
  if n == 0:
    os.unlink(text_path)
    raise ValueError("no text to train a vocabulary on (the task or mixture yielded no lines)")
  try:
    spm.SentencePieceTrainer.train(
      input=text_path,
      model_prefix=str(out_dir / "sentencepiece"),
      model_type="unigram",
      vocab_size=num_pieces,
      character_coverage=character_coverage,
      byte_fallback=True,
      pad_id=0,
      eos_id=1,
      unk_id=2,
      bos_id=-1,
      input_sentence_size=n,
      shuffle_input_sentence=True,
      seed_sentencepiece_size=min(1_000_000, 10 * n),
      num_threads=os.cpu_count() or 1,
      minloglevel=2,
    )
  except RuntimeError as e:  # e.g. "Vocabulary size is too high" on little text
    raise ValueError(f"SentencePiece could not train {num_pieces} pieces on {n} lines: {e}") from e
  finally:
    os.unlink(text_path)
  return out_dir / "sentencepiece.model"


def builtin_lines(
  data_dir: str | os.PathLike | None = None,
  max_lines: int = 200_000,
  alpha: float | None = None,
  seed: int = 0,
  progress: bool = True,
) -> list[str]:
  """Lines of the built-in monolingual corpus, each language's share ∝ n ** alpha (as `mono`).

  Reads the TFDS data under `data_dir` directly, in one pass over every language's train split
  (the registered tasks point at the default data dir; one split at a time is much slower)."""
  source = builtin.SampledMonolingualSource(
    registry.DEFAULT_ALPHA if alpha is None else alpha, data_dir=data_dir
  )
  sizes = source.sizes("train")
  quota = {
    tag: max(1, math.ceil(max_lines * rate))
    for tag, rate in language_sampling.language_rates(sizes, source.alpha).items()
  }
  by_language: dict[str, list[str]] = {tag: [] for tag in sizes}
  for example in tqdm(
    source.documents("train").as_numpy_iterator(),
    total=sum(sizes.values()),
    unit="doc",
    desc="sampling vocabulary text",
    disable=not progress,
  ):
    tag = example["lang"].decode()
    taken = by_language[tag]
    for line in example["text"].decode("utf-8", errors="replace").splitlines():
      if line.strip() and len(taken) < quota[tag]:
        taken.append(line)
  lines = [line for taken in by_language.values() for line in taken]
  random.Random(seed).shuffle(lines)
  return lines


def prepare_builtin(
  data_dir: str | os.PathLike | None = None, force: bool = False, progress: bool = True
) -> Path:
  """Trains the built-in vocabulary (`vocab.BUILTIN_VOCAB_SIZE` ids) unless it is already there."""
  path = vocab.builtin_vocabulary_path(data_dir)
  if path.exists() and not force:
    return path
  lines = builtin_lines(data_dir, progress=progress)
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
    trained = train_sentencepiece(lines, vocab.BUILTIN_VOCAB_SIZE, tmp)
    os.replace(trained, path)  # atomic: a killed run never leaves half a model
  return path


def train_from_mixture(
  name: str,
  vocab_size: int,
  out_dir: str | os.PathLike,
  max_lines: int = 200_000,
  split: str = "train",
  seed: int = 0,
  progress: bool = True,
) -> Path:
  lines = mixture_lines(name, split, max_lines, seed, progress)
  return train_sentencepiece(lines, vocab_size, out_dir)
