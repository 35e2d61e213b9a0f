"""The built-in tasks and mixtures on the real prepared corpora (`make test` prepares them)."""

import collections
import unicodedata

import numpy as np
import pytest

import tasks
from tasks import builtin, corpora, language_sampling
from tasks.vocab import training


@pytest.fixture(scope="module")
def prepared():
  corpora.prepare(progress=False)  # a no-op when `make test` has run the prepare step
  training.prepare_builtin(progress=False)


def test_missing_corpora_name_the_prepare_command(tmp_path):
  source = builtin.BuiltinTfdsSource(
    f"{corpora.GNOME_HELP}/en-de:1.0.0", data_dir=tmp_path, splits=["train"]
  )
  with pytest.raises(corpora.CorpusNotPreparedError, match="python -m tasks.corpora prepare"):
    source.get_dataset("train")
  with pytest.raises(corpora.CorpusNotPreparedError, match="python -m tasks.corpora prepare"):
    source.list_shards("train")  # what a sharded (multi-host) read asks first
  with pytest.raises(corpora.CorpusNotPreparedError, match=str(tmp_path)):
    source.num_input_examples("train")
  with pytest.raises(corpora.CorpusNotPreparedError, match="python -m tasks.corpora prepare"):
    builtin.SampledMonolingualSource(data_dir=tmp_path).get_dataset("train")
  with pytest.raises(ValueError, match=r"no built-in monolingual data for \['xx-Fake'\]"):
    builtin.add_sampled_monolingual_task("mono_fake", languages=["de", "xx-Fake"])


def test_translation_task_on_gnome_help(prepared):
  task = tasks.get("translate_en_de")
  ds = task.get_dataset({"inputs": 128, "targets": 128}, split="validation", shuffle=False)
  examples = list(ds.take(50).as_numpy_iterator())
  assert len(examples) == 50
  vocabulary = task.output_features["targets"].vocabulary
  for ex in examples:
    assert ex["inputs_pretokenized"].decode().startswith("translate English to German: ")
    assert ex["targets"][-1] == vocabulary.eos_id
    if len(ex["targets"]) < 128:  # not truncated: SentencePiece round-trips up to NFKC
      expected = unicodedata.normalize("NFKC", ex["targets_pretokenized"].decode())
      assert vocabulary.decode(ex["targets"].tolist()) == " ".join(expected.split())
  assert task.num_input_examples("validation") > 200
  # Locales with nothing translated on the held-out pages have no validation split: said plainly.
  with pytest.raises(ValueError, match="has no split 'validation'"):
    tasks.get_dataset("translate_en_he", "validation", {"inputs": 64, "targets": 64}, batch_size=2)


def test_mono_samples_languages_by_n_to_the_0_3(prepared):
  everything = tasks.get("mono").source.sizes("train")
  assert len(everything) == len(corpora.MONOLINGUAL_LANGUAGES) > 400
  # The big GNOME languages and a slice of the UDHR-only tail (sampling all ~480 languages is the
  # same code; a subset keeps the test fast).
  by_size = sorted(everything, key=everything.get)
  languages = by_size[-8:] + by_size[100:400:20]
  source = builtin.SampledMonolingualSource(languages=languages)
  sizes = source.sizes("train")
  rates = language_sampling.language_rates(sizes, 0.3)
  docs = source.get_dataset("train", shuffle=True, seed=5).take(10_000)
  chars = collections.Counter()
  for ex in docs.as_numpy_iterator():
    chars[ex["lang"].decode()] += len(ex["text"].decode())
  assert set(chars) == set(languages)
  total = sum(chars.values())
  # Each language's share of the text (what becomes tokens) is its n^0.3 share; with ~20
  # languages over 10k documents the sampling error is a few percent of each share.
  for lang in languages:
    assert chars[lang] / total == pytest.approx(rates[lang], rel=0.2), lang
  assert source.num_input_examples("train") is None  # endless: seqio must not cache it


@pytest.mark.parametrize(
  "name, lengths",
  [
    ("multitask", {"inputs": 256, "targets": 64}),
    ("byt5_multitask", {"inputs": 512, "targets": 128}),
  ],
)
def test_multitask_batches(prepared, name, lengths):
  ds = tasks.get_dataset(name, "train", lengths, batch_size=4, seed=1)
  batch = next(tasks.as_numpy(ds, name))
  assert batch["encoder_input_tokens"].shape == (4, lengths["inputs"])
  assert batch["decoder_target_tokens"].shape == (4, lengths["targets"])
  assert np.all(batch["encoder_segment_ids"].max(axis=1) >= 1)
  vocab_size = tasks.get(name).tasks[0].output_features["targets"].vocabulary.vocab_size
  assert batch["decoder_target_tokens"].max() < vocab_size


def test_translation_metrics_through_seqio_evaluator(prepared):
  """The task's metric functions as train.py's inference eval will call them: a 'model' that
  predicts the references (decoder targets, fixed length and zero-padded) scores 100."""
  import seqio  # noqa: PLC0415

  evaluator = seqio.Evaluator(
    "translate_en_de",
    seqio.EncDecFeatureConverter(pack=False),
    eval_split="validation",
    sequence_length={"inputs": 256, "targets": 256},
    num_examples=16,
    async_compute_metrics=False,
  )

  def predict_targets(dataset, model_feature_shapes=None):
    del model_feature_shapes
    # seqio hands (example index, model features) pairs.
    return [(int(i), ex["decoder_target_tokens"]) for i, ex in dataset.as_numpy_iterator()]

  all_metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_targets)
  scores = all_metrics.result()["translate_en_de"]
  # Not exactly 100: SentencePiece normalises to NFKC (e.g. "…" -> "..."), the references are raw.
  assert scores["bleu"] > 80 and scores["chrf"] > 80


def test_list_command_prints_matching_names(capsys):
  from tasks.__main__ import main  # noqa: PLC0415

  assert main(["list", "translate_en_d"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert "task     translate_en_de" in out and all("translate_en_d" in line for line in out)


def test_hosts_read_disjoint_shards(prepared):
  """Multi-host: each host's shard of a split holds different documents, and together all."""
  import seqio  # noqa: PLC0415

  source = tasks.get("mono").source
  shards = [
    {
      (ex["lang"], ex["doc_id"])
      for ex in source.get_dataset(
        "validation", shuffle=False, shard_info=seqio.ShardInfo(index=i, num_shards=3)
      ).as_numpy_iterator()
    }
    for i in range(3)
  ]
  assert all(shards) and not (
    shards[0] & shards[1] or shards[0] & shards[2] or shards[1] & shards[2]
  )
  assert sum(map(len, shards)) == source.num_input_examples("validation")
  task = tasks.get("translate_en_de")
  pages = [
    {
      ex["inputs_pretokenized"]
      for ex in task.get_dataset(
        {"inputs": 64, "targets": 64},
        split="validation",
        shuffle=False,
        num_epochs=1,
        shard_info=seqio.ShardInfo(index=i, num_shards=2),
      ).as_numpy_iterator()
    }
    for i in range(2)
  ]
  assert pages[0] and pages[1] and len(pages[0] | pages[1]) > max(len(pages[0]), len(pages[1]))
