"""Vocabularies: bytes (ByT5), SentencePiece with 100 sentinels (mT5 convention).

Training a SentencePiece model (on a task or mixture, or the built-in one on the corpora) is
`tasks.vocab.training`, with `python -m tasks.vocab train` as its command line; it reads tasks,
which read these vocabularies, so it is a module of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import seqio
import tensorflow as tf

from tasks import corpora

EXTRA_IDS = 100
BUILTIN_VOCAB_SIZE = 8192  # small enough for the CPU quickstart's softmax, covers ~480 languages
MT5_VOCAB_URL = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
T5_VOCAB_URL = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"


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


def t5_vocabulary_path() -> Path:
  default = corpora.data_dir() / "vocab" / "cc_all.32000.100extra" / "sentencepiece.model"
  return Path(os.environ.get("XT5_T5_VOCAB", default))


def t5_vocabulary() -> SentencePieceFileVocabulary:
  """T5's (and T5.1.1's) English 32k vocabulary (32100 ids). Not downloadable here: copy it in
  (a Hugging Face T5 directory's `spiece.model` holds the same vocabulary)."""
  return SentencePieceFileVocabulary(
    t5_vocabulary_path(),
    f"Copy T5's vocabulary ({T5_VOCAB_URL}, or a Hugging Face T5 directory's spiece.model) "
    "there or point $XT5_T5_VOCAB at it.",
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
