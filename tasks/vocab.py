"""Vocabularies: bytes (ByT5), SentencePiece with 100 sentinels (mT5 convention), and training one.

    python -m tasks.vocab train --mixture mono --size 8192 --out DIR

trains a SentencePiece unigram model on text sampled from a task or mixture (by the mixture's
rates, capped at --max_sentences lines) and writes `DIR/sentencepiece.model`. Load it with
`sentencepiece_vocabulary(DIR / "sentencepiece.model")`: seqio appends the 100 extra ids, so the
vocabulary has exactly --size ids and `<extra_id_0>` is the highest one.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import seqio
import tensorflow as tf

from tasks import corpora

EXTRA_IDS = 100
BUILTIN_VOCAB_SIZE = 8192  # small enough for the CPU quickstart's softmax, covers ~480 languages
MT5_VOCAB_URL = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"


class VocabularyNotFoundError(FileNotFoundError):
  pass


class SentencePieceFileVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePieceVocabulary that, when its model file is missing, says how to make it.

  seqio loads the file lazily; without this the first use fails deep inside tf.io with a bare
  path. `how_to_get` is the one-line instruction shown.
  """

  def __init__(self, path: str | os.PathLike, how_to_get: str, extra_ids: int = EXTRA_IDS):
    super().__init__(str(path), extra_ids=extra_ids)
    self._how_to_get = how_to_get

  def _model_context(self):  # seqio's single loading point
    if not self._model and not tf.io.gfile.exists(self._sentencepiece_model_file):
      raise VocabularyNotFoundError(
        f"SentencePiece model {self._sentencepiece_model_file} does not exist. {self._how_to_get}"
      )
    return super()._model_context()


def byte_vocabulary() -> seqio.ByteVocabulary:
  """ByT5's: 3 specials + 256 bytes = 259 ids (the model pads to 384); no extra ids, span
  corruption's sentinels are the top bytes, which never occur in UTF-8."""
  return seqio.ByteVocabulary()


def sentencepiece_vocabulary(
  path: str | os.PathLike, extra_ids: int = EXTRA_IDS
) -> SentencePieceFileVocabulary:
  return SentencePieceFileVocabulary(
    path,
    "Train one with `python -m tasks.vocab train --mixture NAME --size N --out DIR`.",
    extra_ids=extra_ids,
  )


def builtin_vocabulary_path(data_dir: str | os.PathLike | None = None) -> Path:
  return Path(data_dir or corpora.data_dir()) / "vocab" / "builtin" / "sentencepiece.model"


def builtin_vocabulary(data_dir: str | os.PathLike | None = None) -> SentencePieceFileVocabulary:
  """The default multilingual vocabulary of the built-in corpora (made by the prepare step)."""
  return SentencePieceFileVocabulary(
    builtin_vocabulary_path(data_dir),
    "Build the built-in corpora and their vocabulary with `python -m tasks.corpora prepare`.",
  )


def mt5_vocabulary_path() -> Path:
  default = corpora.data_dir() / "vocab" / "mc4.250000.100extra" / "sentencepiece.model"
  return Path(os.environ.get("XT5_MT5_VOCAB", default))


def mt5_vocabulary() -> SentencePieceFileVocabulary:
  """mT5's 250k vocabulary (250112 ids). Not downloadable here (offline-first): copy it in."""
  return SentencePieceFileVocabulary(
    mt5_vocabulary_path(),
    f"Copy mT5's vocabulary ({MT5_VOCAB_URL}) there or point $XT5_MT5_VOCAB at it.",
  )


def check_fits(
  vocabulary: seqio.Vocabulary, model_vocab_size: int, what: str = "vocabulary"
) -> None:
  """Refuses a vocabulary with ids the model's embedding has no row for."""
  if vocabulary.vocab_size > model_vocab_size:
    raise ValueError(
      f"the {what} has {vocabulary.vocab_size} ids but the model's vocab_size is "
      f"{model_vocab_size}: ids >= {model_vocab_size} would index past the embedding. "
      f"Use a model config with vocab_size >= {vocabulary.vocab_size} (e.g. "
      f"--gin.T5Config.vocab_size={padded_vocab_size(vocabulary)}) or a smaller vocabulary."
    )


def padded_vocab_size(vocabulary: seqio.Vocabulary) -> int:
  """The embedding size a model needs for `vocabulary`: its size rounded up to a multiple of
  128, as T5's configs do (32100 -> 32128, 250100 -> 250112, ByT5's 259 -> 384)."""
  return -(-vocabulary.vocab_size // 128) * 128


# --- training -------------------------------------------------------------------------------


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
  from tasks import registry  # noqa: PLC0415 (registry imports the task definitions)

  provider = registry.get(name)
  if isinstance(provider, seqio.Mixture):
    rates = {task.name: provider.get_rate(task) for task in provider.tasks}
    tasks = provider.tasks
  else:
    rates, tasks = {provider.name: 1.0}, [provider]
  total = sum(rates.values())
  lines: list[str] = []
  from tqdm import tqdm  # noqa: PLC0415

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
  import sentencepiece as spm  # noqa: PLC0415

  num_pieces = vocab_size - EXTRA_IDS
  min_size = 256 + 3 + 16 + EXTRA_IDS  # bytes, specials, a few real pieces, the sentinels
  if vocab_size < min_size:
    raise ValueError(
      f"vocab size {vocab_size} is too small: byte fallback needs 259 pieces, "
      f"plus {EXTRA_IDS} extra ids; use at least {min_size}"
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
  (the registered tasks point at the default data dir; one split at a time is 10x slower)."""
  from tqdm import tqdm  # noqa: PLC0415

  from tasks import builtin, language_sampling, registry  # noqa: PLC0415 (they import this)

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
  """Trains the built-in vocabulary (BUILTIN_VOCAB_SIZE ids) unless it is already there."""
  path = builtin_vocabulary_path(data_dir)
  if path.exists() and not force:
    return path
  lines = builtin_lines(data_dir, progress=progress)
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
    trained = train_sentencepiece(lines, BUILTIN_VOCAB_SIZE, tmp)
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


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m tasks.vocab",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", required=True)
  train = sub.add_parser("train", help="train a SentencePiece vocabulary on a task or mixture")
  train.add_argument("--mixture", required=True, help="task or mixture name")
  train.add_argument("--size", type=int, required=True, help="vocabulary size incl. 100 extra ids")
  train.add_argument("--out", required=True, help="output directory")
  train.add_argument("--max_sentences", type=int, default=200_000, help="sampling cap (lines)")
  train.add_argument("--split", default="train")
  train.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    path = train_from_mixture(
      args.mixture, args.size, args.out, args.max_sentences, args.split, args.seed
    )
  except (ValueError, corpora.CorpusNotPreparedError, VocabularyNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyError as e:  # registry.UnknownTaskError: an unknown --mixture, with close names
    if type(e).__name__ != "UnknownTaskError":
      raise
    print(f"error: {e}", file=sys.stderr)
    return 2
  vocabulary = sentencepiece_vocabulary(path)
  print(f"wrote {path} ({vocabulary.vocab_size} ids incl. {EXTRA_IDS} extra ids)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
