"""Fixtures for the tasks tests: synthetic multilingual-looking text and throwaway seqio tasks."""

import itertools
import os
import random
import tempfile
from pathlib import Path

import pytest
import seqio
import tensorflow as tf

_counter = itertools.count()


def synthetic_documents(
  num_docs: int,
  seed: int = 0,
  words: tuple[int, int] = (5, 200),
  syllables: str = "ka ne ri to mu sa le vo pi da gu fe",
) -> list[str]:
  """Pseudo-words from a syllable inventory: text the tests write themselves."""
  rng = random.Random(seed)
  inventory = syllables.split()
  docs = []
  for _ in range(num_docs):
    n = rng.randint(*words)
    sentence = ["".join(rng.choice(inventory) for _ in range(rng.randint(1, 3))) for _ in range(n)]
    docs.append(" ".join(sentence).capitalize() + ".")
  return docs


def register_text_task(
  name_prefix: str,
  texts: dict[str, list[str]],
  preprocessors: list,
  output_features: dict,
  metric_fns=(),
) -> str:
  """A seqio Task over in-memory `{"text": ...}` examples, under a fresh unique name."""
  name = f"{name_prefix}_{next(_counter)}"

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"text": tf.constant(texts[split], tf.string)})

  seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(
      dataset_fn, splits=list(texts), num_input_examples={k: len(v) for k, v in texts.items()}
    ),
    preprocessors=preprocessors,
    output_features=output_features,
    metric_fns=list(metric_fns),
  )
  return name


@pytest.fixture
def make_documents():
  return synthetic_documents


@pytest.fixture
def make_text_task():
  return register_text_task


@pytest.fixture(scope="session")
def mt5_standin_vocab():
  """Trains the stand-in once per machine (atomic rename: xdist workers may race)."""
  from tasks.vocab import training  # noqa: PLC0415

  path = Path(os.environ["XT5_MT5_VOCAB"])
  if not path.exists():
    with tempfile.TemporaryDirectory(dir=path.parent.parent) as tmp:
      trained = training.train_sentencepiece(
        synthetic_documents(2000, seed=9, words=(3, 20)), 1000, tmp
      )
      path.parent.mkdir(parents=True, exist_ok=True)
      os.replace(trained, path)
  return path
