"""Translation metrics (tasks/metrics.py): sacrebleu's BLEU and chrF as seqio metric functions."""

import pytest
import sacrebleu

from tasks import metrics


def test_perfect_and_disjoint_predictions():
  refs = ["The cat sat on the mat.", "Open the settings window."]
  assert metrics.bleu(refs, refs)["bleu"] == pytest.approx(100.0)
  assert metrics.chrf(refs, refs)["chrf"] == pytest.approx(100.0)
  assert metrics.bleu(refs, ["xyzzy", "plugh"])["bleu"] == pytest.approx(0.0)
  assert metrics.chrf(refs, ["xyzzy", "plugh"])["chrf"] < 5


def test_bytes_from_the_evaluator_are_decoded():
  ref = "Klicken Sie auf Einstellungen , um das Fenster zu öffnen ."
  assert metrics.bleu([ref.encode()], [ref])["bleu"] == pytest.approx(100.0)


def test_target_language_picks_the_tokenizer():
  assert [metrics.bleu_tokenizer(t) for t in ("de", "zh-CN", "ja", "pt-BR")] == [
    "13a",
    "zh",
    "char",
    "13a",
  ]
  refs, hyps = ["我喜欢这个软件。"], ["我喜欢软件。"]
  bleu_fn, chrf_fn = metrics.translation_metrics("zh-CN")
  # Unspaced Chinese is one "word" under 13a (BLEU 0); the zh tokenizer splits characters.
  assert metrics.bleu(refs, hyps)["bleu"] == 0.0
  assert (
    bleu_fn(refs, hyps)["bleu"]
    == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score)
    and bleu_fn(refs, hyps)["bleu"] > 10
  )
  assert chrf_fn(refs, hyps)["chrf"] > 20
