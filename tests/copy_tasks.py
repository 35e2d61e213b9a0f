"""Byte-level copy tasks for the training tests, importable from gin (`import tests.copy_tasks`)
so subprocesses running train.py register them too. Targets equal inputs: a model that learns to
copy scores BLEU 100, one that does not scores near 0.

`test_copy` has sentences of 2-5 words. `test_copy_fixed` has sentences of exactly 4 one-syllable
words (12 bytes), so a decoder-only model copies each byte from a fixed distance back (12 + 1
positions, inside T5's exact relative-position buckets) and a tiny prefix LM learns it in a
couple of hundred steps; the decoder-only tests use it."""

import random

import seqio
import tensorflow as tf

from tasks import metrics
from tests.tasks.conftest import synthetic_documents

NAME = "test_copy"
TEXTS = {
  "train": synthetic_documents(256, seed=3, words=(2, 5)),
  "validation": synthetic_documents(12, seed=4, words=(2, 5)),
}
FIXED_NAME = "test_copy_fixed"
SYLLABLES = "ka ne ri to mu sa le vo pi da gu fe".split()


def fixed_sentences(n: int, seed: int) -> list[str]:
  """`n` sentences like 'Ka ne ri to.': 4 random syllables, 12 bytes."""
  rng = random.Random(seed)
  return [" ".join(rng.choice(SYLLABLES) for _ in range(4)).capitalize() + "." for _ in range(n)]


FIXED_TEXTS = {"train": fixed_sentences(256, seed=5), "validation": fixed_sentences(12, seed=6)}
BYTES = seqio.ByteVocabulary()


def _pairs(ds):
  return ds.map(lambda x: {"inputs": x["text"], "targets": x["text"]})


def _register(name: str, texts: dict[str, list[str]]) -> None:
  if name in seqio.TaskRegistry.names():
    return

  def source(split, shuffle_files, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"text": tf.constant(texts[split])})

  seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(
      source, splits=list(texts), num_input_examples={k: len(v) for k, v in texts.items()}
    ),
    preprocessors=[_pairs, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    output_features={"inputs": seqio.Feature(BYTES), "targets": seqio.Feature(BYTES)},
    metric_fns=metrics.translation_metrics("en"),
  )


_register(NAME, TEXTS)
_register(FIXED_NAME, FIXED_TEXTS)
