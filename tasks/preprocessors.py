"""Text-level seqio preprocessors: cleaning raw documents, translation prompts, task prefixes.

The token-level objectives (span corruption, prefix LM, LM) live in `tasks.span_corruption`.
"""

from __future__ import annotations

import tensorflow as tf

# English names used in the prompts, T5-style ("translate English to German: ...").
LANGUAGE_NAMES = {
  "as": "Assamese",
  "ca": "Catalan",
  "cs": "Czech",
  "da": "Danish",
  "de": "German",
  "el": "Greek",
  "en": "English",
  "es": "Spanish",
  "et": "Estonian",
  "fa": "Persian",
  "fi": "Finnish",
  "fr": "French",
  "gl": "Galician",
  "gu": "Gujarati",
  "he": "Hebrew",
  "hi": "Hindi",
  "hr": "Croatian",
  "hu": "Hungarian",
  "id": "Indonesian",
  "it": "Italian",
  "ja": "Japanese",
  "kk": "Kazakh",
  "kn": "Kannada",
  "ko": "Korean",
  "lt": "Lithuanian",
  "lv": "Latvian",
  "mr": "Marathi",
  "nl": "Dutch",
  "pa": "Punjabi",
  "pl": "Polish",
  "pt": "Portuguese",
  "pt-BR": "Brazilian Portuguese",
  "ro": "Romanian",
  "ru": "Russian",
  "sl": "Slovenian",
  "sr": "Serbian",
  "sr-Latn": "Serbian (Latin script)",
  "sv": "Swedish",
  "ta": "Tamil",
  "te": "Telugu",
  "tr": "Turkish",
  "uk": "Ukrainian",
  "vi": "Vietnamese",
  "zh": "Chinese",
  "zh-CN": "Simplified Chinese",
}


def language_name(tag: str) -> str:
  try:
    return LANGUAGE_NAMES[tag]
  except KeyError:
    raise KeyError(
      f"no English name for language tag {tag!r}; add it to tasks.preprocessors.LANGUAGE_NAMES"
    ) from None


def repair_utf8(text: tf.Tensor) -> tf.Tensor:
  """Invalid UTF-8 becomes U+FFFD, so bytes >= 0xF5 never reach a byte vocabulary (ByT5's
  sentinels are those bytes) and SentencePiece never sees broken text."""
  return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")


def clean_documents(dataset: tf.data.Dataset, text_key: str = "text") -> tf.data.Dataset:
  """Repairs UTF-8 and drops empty or whitespace-only documents; keeps only the text, as
  `targets` (the raw input of the unsupervised objectives)."""
  dataset = dataset.map(
    lambda x: {"targets": tf.strings.strip(repair_utf8(x[text_key]))},
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  return dataset.filter(lambda x: tf.strings.length(x["targets"]) > 0)


def translate(
  dataset: tf.data.Dataset,
  source_language: str,
  target_language: str,
  source_key: str | None = None,
  target_key: str | None = None,
) -> tf.data.Dataset:
  """`{src, tgt}` pairs -> `inputs: "translate <Src> to <Tgt>: <src>"`, `targets: <tgt>`.

  Pairs with an empty side are dropped (a model can't learn to translate nothing). The keys
  default to the language tags, as in TFDS's `Translation` feature.
  """
  source_key = source_key or source_language
  target_key = target_key or target_language
  prefix = f"translate {language_name(source_language)} to {language_name(target_language)}: "

  def to_prompt(x):
    source = tf.strings.strip(repair_utf8(x[source_key]))
    target = tf.strings.strip(repair_utf8(x[target_key]))
    return {"inputs": tf.strings.join([prefix, source]), "targets": target, "_source": source}

  dataset = dataset.map(to_prompt, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.filter(
    lambda x: tf.logical_and(
      tf.strings.length(x["_source"]) > 0, tf.strings.length(x["targets"]) > 0
    )
  )
  return dataset.map(lambda x: {"inputs": x["inputs"], "targets": x["targets"]})


def add_prefix(dataset: tf.data.Dataset, prefix: str, key: str = "inputs") -> tf.data.Dataset:
  """T5's task prefix: `prefix` prepended to each example's `key` text ("summarize: ...")."""
  if not prefix:
    return dataset
  return dataset.map(
    lambda x: {**x, key: tf.strings.join([prefix, x[key]])}, num_parallel_calls=tf.data.AUTOTUNE
  )
