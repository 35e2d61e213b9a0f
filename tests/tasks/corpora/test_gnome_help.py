"""GNOME Help reading and alignment, on the synthetic .deb of conftest.py."""

import pytest

from tasks.corpora import gnome_help
from tasks.corpora.gnome_help import AlignmentStats, Pair

BLINK_DE = [
  Pair("lamp-blink", 0, "Make the lamp blink.", "Die Lampe blinken lassen."),
  Pair("lamp-blink", 1, "Blinking lamps", "Blinkende Lampen"),
  Pair(
    "lamp-blink",
    2,
    "Press Ctrl+B to open the Lamp panel.",
    "Drücken Sie Strg+B, um die Leiste Lampe zu öffnen.",
  ),
  Pair("lamp-blink", 3, "Choose Settings ▸ Lamp.", "Wählen Sie Einstellungen ▸ Lampe."),
  Pair(
    "lamp-blink",
    4,
    "Run lamp --blink, then read the power page.",
    "Führen Sie lamp --blink aus und lesen Sie dann die Seite über Strom.",
  ),
]
POWER_DE = [
  Pair("lamp-power", 0, "Save power with the lamp.", "Mit der Lampe Strom sparen."),
  Pair("lamp-power", 1, "Power use", "Stromverbrauch"),
  Pair(
    "lamp-power",
    2,
    "The lamp uses less power when it is dim.",
    "Die Lampe braucht weniger Strom, wenn sie gedimmt ist.",
  ),
  Pair(
    "lamp-power",
    3,
    "Turn the lamp off when you leave the room.",
    "Schalten Sie die Lampe aus, wenn Sie den Raum verlassen.",
  ),
]
# The de settings page lacks the second section's second paragraph: that section's two
# paragraphs cannot be placed, everything else still aligns.
SETTINGS_DE = [
  Pair(
    "lamp-settings",
    0,
    "Where the lamp keeps its settings.",
    "Wo die Lampe ihre Einstellungen speichert.",
  ),
  Pair("lamp-settings", 1, "Lamp settings", "Lampeneinstellungen"),
  Pair("lamp-settings", 2, "Files", "Dateien"),
  Pair(
    "lamp-settings",
    3,
    "All settings are kept in one file.",
    "Alle Einstellungen liegen in einer Datei.",
  ),
  Pair("lamp-settings", 4, "Colour", "Farbe"),
  Pair("lamp-settings", 5, "The colour of the light.", "Die Farbe des Lichts."),
  Pair("lamp-settings", 6, "Resetting", "Zurücksetzen"),
]


@pytest.fixture
def help_(gnome_deb):
  return gnome_help.read_gnome_help(gnome_deb)


def test_ar_members(gnome_deb, tmp_path):
  members = gnome_help.read_ar(gnome_deb)
  assert list(members) == ["debian-binary", "control.tar.xz", "data.tar.xz"]
  assert members["debian-binary"] == b"2.0\n"
  (tmp_path / "not.deb").write_bytes(b"PK\x03\x04")
  with pytest.raises(ValueError, match="not an ar archive"):
    gnome_help.read_ar(tmp_path / "not.deb")


def test_reads_gnome_help_pages_only_with_bcp47_keys(help_):
  assert sorted(help_.pages) == ["de", "en", "pt-BR"]
  assert help_.target_tags == ("de", "pt-BR")
  # Pages of the gnome-help manual only (not system-admin-guide), sorted.
  assert list(help_.pages["en"]) == ["lamp-blink", "lamp-power", "lamp-settings"]
  assert list(help_.pages["pt-BR"]) == ["lamp-blink", "lamp-power"]


def test_blocks_skip_code_credit_comment_and_render_inline_markup(help_):
  texts = [block.text for block in help_.pages["en"]["lamp-blink"]]
  assert texts == [
    "Make the lamp blink.",
    "Blinking lamps",
    "Press Ctrl+B to open the Lamp panel.",
    "Choose Settings ▸ Lamp.",
    "Run lamp --blink, then read the power page.",  # inline <code> and <link> keep their text
    "Wattage",
    "",  # a <p> holding only an image
  ]
  paths = [block.path for block in help_.pages["en"]["lamp-settings"]]
  assert paths[4] == "section[0/2]/table[0/1]/tr[0/1]/td[0/2]/p[0/1]"


def test_pairs_de_exact(help_):
  pairs, stats = gnome_help.parallel_pairs(help_, "de")
  assert pairs == BLINK_DE + POWER_DE + SETTINGS_DE
  # "Wattage" is left in English (dropped), the image-only <p> is empty on both sides.
  assert stats == AlignmentStats(pairs=16, untranslated=1, empty=1, unmatched=2, missing_pages=0)


def test_pairs_pt_br_drop_untranslated_and_count_missing_page(help_):
  pairs, stats = gnome_help.parallel_pairs(help_, "pt-BR")
  assert [(p.page, p.index, p.target) for p in pairs] == [
    ("lamp-blink", 0, "Faça a lâmpada piscar."),
    ("lamp-blink", 1, "Lâmpadas piscando"),
    ("lamp-power", 0, "Economize energia com a lâmpada."),
    ("lamp-power", 1, "Consumo de energia"),
    ("lamp-power", 3, "Desligue a lâmpada ao sair da sala."),
  ]
  assert stats == AlignmentStats(pairs=5, untranslated=5, empty=1, unmatched=9, missing_pages=1)
  with pytest.raises(KeyError, match="de, pt-BR"):
    gnome_help.parallel_pairs(help_, "fr")


def test_page_split_is_a_function_of_the_page_only(help_):
  assert [gnome_help.page_split(p) for p in ("lamp-blink", "lamp-power", "lamp-settings")] == [
    "train",
    "validation",
    "train",
  ]
  for tag in help_.target_tags:
    pairs, _ = gnome_help.parallel_pairs(help_, tag)
    held_out = {p.page for p in pairs if gnome_help.page_split(p.page) == "validation"}
    assert held_out == {"lamp-power"}
  # About one page in ten is held out.
  held_out = sum(gnome_help.is_validation_page(f"page-{i}") for i in range(2000))
  assert 150 < held_out < 250


def test_page_documents_hold_only_translated_blocks(help_):
  assert dict(gnome_help.page_documents(help_, "pt-BR")) == {
    "lamp-blink": "Faça a lâmpada piscar.\nLâmpadas piscando",
    "lamp-power": "Economize energia com a lâmpada.\nConsumo de energia\n"
    "Desligue a lâmpada ao sair da sala.",
  }
  english = dict(gnome_help.page_documents(help_, "en"))
  assert english["lamp-power"] == (
    "Save power with the lamp.\nPower use\n"
    "The lamp uses less power when it is dim.\n"
    "Turn the lamp off when you leave the room."
  )
  assert english["lamp-blink"].endswith("\nWattage")  # English keeps every non-empty block


def test_load_is_cached_per_file(gnome_deb):
  assert gnome_help.load_gnome_help(gnome_deb) is gnome_help.load_gnome_help(gnome_deb)
