"""Tasks and mixtures on the built-in corpora (GNOME Help + UDHR; `tasks.corpora prepare`).

Names (language tags with `-` as `_`, since seqio names allow no hyphens):
  mono.{lang}, byt5_mono.{lang}              span corruption (subword span 3 / bytes span 20)
  mono_lm.{lang}, mono_prefix_lm.{lang}      LM and prefix-LM objectives for decoder-only models
  mono, byt5_mono, mono_lm, mono_prefix_lm   every language, sampled ∝ n^0.3 (mT5); these are
                                             Tasks over one language-sampled stream
                                             (`tasks.language_sampling`), not seqio Mixtures
  mono_unimax, byt5_mono_unimax              the same sampled by UniMax at UNIMAX_BUDGETS
  translate_en_{x}, translate_{x}_en         GNOME Help en<->X (41 X), BLEU + chrF
  byt5_translate_en_{x}, byt5_translate_{x}_en
  translate_en_x, byt5_translate_en_x        every en->X pair, examples-proportional
  multitask, byt5_multitask                  mono + translate en->de/fr/es (the quickstart's)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks import corpora, language_sampling, metrics, parts, registry, span_corruption, vocab

# The quickstart's translation pairs; each gets the same share as the whole span-corruption mix.
MULTITASK_TARGETS = ("de", "fr", "es")
# Characters per token of the built-in vocabularies on the built-in corpus (3 train documents of
# each language, averaged over languages): the 8192-piece SentencePiece model ~2.0; bytes ~0.8,
# UTF-8 taking 2-3 bytes a character outside Latin script.
CHARS_PER_TOKEN = {"mono": 2.0, "byt5_mono": 0.8, "mono_lm": 2.0, "mono_prefix_lm": 2.0}
# UniMax's default character budgets: what the quickstart runs read, steps × batch × length ×
# chars per token (configs/experiments/quickstart*.gin: 1400 × 16 × 128 subword tokens ≈ 5.7M
# characters, ~43% of the 13.4M-character corpus; 450 × 12 × 384 bytes ≈ 1.7M), with at most one
# epoch of any language.
_QUICKSTART_RUNS = {"subword": (1400, 16, 128), "byte": (450, 12, 384)}  # steps, batch, length
UNIMAX_BUDGETS = {
  objective: language_sampling.character_budget(
    *_QUICKSTART_RUNS["byte" if objective == "byt5_mono" else "subword"], chars
  )
  for objective, chars in CHARS_PER_TOKEN.items()
}
UNIMAX_MAX_EPOCHS = 1.0


class BuiltinTfdsSource(seqio.TfdsDataSource):
  """A TFDS source over the prepared built-in corpora; if they are missing, the error says
  `python -m tasks.corpora prepare` instead of TFDS's dataset-not-found."""

  def __init__(self, tfds_name: str, data_dir=None, splits=None):
    super().__init__(tfds_name, tfds_data_dir=str(corpora.tfds_data_dir(data_dir)), splits=splits)
    self._data_dir = data_dir

  def get_dataset(self, *args, **kwargs):
    corpora.require_prepared(self.tfds_dataset.name, self._data_dir)
    return super().get_dataset(*args, **kwargs)

  def list_shards(self, split):  # seqio asks this first when a host reads its shard
    corpora.require_prepared(self.tfds_dataset.name, self._data_dir)
    return super().list_shards(split)

  def num_input_examples(self, split):
    corpora.require_prepared(self.tfds_dataset.name, self._data_dir)
    return super().num_input_examples(split)


