"""Vocabularies: SentencePiece training with mT5's sentinel convention, bytes, clear errors; the
`python -m tasks.vocab train` command line."""

import pytest
import seqio

from tasks import preprocessors, registry, vocab
from tasks.vocab import training
from tasks.vocab.__main__ import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  import random  # noqa: PLC0415

  rng = random.Random(0)
  lines = []
  for syllables in ("ka ne ri to mu sa", "glo brak ste vrin do", "ашу кро лин те"):
    inventory = syllables.split()
    for _ in range(800):
      lines.append(
        " ".join(
          "".join(rng.choice(inventory) for _ in range(rng.randint(1, 3)))
          for _ in range(rng.randint(3, 15))
        )
      )
  path = training.train_sentencepiece(lines, 600, tmp_path_factory.mktemp("spm"))
  return vocab.sentencepiece_vocabulary(path)


def test_sentinels_are_the_top_ids(trained):
  assert trained.vocab_size == 600
  assert trained.decode([599]) == "<extra_id_0>"
  assert trained.decode([500]) == "<extra_id_99>"
  assert trained.encode("<extra_id_0>") == [599]
  assert (trained.pad_id, trained.eos_id, trained.unk_id) == (0, 1, 2)


def test_round_trip_and_byte_fallback(trained):
  text = "kane glo ашу rito"
  assert trained.decode(trained.encode(text)) == text
  unseen = "漢字 ü"  # never in the training text: bytes, not <unk>
  ids = trained.encode(unseen)
  assert trained.unk_id not in ids and trained.decode(ids) == unseen


def test_training_errors(tmp_path):
  with pytest.raises(ValueError, match="no text"):
    training.train_sentencepiece([], 1000, tmp_path)
  with pytest.raises(ValueError, match="too small"):
    training.train_sentencepiece(["a b c"], 300, tmp_path)
  with pytest.raises(ValueError, match="could not train"):
    training.train_sentencepiece(["a b c"] * 10, 5000, tmp_path)


def test_vocabulary_must_fit_the_model(trained):
  vocab.check_fits(trained, 600)
  with pytest.raises(
    ValueError, match=r"600 ids but the model's vocab_size is 512.*vocab_size=640"
  ):
    vocab.check_fits(trained, 512)
  vocab.check_fits(vocab.byte_vocabulary(), 384)  # ByT5: 259 ids in a 384-row embedding


def test_missing_model_file_says_how_to_make_it(tmp_path):
  missing = vocab.sentencepiece_vocabulary(tmp_path / "nope.model")
  with pytest.raises(
    vocab.VocabularyNotFoundError, match="nope.model does not exist.*tasks.vocab train"
  ):
    missing.encode("x")
  builtin = vocab.builtin_vocabulary(tmp_path)
  with pytest.raises(vocab.VocabularyNotFoundError, match="python -m tasks.corpora prepare"):
    _ = builtin.vocab_size
  with pytest.raises(vocab.VocabularyNotFoundError, match="XT5_MT5_VOCAB"):
    vocab.SentencePieceFileVocabulary(
      tmp_path / "x.model", vocab.mt5_vocabulary()._how_to_get
    ).encode("x")


def test_train_from_a_mixture_with_the_cli(make_text_task, make_documents, tmp_path, capsys):
  features = {"targets": seqio.Feature(seqio.ByteVocabulary(), add_eos=True)}
  names = [
    make_text_task(
      "vocab_src",
      {"train": make_documents(200, seed=s, syllables=syl)},
      [preprocessors.clean_documents, seqio.preprocessors.tokenize],
      features,
    )
    for s, syl in ((1, "ka ne ri to mu sa"), (2, "glo brak ste vrin do"))
  ]
  registry.add_language_mixture("test_vocab_mixture", names)
  lines = training.mixture_lines("test_vocab_mixture", "train", max_lines=300, progress=False)
  assert len(lines) == 300 and any("glo" in x for x in lines) and any("ka" in x for x in lines)
  assert (
    main(
      [
        "train",
        "--mixture",
        "test_vocab_mixture",
        "--size",
        "400",
        "--out",
        str(tmp_path),
        "--max_sentences",
        "400",
      ]
    )
    == 0
  )
  assert "(400 ids incl. 100 extra ids)" in capsys.readouterr().out
  assert vocab.sentencepiece_vocabulary(tmp_path / "sentencepiece.model").vocab_size == 400
  assert (
    main(["train", "--mixture", "test_vocab_mixtur", "--size", "400", "--out", str(tmp_path)]) == 2
  )
  assert "did you mean 'test_vocab_mixture'" in capsys.readouterr().err.lower()
