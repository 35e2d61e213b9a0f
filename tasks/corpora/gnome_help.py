"""GNOME Help (Debian `gnome-user-docs`): aligned English↔X text blocks, page by page.

The package holds `usr/share/help/<locale>/gnome-help/*.page` (Mallard XML), `C` being the English
source. itstool generates each translated page from the English one, copying the structure and
replacing the text of translatable blocks (an untranslated block keeps its English text). So the
blocks of a page align by their structural path: each step names the element, its position among
its same-named siblings and their number, e.g. `section[1/2]/steps[0/1]/item[2/4]/p[0/1]`. Where a
translation's structure differs (say, made from an older page with one item fewer), the paths
under the differing element no longer match and those blocks are dropped, while the rest of the
page still aligns; in 43.0-2 every page has the same structure in every locale.

Blocks are the leaf text elements `title`, `subtitle`, `desc` and `p` (wherever they sit: in
`item`, `td`, `note`, `info`, ...). Whole subtrees of non-prose or metadata (`code`, `screen`,
`credit`, `license`, `comment`, `revision`, block `link`s, XInclude) are skipped. Inside a block,
inline markup (`<gui>`, `<key>`, `<link>`, `<code>`, ...) contributes its text; key and menu
sequences are rendered as Mallard displays them (`Ctrl+C`, `Settings ▸ Sound`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

from tasks.corpora import fetch
from tasks.corpora.languages import to_bcp47

TEXT_BLOCKS = frozenset({"title", "subtitle", "desc", "p"})
SKIPPED = frozenset(
  {"code", "screen", "credit", "license", "comment", "revision", "link", "include"}
)
_PAGE_PATH = re.compile(r"^(?:\./)?usr/share/help/([^/]+)/gnome-help/([^/]+)\.page$")
_XML_SPACE = re.compile(r"[ \t\r\n]+")  # XML whitespace only: keep no-break spaces (French ':')
_VALIDATION_BUCKETS = 10  # one page in ten, by a stable hash of its id


@dataclasses.dataclass(frozen=True)
class Block:
  path: str  # structural path inside the page, e.g. "section[1/2]/steps[0/1]/item[2/4]/p[0/1]"
  text: str  # whitespace-normalised; may be empty (e.g. a <p> holding only an image)


@dataclasses.dataclass(frozen=True)
class Pair:
  page: str
  index: int  # position of the block among the English page's blocks
  en: str
  target: str


@dataclasses.dataclass(frozen=True)
class AlignmentStats:
  """What happened to the English blocks of one locale."""

  pairs: int = 0  # kept
  untranslated: int = 0  # target text equals the English
  empty: int = 0  # either side empty
  unmatched: int = 0  # no block at the same structural path in the translated page
  missing_pages: int = 0  # English pages with no translated page at all

  def __add__(self, other: AlignmentStats) -> AlignmentStats:
    mine, theirs = dataclasses.astuple(self), dataclasses.astuple(other)
    return AlignmentStats(*(a + b for a, b in zip(mine, theirs)))


@dataclasses.dataclass(frozen=True)
class GnomeHelp:
  """Blocks of every page, keyed by BCP-47 tag (`en` for `C`) then page id."""

  pages: Mapping[str, Mapping[str, tuple[Block, ...]]]

  @property
  def target_tags(self) -> tuple[str, ...]:
    return tuple(sorted(tag for tag in self.pages if tag != "en"))


def is_validation_page(page: str) -> bool:
  """The held-out page rule, the same for every language: a stable hash of the page id."""
  return int(hashlib.sha256(page.encode("utf-8")).hexdigest()[:8], 16) % _VALIDATION_BUCKETS == 0


def page_split(page: str) -> str:
  return "validation" if is_validation_page(page) else "train"


def read_ar(path: Path | str) -> dict[str, bytes]:
  """The members of an `ar` archive (the container of a .deb): a magic line, then per member
  a 60-byte text header (name, dates, ids, mode, size) and the data, padded to even length."""
  data = Path(path).read_bytes()
  if not data.startswith(b"!<arch>\n"):
    raise ValueError(f"{path} is not an ar archive (.deb)")
  members, offset = {}, 8
  while offset + 60 <= len(data):
    header = data[offset : offset + 60]
    if header[58:60] != b"`\n":
      raise ValueError(f"{path}: corrupt ar member header at byte {offset}")
    name = header[:16].decode("ascii").strip().rstrip("/")  # GNU ar ends names with '/'
    size = int(header[48:58].decode("ascii").strip())
    members[name] = data[offset + 60 : offset + 60 + size]
    offset += 60 + size + (size % 2)
  return members


def _data_tar(deb_path: Path | str) -> bytes:
  members = read_ar(deb_path)
  for name in ("data.tar.xz", "data.tar.gz", "data.tar.bz2", "data.tar"):
    if name in members:
      return members[name]
  raise ValueError(f"{deb_path} has no data.tar member (members: {', '.join(members)})")


def _local(tag: str) -> str:
  return tag.rsplit("}", 1)[-1]


def _inline_text(element: ET.Element) -> str:
  """The text of an element and its inline markup, as Mallard would display it."""
  tag = _local(element.tag)
  children = list(element)
  if tag in ("keyseq", "guiseq") and children:
    if tag == "guiseq":
      sep = " ▸ "
    else:  # type="combo" (the default) is pressed together, "sequence" one after another
      sep = " " if element.get("type") == "sequence" else "+"
    return sep.join(_inline_text(child).strip() for child in children)
  parts = [element.text or ""]
  for child in children:
    parts.append(_inline_text(child))
    parts.append(child.tail or "")
  return "".join(parts)


def extract_blocks(page_xml: bytes) -> tuple[Block, ...]:
  """The text blocks of one Mallard page, in document order, with their structural paths."""
  root = ET.fromstring(page_xml)
  blocks: list[Block] = []

  def walk(element: ET.Element, path: str) -> None:
    of = Counter(_local(child.tag) for child in element)
    seen: Counter[str] = Counter()
    for child in element:
      tag = _local(child.tag)
      step = f"{tag}[{seen[tag]}/{of[tag]}]"
      child_path = f"{path}/{step}" if path else step
      seen[tag] += 1
      if tag in SKIPPED:
        continue
      if tag in TEXT_BLOCKS:
        blocks.append(Block(child_path, _XML_SPACE.sub(" ", _inline_text(child)).strip()))
      else:
        walk(child, child_path)

  walk(root, "")
  return tuple(blocks)


def read_gnome_help(deb_path: Path | str) -> GnomeHelp:
  """Reads every gnome-help page of every locale from the .deb, in one pass."""
  pages: dict[str, dict[str, tuple[Block, ...]]] = {}
  data_tar = io.BytesIO(_data_tar(deb_path))
  with tarfile.open(fileobj=data_tar, mode="r|*") as tar:  # stream: one sequential pass
    for member in tar:
      match = _PAGE_PATH.match(member.name)
      if not match or not member.isfile():  # figures/, symlinks, other manuals
        continue
      locale, page = match.groups()
      xml = tar.extractfile(member).read()
      pages.setdefault(to_bcp47(locale), {})[page] = extract_blocks(xml)
  if "en" not in pages:
    raise ValueError(f"{deb_path} has no English (C) gnome-help pages")
  return GnomeHelp({tag: dict(sorted(by_page.items())) for tag, by_page in sorted(pages.items())})


# Parsed once per process per file version (the builders of every config share it).
load_gnome_help = fetch.read_once(read_gnome_help)


def align_page(
  page: str, en: tuple[Block, ...], target: tuple[Block, ...]
) -> tuple[list[Pair], AlignmentStats]:
  """Pairs the blocks of one page by structural path; drops empty and untranslated pairs."""
  by_path = {block.path: block.text for block in target}
  pairs: list[Pair] = []
  untranslated = empty = unmatched = 0
  for index, block in enumerate(en):
    translated = by_path.get(block.path)
    if translated is None:
      unmatched += 1
    elif not block.text or not translated:
      empty += 1
    elif translated == block.text:
      untranslated += 1
    else:
      pairs.append(Pair(page, index, block.text, translated))
  return pairs, AlignmentStats(len(pairs), untranslated, empty, unmatched)


def parallel_pairs(help_: GnomeHelp, tag: str) -> tuple[list[Pair], AlignmentStats]:
  """All English→`tag` pairs, page by page in page-id order, and what was dropped."""
  if tag not in help_.pages or tag == "en":
    have = ", ".join(help_.target_tags)
    raise KeyError(f"no translated gnome-help pages for {tag!r} (have: {have})")
  translated = help_.pages[tag]
  pairs: list[Pair] = []
  stats = AlignmentStats()
  for page, en_blocks in help_.pages["en"].items():
    if page not in translated:
      stats += AlignmentStats(unmatched=len(en_blocks), missing_pages=1)
      continue
    page_pairs, page_stats = align_page(page, en_blocks, translated[page])
    pairs += page_pairs
    stats += page_stats
  return pairs, stats


def page_documents(help_: GnomeHelp, tag: str) -> Iterator[tuple[str, str]]:
  """(page, text) per page in language `tag`: its translated blocks joined with newlines.

  For `en` that is every non-empty English block; for a translation only the blocks that differ
  from the English, so untranslated fallbacks never count as text in that language. Pages with
  no such block are skipped.
  """
  if tag == "en":
    for page, blocks in help_.pages["en"].items():
      lines = [block.text for block in blocks if block.text]
      if lines:
        yield page, "\n".join(lines)
    return
  pairs, _ = parallel_pairs(help_, tag)
  by_page: dict[str, list[str]] = {}
  for pair in pairs:
    by_page.setdefault(pair.page, []).append(pair.target)
  for page, lines in by_page.items():
    yield page, "\n".join(lines)
