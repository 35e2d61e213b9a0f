"""Locale normalisation, split names and the static language lists."""

import pytest

from tasks.corpora import languages
from tasks.corpora.languages import (
  GNOME_LOCALES,
  GNOME_LOCALES_WITHOUT_VALIDATION,
  MONOLINGUAL_LANGUAGES,
  parse_split_name,
  split_name,
  to_bcp47,
)


@pytest.mark.parametrize(
  "locale, tag",
  [
    ("C", "en"),
    ("de", "de"),
    ("pt_BR", "pt-BR"),
    ("zh_CN", "zh-CN"),
    ("sr@latin", "sr-Latn"),
    ("sr", "sr"),
    ("de_DE.UTF-8", "de-DE"),
  ],
)
def test_to_bcp47(locale, tag):
  assert to_bcp47(locale) == tag


def test_to_bcp47_rejects_unknown_modifier():
  with pytest.raises(ValueError, match="@euro"):
    to_bcp47("de@euro")


def test_split_name_is_bijective_over_every_language():
  names = {split_name(tag, split) for tag in MONOLINGUAL_LANGUAGES for split in languages.SPLITS}
  assert len(names) == 2 * len(MONOLINGUAL_LANGUAGES)
  for tag in MONOLINGUAL_LANGUAGES:
    for split in languages.SPLITS:
      name = split_name(tag, split)
      assert name.replace("_", "").isalnum()  # \w only: valid in TFDS file names and specs
      assert parse_split_name(name) == (tag, split)
  assert split_name("pt-BR", "train") == "train_pt_BR"
  assert split_name("sr-Latn", "validation") == "validation_sr_Latn"


def test_split_name_rejects_bad_input():
  with pytest.raises(ValueError):
    split_name("pt_BR", "train")
  with pytest.raises(ValueError):
    split_name("de", "test")
  with pytest.raises(ValueError):
    parse_split_name("test_de")


def test_static_lists_are_consistent():
  assert len(GNOME_LOCALES) == 41 and list(GNOME_LOCALES) == sorted(set(GNOME_LOCALES))
  assert list(MONOLINGUAL_LANGUAGES) == sorted(set(MONOLINGUAL_LANGUAGES))
  assert set(GNOME_LOCALES) | {"en"} <= set(MONOLINGUAL_LANGUAGES)
  assert set(GNOME_LOCALES_WITHOUT_VALIDATION) <= set(GNOME_LOCALES)
  assert {"pt-BR", "zh-CN", "sr-Latn"} <= set(GNOME_LOCALES)
  assert "und" not in MONOLINGUAL_LANGUAGES
