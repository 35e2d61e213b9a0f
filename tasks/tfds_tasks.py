"""The mT5 / ByT5 papers' real-world tasks over TFDS datasets (prepared by you; nothing downloads
at run time here).

  mc4.{lang}, mc4                     `c4/multilingual` span corruption, mT5 vocabulary, n^0.3
  byt5_mc4.{lang}, byt5_mc4           the same in bytes, mean noise span 20 (ByT5)
  mc4_unimax, byt5_mc4_unimax         the same languages sampled by UniMax (MC4_UNIMAX_BUDGET)
  {wmt}_translate_{src}_{tgt}         WMT14 en-de/en-fr, WMT16 en-ro, WMT19 X-en, both directions,
  byt5_{wmt}_translate_{src}_{tgt}    BLEU + chrF (sacrebleu)

`{lang}` is the mC4 language with `-` as `_` (e.g. `mc4.zh_Latn`). The mT5 vocabulary file is
looked up at $XT5_MT5_VOCAB or `<data dir>/vocab/mc4.250000.100extra/sentencepiece.model`.
"""

from __future__ import annotations

import functools

import seqio
from tensorflow_datasets.text import c4

from tasks import language_sampling, metrics, parts, registry, span_corruption, vocab

MC4_TFDS = "c4/multilingual:3.1.0"
MC4_LANGUAGES = tuple(c4.MC4_LANGUAGES)  # TFDS's own list of the 107 mC4 splits
# UniMax for mc4 mixtures: seqio knows each language's documents, not characters, so the budget
# counts documents: mT5's run (1M steps × 1024 sequences) taking one document per sequence, with
# at most one epoch of any language. Pass another budget for another run or page length.
MC4_UNIMAX_BUDGET = 2**30
MC4_UNIMAX_MAX_EPOCHS = 1.0
# (TFDS dataset, its "xx-en" configs) — the T5 paper's WMT14/16 pairs and WMT19's news task.
WMT_SPLITS = {
  "wmt14_translate": ("train", "validation", "test"),
  "wmt16_translate": ("train", "validation", "test"),
  "wmt19_translate": ("train", "validation"),
}
WMT_CONFIGS = {
  "wmt14_translate": ("de-en", "fr-en"),
  "wmt16_translate": ("ro-en",),
  "wmt19_translate": ("cs-en", "de-en", "fi-en", "gu-en", "kk-en", "lt-en", "ru-en", "zh-en"),
}


def mc4_source(lang: str) -> seqio.TfdsDataSource:
  return seqio.TfdsDataSource(MC4_TFDS, splits={"train": lang, "validation": f"{lang}-validation"})


def register() -> None:
  mt5 = parts.output_features(vocab.mt5_vocabulary())
  byte = parts.output_features(vocab.byte_vocabulary())
  for prefix, features, mean_span in (
    ("mc4", mt5, 3.0),
    ("byt5_mc4", byte, span_corruption.BYT5_MEAN_NOISE_SPAN),
  ):
    objective = functools.partial(span_corruption.span_corruption, mean_noise_span_length=mean_span)
    names = []
    for lang in MC4_LANGUAGES:
      names.append(f"{prefix}.{parts.task_suffix(lang)}")
      seqio.TaskRegistry.add(
        names[-1],
        source=mc4_source(lang),
        preprocessors=parts.unsupervised_preprocessors(objective),
        output_features=features,
        metric_fns=[],
      )
    registry.add_language_mixture(prefix, names)
    registry.add_language_mixture(
      f"{prefix}_unimax", names, language_sampling.UniMax(MC4_UNIMAX_BUDGET, MC4_UNIMAX_MAX_EPOCHS)
    )

  for dataset, configs in WMT_CONFIGS.items():
    for config in configs:
      x, en = config.split("-")
      source = seqio.TfdsDataSource(f"{dataset}/{config}:1.0.0", splits=WMT_SPLITS[dataset])
      for src, tgt in ((x, en), (en, x)):
        for prefix, features in (("", mt5), ("byt5_", byte)):
          seqio.TaskRegistry.add(
            f"{prefix}{dataset}_{src}_{tgt}",
            source=source,
            preprocessors=parts.translation_preprocessors(src, tgt),
            output_features=features,
            metric_fns=metrics.translation_metrics(tgt),
          )
