"""seqio metric functions: sacrebleu's corpus BLEU and chrF (translation), exact match."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import sacrebleu


def bleu_tokenizer(language: str) -> str:
  """sacrebleu's standard tokenizer for the target language (WMT practice)."""
  base = language.split("-")[0]
  if base == "zh":
    return "zh"
  if base == "ja":
    return "char"  # no spaces between words; 'ja-mecab' would need MeCab
  return "13a"


def _as_str(texts: Sequence) -> list[str]:
  return [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]


def bleu(
  targets: Sequence[str], predictions: Sequence[str], tokenize: str = "13a"
) -> dict[str, float]:
  """Corpus BLEU (0–100), one reference per example."""
  score = sacrebleu.corpus_bleu(_as_str(predictions), [_as_str(targets)], tokenize=tokenize)
  return {"bleu": score.score}


def chrf(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Corpus chrF (0–100; character n-grams, robust for morphology-rich and unspaced scripts)."""
  return {"chrf": sacrebleu.corpus_chrf(_as_str(predictions), [_as_str(targets)]).score}


def translation_metrics(target_language: str) -> list:
  """BLEU with the target language's tokenizer, and chrF."""
  return [functools.partial(bleu, tokenize=bleu_tokenizer(target_language)), chrf]


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Sequence accuracy (0–100): the share of predictions equal to their target (classification,
  short answers). Named `exact_match`, as the teacher-forced eval already reports a per-token
  `accuracy` under the task's name."""
  pairs = list(zip(_as_str(targets), _as_str(predictions), strict=True))
  return {"exact_match": 100.0 * sum(t == p for t, p in pairs) / len(pairs) if pairs else 0.0}
