"""UDHR reading, on the synthetic tarball of conftest.py."""

from tasks.corpora import udhr
from tasks.corpora.udhr import Document


def test_documents_per_article_and_preamble():
  html = """<!doctype html><html data-code="nld" data-iso6393="nld" lang="nl">
    <head><title>Nederlands</title></head>
    <body><h1>Titel</h1><header><h2>Inleiding</h2><p>Een
      twee.</p></header>
    <article data-number="1"><h2>Artikel 1</h2>
      <ol><li><p>A &amp; B.</p></li><li>Eerst.<p>Dan.</p></li></ol></article>
    </body></html>"""
  declaration = udhr.parse_declaration(html)
  assert (declaration.code, declaration.tag) == ("nld", "nl")
  assert declaration.documents == (
    Document("udhr/nld/preamble", "Titel\nInleiding\nEen twee."),
    Document("udhr/nld/1", "Artikel 1\nA & B.\nEerst.\nDan."),
  )


def test_reads_merges_shared_tags_and_drops_und(udhr_tgz):
  corpus = udhr.read_udhr(udhr_tgz)
  assert list(corpus.languages) == ["de", "eo", "nl"]
  assert corpus.dropped == ("qqq",)
  assert [d.code for d in corpus.languages["nl"]] == ["nld", "nld_x"]
  nld = corpus.languages["nl"][0]
  assert [d.doc_id for d in nld.documents] == ["udhr/nld/preamble", "udhr/nld/1", "udhr/nld/2"]
  assert nld.documents[0].text == (
    "Verklaring over lampen\nInleiding\n"
    "Overwegende dat licht goed is;\n"
    "Overwegende dat donker ook mag,"
  )
  assert nld.documents[2].text == "Artikel 2\nLampen & kaarsen zijn vrij.\nEerst dit.\nDan dat."
  deu = corpus.languages["de"][0]
  assert [d.doc_id for d in deu.documents] == ["udhr/deu/preamble", "udhr/deu/1", "udhr/deu/2"]
  assert deu.documents[0].text == "Erklärung über Lampen"  # the title alone, no <header>


def test_last_document_of_each_declaration_is_validation(udhr_tgz):
  corpus = udhr.read_udhr(udhr_tgz)
  nld, nld_x = corpus.languages["nl"]
  assert [d.doc_id for d in udhr.split_documents(nld)["validation"]] == ["udhr/nld/2"]
  train = udhr.split_documents(nld)["train"]
  assert [d.doc_id for d in train] == ["udhr/nld/preamble", "udhr/nld/1"]
  assert [d.doc_id for d in udhr.split_documents(nld_x)["validation"]] == ["udhr/nld_x/1"]
  (epo,) = corpus.languages["eo"]
  assert udhr.split_documents(epo) == {"train": (), "validation": epo.documents}
