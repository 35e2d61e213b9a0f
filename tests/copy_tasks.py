"""A byte-level copy task for the training tests, importable from gin (`import tests.copy_tasks`)
so subprocesses running train.py register it too. Targets equal inputs: a model that learns to
copy scores BLEU 100, one that does not scores near 0."""

import seqio
import tensorflow as tf

from tasks import metrics
from tests.tasks.conftest import synthetic_documents

NAME = "test_copy"
TEXTS = {
  "train": synthetic_documents(256, seed=3, words=(2, 5)),
  "validation": synthetic_documents(12, seed=4, words=(2, 5)),
}
BYTES = seqio.ByteVocabulary()


def _source(split, shuffle_files, seed=None):
  del shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices({"text": tf.constant(TEXTS[split])})


def _pairs(ds):
  return ds.map(lambda x: {"inputs": x["text"], "targets": x["text"]})


if NAME not in seqio.TaskRegistry.names():
  seqio.TaskRegistry.add(
    NAME,
    source=seqio.FunctionDataSource(
      _source, splits=list(TEXTS), num_input_examples={k: len(v) for k, v in TEXTS.items()}
    ),
    preprocessors=[_pairs, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    output_features={"inputs": seqio.Feature(BYTES), "targets": seqio.Feature(BYTES)},
    metric_fns=metrics.translation_metrics("en"),
  )