class SampledMonolingualSource(seqio.DataSource):
  """Every language of `xt5_monolingual` in one stream.

  train: endless; language l's share of the characters is ∝ n_l ** alpha (n_l: its train
  documents), or UniMax's share of its train characters (`sampling` a
  `language_sampling.UniMax` whose budget counts characters), see `tasks.language_sampling`.
  validation: every language's documents, once.
  The train split reports no size, so seqio never tries to cache the endless stream.
  """

  def __init__(
    self,
    sampling: language_sampling.Sampling = registry.DEFAULT_ALPHA,
    data_dir=None,
    languages: Sequence[str] = corpora.MONOLINGUAL_LANGUAGES,
  ):
    super().__init__(
      splits=("train", "validation"), caching_permitted=False, performs_internal_shuffling=True
    )
    language_sampling.check_sampling(sampling)
    self.sampling, self._data_dir, self.languages = sampling, data_dir, tuple(languages)
    # n ** alpha's exponent (None under UniMax)
    self.alpha = None if isinstance(sampling, language_sampling.UniMax) else sampling
    self._characters: dict[str, dict[str, int]] = {}

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def _builder(self) -> tfds.core.DatasetBuilder:
    corpora.require_prepared(corpora.MONOLINGUAL, self._data_dir)
    return tfds.builder(corpora.MONOLINGUAL, data_dir=str(corpora.tfds_data_dir(self._data_dir)))

  def documents(self, split: str) -> tf.data.Dataset:
    """Every language's documents of `split`, in file order (no sampling)."""
    return self._builder().as_dataset(
      split="+".join(corpora.split_name(tag, split) for tag in self.languages),
      shuffle_files=False,
      read_config=tfds.ReadConfig(try_autocache=False),
    )

  def sizes(self, split: str) -> dict[str, int]:
    """Documents per language."""
    splits = self._builder().info.splits
    return {tag: splits[corpora.split_name(tag, split)].num_examples for tag in self.languages}

  def characters(self, split: str) -> dict[str, int]:
    """Characters (UTF-8 code points) per language; one pass over the split, then cached."""
    if split not in self._characters:
      totals = dict.fromkeys(self.languages, 0)
      lengths = self.documents(split).map(
        lambda x: (x["lang"], tf.strings.length(x["text"], unit="UTF8_CHAR"))
      )
      for lang, length in lengths.batch(4096).as_numpy_iterator():
        for tag, n in zip(lang, length):
          totals[tag.decode()] += int(n)
      self._characters[split] = totals
    return self._characters[split]

  def rates(self, split: str = "train") -> dict[str, float]:
    """Each language's share of the sampled characters."""
    return language_sampling.sampling_rates(
      self.sampling, self.sizes(split), self.characters(split)
    )

  def num_input_examples(self, split: str) -> int | None:
    return None if split == "train" else sum(self.sizes(split).values())

  def get_dataset(
    self,
    split: str = "train",
    shuffle: bool = True,
    seed: int | None = None,
    shard_info: seqio.ShardInfo | None = None,
    *,
    sequence_length=None,
    use_cached: bool = False,
    num_epochs: int | None = 1,
  ) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # train is endless; seqio repeats the rest
    documents = self.documents(split)
    if shard_info:
      documents = documents.shard(shard_info.num_shards, shard_info.index)
    if split == "train":
      return language_sampling.sample_languages(
        documents, self.sizes(split), self.sampling, seed, shuffle, mass=self.characters(split)
      )
    if shuffle:
      documents = documents.shuffle(sum(self.sizes(split).values()), seed=seed)
    return documents


def monolingual_source(tag: str) -> BuiltinTfdsSource:
  return BuiltinTfdsSource(
    f"{corpora.MONOLINGUAL}:1.0.0",
    splits={split: corpora.split_name(tag, split) for split in ("train", "validation")},
  )


def gnome_help_source(tag: str) -> BuiltinTfdsSource:
  # A few locales translated nothing on the held-out pages: they have no validation split.
  splits = ["train"] if tag in corpora.GNOME_LOCALES_WITHOUT_VALIDATION else ["train", "validation"]
  return BuiltinTfdsSource(f"{corpora.GNOME_HELP}/en-{tag}:1.0.0", splits=splits)


def _add(name: str, source, preps, features, metric_fns=()) -> None:
  seqio.TaskRegistry.add(
    name, source=source, preprocessors=preps, output_features=features, metric_fns=list(metric_fns)
  )


