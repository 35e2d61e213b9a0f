"""tasks.pairs_task (tasks/pair_files.py): a seqio Task over the user's TSV/JSONL files of pairs."""

import json
import logging
import re

import numpy as np
import pytest
import seqio

import tasks
from tasks import metrics, pair_files, vocab

LENGTHS = {"inputs": 64, "targets": 64}
PAIRS = [("Open the file.", "Öffnen Sie die Datei."), ("Print the page.", "Drucken Sie die Seite.")]


def write_tsv(path, pairs=PAIRS):
  path.write_text("".join(f"{x}\t{y}\n" for x, y in pairs), encoding="utf-8")
  return str(path)


def write_jsonl(path, pairs=PAIRS, fields=("inputs", "targets")):
  lines = [json.dumps({fields[0]: x, fields[1]: y, "id": i}) for i, (x, y) in enumerate(pairs)]
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def examples(name, split="train"):
  ds = tasks.get(name).get_dataset(LENGTHS, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


def test_tsv_examples_are_tokenized_with_the_prefix_and_eos(tmp_path):
  byte_vocab = vocab.byte_vocabulary()
  name = tasks.pairs_task(
    train=write_tsv(tmp_path / "train.tsv"), vocabulary="byt5", prefix="translate en to de: "
  )
  out = examples(name)
  assert [(e["inputs_pretokenized"].decode(), e["targets_pretokenized"].decode()) for e in out] == [
    (f"translate en to de: {x}", y) for x, y in PAIRS
  ]
  for example, (x, y) in zip(out, PAIRS, strict=True):
    np.testing.assert_array_equal(
      example["inputs"], byte_vocab.encode("translate en to de: " + x) + [1]
    )
    np.testing.assert_array_equal(example["targets"], byte_vocab.encode(y) + [1])
  assert tasks.get(name).output_features["targets"].vocabulary == byte_vocab


def test_jsonl_with_named_fields_and_a_sentencepiece_file(tmp_path, mt5_standin_vocab):
  path = write_jsonl(tmp_path / "train.jsonl", fields=("question", "answer"))
  name = tasks.pairs_task(
    train=path, vocabulary=str(mt5_standin_vocab), input_field="question", target_field="answer"
  )
  sp = vocab.sentencepiece_vocabulary(mt5_standin_vocab)
  out = examples(name)
  assert [e["targets"].tolist() for e in out] == [sp.encode(y) + [1] for _, y in PAIRS]
  assert tasks.get(name).output_features["inputs"].vocabulary.vocab_size == sp.vocab_size


def test_named_vocabularies_and_objects(tmp_path, builtin_data):
  path = write_tsv(tmp_path / "train.tsv")
  builtin = vocab.builtin_vocabulary()
  name = tasks.pairs_task(train=path, vocabulary="builtin")
  assert examples(name)[0]["inputs"].tolist() == builtin.encode(PAIRS[0][0]) + [1]
  by_object = tasks.pairs_task(train=path, vocabulary=vocab.byte_vocabulary())
  assert tasks.get(by_object).output_features["inputs"].vocabulary.vocab_size == 259
  with pytest.raises(ValueError, match=r"vocabulary='t6'.*'t5', 'mt5', 'byt5', 'builtin'"):
    tasks.pairs_task(train=path, vocabulary="t6")


def test_a_missing_vocabulary_file_is_reported_at_registration(tmp_path, monkeypatch):
  monkeypatch.setenv("XT5_T5_VOCAB", str(tmp_path / "none" / "sentencepiece.model"))
  with pytest.raises(vocab.VocabularyNotFoundError, match=r"XT5_T5_VOCAB"):
    tasks.pairs_task(train=write_tsv(tmp_path / "train.tsv"), vocabulary="t5")


def test_splits_are_the_files_given(tmp_path):
  train = write_tsv(tmp_path / "train.tsv")
  dev = write_tsv(tmp_path / "dev.tsv", PAIRS[:1])
  more = write_tsv(tmp_path / "more.tsv", [("Yes.", "Ja.")])
  name = tasks.pairs_task(train=[train, more], validation=dev, test=dev, vocabulary="byt5")
  task = tasks.get(name)
  assert set(task.splits) == {"train", "validation", "test"}
  assert task.source.num_input_examples("train") == 3
  assert task.source.num_input_examples("validation") == 1
  assert [e["targets_pretokenized"] for e in examples(name)] == [
    b"\xc3\x96ffnen Sie die Datei.",
    b"Drucken Sie die Seite.",
    b"Ja.",
  ]
  only_dev = tasks.pairs_task(validation=dev, vocabulary="byt5")
  assert list(tasks.get(only_dev).splits) == ["validation"]
  globbed = tasks.pairs_task(train=str(tmp_path / "*.tsv"), vocabulary="byt5")
  assert tasks.get(globbed).source.num_input_examples("train") == 4
  mixed = tasks.pairs_task(
    train=train, validation=write_jsonl(tmp_path / "d.jsonl"), vocabulary="byt5"
  )
  assert len(examples(mixed, "validation")) == 2
  with pytest.raises(ValueError, match="at least one split"):
    tasks.pairs_task(vocabulary="byt5")
  with pytest.raises(FileNotFoundError, match=r"validation='.*nope.tsv': no such file"):
    tasks.pairs_task(train=train, validation=str(tmp_path / "nope.tsv"), vocabulary="byt5")
  with pytest.raises(ValueError, match=r"pass format='tsv' or format='jsonl'"):
    tasks.pairs_task(train=write_tsv(tmp_path / "train.csv"), vocabulary="byt5")
  assert tasks.pairs_task(train=str(tmp_path / "train.csv"), format="tsv", vocabulary="byt5")


BAD_LINES = {
  "too many TSV fields": ("tsv", b"a\tb\tc", "expected 2 tab-separated fields .* found 3"),
  "too few TSV fields": ("tsv", b"just one", "expected 2 tab-separated fields .* found 1"),
  "empty input": ("tsv", b" \tb", "empty input"),
  "empty target": ("tsv", b"a\t", "empty target"),
  "bad UTF-8": ("tsv", b"caf\xe9\tb", r"not valid UTF-8 \(byte 3\)"),
  "invalid JSON": ("jsonl", b'{"inputs": "a", "targets": ', r"invalid JSON \(Expecting value"),
  "not an object": ("jsonl", b'["a", "b"]', "expected a JSON object, found list"),
  "missing field": ("jsonl", b'{"inputs": "a", "target": "b"}', "no field 'targets'"),
  "not a string": ("jsonl", b'{"inputs": "a", "targets": 3}', "field 'targets' is a int"),
  "empty JSON target": ("jsonl", b'{"inputs": "a", "targets": ""}', "empty target"),
}


def write_with_bad_line(tmp_path, kind, bad):
  good = (b"x\ty" if kind == "tsv" else b'{"inputs": "x", "targets": "y"}') + b"\n"
  path = tmp_path / f"data.{kind}"
  path.write_bytes(good + b"\n" + good + bad + b"\n" + good)  # the bad one is line 4
  return str(path)


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_a_bad_line_is_one_error_naming_file_and_line(tmp_path, case):
  kind, bad, problem = BAD_LINES[case]
  path = write_with_bad_line(tmp_path, kind, bad)
  with pytest.raises(tasks.BadLineError) as info:
    tasks.pairs_task(train=path, vocabulary="byt5")
  message = str(info.value)
  assert "\n" not in message
  assert message.startswith(f"{path}:4: ")
  assert re.search(problem, message), message
  assert message.endswith(
    "pass skip_bad_lines=True to skip bad lines (--gin.tasks.pairs_task.skip_bad_lines=True)."
  )


def test_skip_bad_lines_skips_and_reports_once_per_file(tmp_path, caplog):
  path = tmp_path / "train.tsv"
  path.write_bytes(b"a\tb\nbad\n\xff\tx\nc\td\n\nlast\t\n")
  dev = write_tsv(tmp_path / "dev.tsv")
  with pytest.raises(tasks.BadLineError, match=r":2: .*found 1 \(and 2 more bad lines\)"):
    tasks.pairs_task(train=str(path), validation=dev, vocabulary="byt5")
  with caplog.at_level(logging.WARNING, logger="tasks.pair_files"):
    name = tasks.pairs_task(train=str(path), validation=dev, vocabulary="byt5", skip_bad_lines=True)
    tasks.pairs_task(train=str(path), validation=dev, vocabulary="byt5", skip_bad_lines=True)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1, warnings
  assert warnings[0].startswith(f"{path}: skipped 3 bad lines of 5 (lines 2, 3, 6; line 2: ")
  assert [e["inputs_pretokenized"] for e in examples(name)] == [b"a", b"c"]
  assert tasks.get(name).source.num_input_examples("train") == 2
  path.write_bytes(b"bad\n")
  with pytest.raises(tasks.BadLineError, match=r"train.tsv: no \(input, target\) pairs in it"):
    tasks.pairs_task(train=str(path), vocabulary="byt5", skip_bad_lines=True)


def test_a_byte_order_mark_and_crlf_line_ends_are_not_part_of_the_text(tmp_path):
  path = tmp_path / "excel.tsv"
  path.write_bytes(b"\xef\xbb\xbfa\tb\r\nc\td\r\n")
  name = tasks.pairs_task(train=str(path), vocabulary="byt5")
  assert [(e["inputs_pretokenized"], e["targets_pretokenized"]) for e in examples(name)] == [
    (b"a", b"b"),
    (b"c", b"d"),
  ]


def test_metrics_are_attached(tmp_path):
  path = write_tsv(tmp_path / "train.tsv")
  name = tasks.pairs_task(validation=path, vocabulary="byt5", metrics=["bleu", "chrf"])
  assert tasks.get(name).metric_fns == [metrics.bleu, metrics.chrf]
  name = tasks.pairs_task(validation=path, vocabulary="byt5", metrics="accuracy")
  assert tasks.get(name).metric_fns == [metrics.exact_match]
  assert tasks.get(tasks.pairs_task(validation=path, vocabulary="byt5")).metric_fns == []
  with pytest.raises(ValueError, match=r"unknown metric 'rouge'; choose from 'bleu'"):
    tasks.pairs_task(validation=path, vocabulary="byt5", metrics=["rouge"])
  assert metrics.exact_match(["Ja.", b"Nein."], ["Ja.", "nein."]) == {"exact_match": 50.0}


def test_same_arguments_register_once_and_a_changed_file_again(tmp_path, monkeypatch):
  path = tmp_path / "train.tsv"
  write_tsv(path)
  reads = []
  check = pair_files.check_file
  monkeypatch.setattr(pair_files, "check_file", lambda *a: reads.append(a[0]) or check(*a))
  first = tasks.pairs_task(train=str(path), vocabulary="byt5")
  assert tasks.pairs_task(train=str(path), vocabulary="byt5") == first
  assert len(reads) == 1
  assert tasks.pairs_task(train=str(path), vocabulary="byt5", prefix="p: ") != first
  write_tsv(path, [("Yes.", "Ja."), *PAIRS])
  assert tasks.pairs_task(train=str(path), vocabulary="byt5") == first
  assert len(reads) == 3
  assert examples(first)[0]["targets_pretokenized"] == b"Ja."
  assert tasks.pairs_task(train=str(path), vocabulary="byt5", name="mine") == "mine"
  assert "mine" in seqio.TaskRegistry.names()


def test_get_dataset_yields_batches(tmp_path):
  name = tasks.pairs_task(
    train=write_tsv(tmp_path / "train.tsv", PAIRS * 4),
    validation=write_tsv(tmp_path / "dev.tsv"),
    vocabulary="byt5",
    prefix="de: ",
    metrics="bleu",
  )
  batches = tasks.get_dataset(name, "train", {"inputs": 32, "targets": 32}, batch_size=2)
  batch = next(tasks.as_numpy(batches, name))
  assert batch["encoder_input_tokens"].shape == (2, 32)
  assert batch["decoder_target_tokens"].shape == (2, 32)
  assert batch["decoder_loss_weights"].sum() > 0
  sharded = tasks.get(name).source.get_dataset(
    "train", shuffle=False, shard_info=seqio.ShardInfo(index=1, num_shards=2)
  )
  assert [e["inputs"] for e in sharded.as_numpy_iterator()] == [PAIRS[1][0].encode()] * 4


def test_a_file_that_turns_bad_after_registration_is_refused_when_read(tmp_path):
  path = tmp_path / "train.tsv"
  name = tasks.pairs_task(train=write_tsv(path), vocabulary="byt5")
  path.write_bytes(b"a\tb\nno tab\n")
  with pytest.raises(Exception, match=r"train.tsv:2: expected 2 .* changed after registration"):
    examples(name)
