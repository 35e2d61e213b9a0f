"""mC4 / ByT5-mC4 / WMT task definitions produce batches under tfds.testing.mock_data (offline)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tasks
from tasks import tfds_tasks


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def test_registered_names():
  assert len(tfds_tasks.MC4_LANGUAGES) == 107
  assert len(tasks.get("mc4").tasks) == 107 and len(tasks.get("byt5_mc4").tasks) == 107
  for name in (
    "mc4.zh_Latn",
    "byt5_mc4.de",
    "wmt19_translate_de_en",
    "wmt19_translate_en_de",
    "wmt14_translate_en_fr",
    "byt5_wmt16_translate_en_ro",
  ):
    tasks.get(name)


def test_byt5_mc4_batches(mock_tfds):
  # Short rows: mock documents are a few bytes each, and packing repeats the tiny mock split.
  ds = tasks.get_dataset(
    "byt5_mc4.de", "train", {"inputs": 128, "targets": 32}, batch_size=2, try_in_mem_cache=False
  )
  batch = next(tasks.as_numpy(ds, "byt5_mc4.de"))
  assert batch["encoder_input_tokens"].shape == (2, 128)
  assert batch["decoder_target_tokens"].shape == (2, 32)
  assert batch["decoder_target_tokens"].max() == 258  # the first sentinel: byte 0xFF
  assert batch["encoder_segment_ids"].max() >= 1


def test_mc4_batches_with_the_mt5_vocabulary(mock_tfds, mt5_standin_vocab):
  ds = tasks.get_dataset(
    "mc4.de",
    "validation",
    {"inputs": 64, "targets": 16},
    batch_size=2,
    pack=False,
    try_in_mem_cache=False,
  )
  batch = next(tasks.as_numpy(ds, "mc4.de"))
  vocab_size = tasks.get("mc4.de").output_features["targets"].vocabulary.vocab_size
  assert batch["encoder_input_tokens"].shape == (2, 64)
  assert batch["decoder_target_tokens"][:, 0].tolist() == [vocab_size - 1] * 2  # <extra_id_0>


def test_wmt_batches_and_metrics(mock_tfds, mt5_standin_vocab):
  task = tasks.get("wmt19_translate_de_en")
  assert len(task.predict_metric_fns) == 2
  ds = task.get_dataset(
    {"inputs": 32, "targets": 32}, split="validation", shuffle=False, try_in_mem_cache=False
  )
  example = next(ds.as_numpy_iterator())
  assert example["inputs_pretokenized"].decode().startswith("translate German to English: ")
  batch = next(
    tasks.as_numpy(
      tasks.get_dataset(
        "byt5_wmt19_translate_en_de",
        "validation",
        {"inputs": 32, "targets": 32},
        batch_size=4,
        try_in_mem_cache=False,
      ),
      "wmt",
    )
  )
  assert np.all(batch["decoder_loss_weights"].sum(axis=1) > 0)