def _objectives() -> dict[str, tuple[dict[str, seqio.Feature], object]]:
  """Task-name prefix -> (output features, unsupervised objective)."""
  subword = parts.output_features(vocab.builtin_vocabulary())
  return {
    "mono": (subword, span_corruption.span_corruption),
    "byt5_mono": (
      parts.output_features(vocab.byte_vocabulary()),
      functools.partial(
        span_corruption.span_corruption, mean_noise_span_length=span_corruption.BYT5_MEAN_NOISE_SPAN
      ),
    ),
    "mono_lm": (
      parts.output_features(vocab.builtin_vocabulary(), inputs=False),
      span_corruption.lm,
    ),
    "mono_prefix_lm": (subword, span_corruption.prefix_lm),
  }


def add_sampled_monolingual_task(
  name: str,
  objective: str = "mono",
  sampling: language_sampling.Sampling = registry.DEFAULT_ALPHA,
  languages: Sequence[str] = corpora.MONOLINGUAL_LANGUAGES,
) -> seqio.Task:
  """Registers `objective` (a prefix of `_objectives`: mono, byt5_mono, mono_lm, mono_prefix_lm)
  over `languages` sampled ∝ n ** alpha or by UniMax, e.g.
  `add_sampled_monolingual_task("mono_a05", sampling=0.5)` or
  `add_sampled_monolingual_task("mono_u2", sampling=language_sampling.UniMax(1e7, 2))`."""
  features, preprocess = _objectives()[objective]
  unknown = sorted(set(languages) - set(corpora.MONOLINGUAL_LANGUAGES))
  if unknown:
    raise ValueError(
      f"no built-in monolingual data for {unknown}; the languages are "
      f"tasks.corpora.MONOLINGUAL_LANGUAGES"
    )
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
    name,
    source=SampledMonolingualSource(sampling, languages=languages),
    preprocessors=parts.unsupervised_preprocessors(preprocess, cacheable=False),
    output_features=features,
    metric_fns=[],
  )


def register() -> None:
  subword = parts.output_features(vocab.builtin_vocabulary())
  byte = parts.output_features(vocab.byte_vocabulary())
  for prefix, (features, objective) in _objectives().items():
    for tag in corpora.MONOLINGUAL_LANGUAGES:
      _add(
        f"{prefix}.{parts.task_suffix(tag)}",
        monolingual_source(tag),
        parts.unsupervised_preprocessors(objective),
        features,
      )
    add_sampled_monolingual_task(prefix, prefix)
  for prefix in ("mono", "byt5_mono"):
    unimax = language_sampling.UniMax(UNIMAX_BUDGETS[prefix], UNIMAX_MAX_EPOCHS)
    add_sampled_monolingual_task(f"{prefix}_unimax", prefix, unimax)

  for prefix, features in (("", subword), ("byt5_", byte)):
    for tag in corpora.GNOME_LOCALES:
      x = parts.task_suffix(tag)
      _add(
        f"{prefix}translate_en_{x}",
        gnome_help_source(tag),
        parts.translation_preprocessors("en", tag),
        features,
        metrics.translation_metrics(tag),
      )
      _add(
        f"{prefix}translate_{x}_en",
        gnome_help_source(tag),
        parts.translation_preprocessors(tag, "en"),
        features,
        metrics.translation_metrics("en"),
      )
    seqio.MixtureRegistry.add(
      f"{prefix}translate_en_x",
      [f"{prefix}translate_en_{parts.task_suffix(t)}" for t in corpora.GNOME_LOCALES],
      default_rate=seqio.mixing_rate_num_examples,
    )
    span_mixture = "mono" if not prefix else "byt5_mono"
    seqio.MixtureRegistry.add(
      f"{prefix}multitask",
      [(span_mixture, 1.0)] + [(f"{prefix}translate_en_{t}", 1.0) for t in MULTITASK_TARGETS],
    )
