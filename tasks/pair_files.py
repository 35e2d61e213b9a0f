"""Your own data as a seqio Task: files of (input, target) pairs, TSV or JSONL.

    name = tasks.pairs_task(train="train.tsv", validation="dev.tsv", vocabulary="t5",
                            prefix="translate English to German: ", metrics=["bleu", "chrf"])

registers a Task and returns its name, for `tasks.get_dataset`, `InteractiveModel.train` or
train.py. In gin (`import tasks` under `from __gin__ import dynamic_registration`):

    MIXTURE_OR_TASK_NAME = @tasks.pairs_task()
    tasks.pairs_task.train = 'train.tsv'

gin calls the function when the job starts, not when the config is parsed; the same arguments
register the task once and return the same name.

Formats (from the extension, or `format=`):
- TSV (`.tsv`, `.txt`): `input<TAB>target` a line, UTF-8, no header, no quoting;
- JSONL (`.jsonl`, `.json`, `.ndjson`): one JSON object a line, the texts in the fields
  `input_field` and `target_field` (default `inputs`, `targets`); other fields are ignored.
Blank lines are ignored. Every file is read once when the task is registered: a line with the
wrong number of fields, invalid JSON, a missing or non-string field, bad UTF-8 or an empty input
or target is an error naming the file, the line and the fix, before any training; with
`skip_bad_lines=True` such lines are skipped instead, and each file's count is logged once.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import posixpath
import random
from collections.abc import Callable, Iterator, Mapping, Sequence

import seqio
import tensorflow as tf

from tasks import metrics as metrics_lib
from tasks import parts, preprocessors, vocab

log = logging.getLogger(__name__)

FORMATS = {
  ".tsv": "tsv",
  ".txt": "tsv",
  ".jsonl": "jsonl",
  ".json": "jsonl",
  ".ndjson": "jsonl",
}
VOCABULARIES: dict[str, Callable[[], seqio.Vocabulary]] = {
  "t5": vocab.t5_vocabulary,
  "mt5": vocab.mt5_vocabulary,
  "byt5": vocab.byte_vocabulary,
  "builtin": vocab.builtin_vocabulary,
}
METRICS: dict[str, Callable] = {
  "bleu": metrics_lib.bleu,
  "chrf": metrics_lib.chrf,
  "accuracy": metrics_lib.exact_match,
  "exact_match": metrics_lib.exact_match,
}
SPLITS = ("train", "validation", "test")


class BadLineError(ValueError):
  """A malformed line: `path:line: what is wrong. The fix.`"""


@dataclasses.dataclass(frozen=True)
class LineFormat:
  """How a line holds its pair."""

  kind: str  # "tsv" or "jsonl"
  input_field: str = "inputs"
  target_field: str = "targets"

  def parse(self, raw: bytes) -> tuple[str, str]:
    """The (input, target) of one line (no line ending); ValueError says what is wrong."""
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise ValueError(f"not valid UTF-8 (byte {e.start}); save the file as UTF-8") from None
    if self.kind == "tsv":
      fields = line.split("\t")
      if len(fields) != 2:
        tabs = "; a text containing tabs needs JSONL" if len(fields) > 2 else ""
        raise ValueError(
          f"expected 2 tab-separated fields (input<TAB>target), found {len(fields)}{tabs}"
        )
      pair = fields[0], fields[1]
    else:
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg}, column {e.colno})") from None
      if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, found {type(record).__name__}")
      pair = tuple(self._field(record, f) for f in (self.input_field, self.target_field))
    for what, text in zip(("input", "target"), pair, strict=True):
      if not text.strip():
        raise ValueError(f"empty {what}")
    return pair

  def _field(self, record: dict, field: str) -> str:
    if field not in record:
      raise ValueError(
        f"no field {field!r} (it has {', '.join(repr(k) for k in record) or 'none'}; name the "
        "fields with input_field= and target_field=)"
      )
    if not isinstance(record[field], str):
      raise ValueError(f"field {field!r} is a {type(record[field]).__name__}, not a string")
    return record[field]


def file_format(path: str, format: str | None = None) -> str:
  if format is not None:
    if format not in ("tsv", "jsonl"):
      raise ValueError(f"format={format!r}: choose 'tsv' or 'jsonl'")
    return format
  suffix = posixpath.splitext(path.lower())[1]
  if suffix not in FORMATS:
    raise ValueError(
      f"{path}: can't tell the format from the extension {suffix or '(none)'!r} (known: "
      f"{', '.join(FORMATS)}); pass format='tsv' or format='jsonl'"
    )
  return FORMATS[suffix]


def read_lines(path: str, line_format: LineFormat) -> Iterator[tuple[int, tuple[str, str] | str]]:
  """(line number, (input, target)) for each good line of `path`, (line number, the problem)
  for each bad one; blank lines are left out."""
  with tf.io.gfile.GFile(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      raw = raw.rstrip(b"\n").rstrip(b"\r")
      if number == 1:
        raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (spreadsheet exports)
      if not raw.strip():
        continue
      try:
        yield number, line_format.parse(raw)
      except ValueError as e:
        yield number, str(e)


@dataclasses.dataclass(frozen=True)
class FileCheck:
  path: str
  good: int
  bad: tuple[tuple[int, str], ...]  # (line number, problem)


def check_file(path: str, line_format: LineFormat, skip_bad_lines: bool) -> FileCheck:
  """Reads all of `path`: refuses its first bad line (or, skipping, logs how many were bad)."""
  good, bad = 0, []
  for number, item in read_lines(path, line_format):
    if isinstance(item, str):
      bad.append((number, item))
    else:
      good += 1
  check = FileCheck(path, good, tuple(bad))
  if bad and not skip_bad_lines:
    number, problem = bad[0]
    more = (
      f" (and {len(bad) - 1} more bad line{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
    )
    raise BadLineError(
      f"{path}:{number}: {problem}{more}. Fix the line, or pass skip_bad_lines=True to skip "
      "bad lines (--gin.tasks.pairs_task.skip_bad_lines=True)."
    )
  if bad:
    shown = ", ".join(str(n) for n, _ in bad[:10]) + (", ..." if len(bad) > 10 else "")
    log.warning(
      "%s: skipped %d bad line%s of %d (lines %s; line %d: %s)",
      path,
      len(bad),
      "" if len(bad) == 1 else "s",
      good + len(bad),
      shown,
      bad[0][0],
      bad[0][1],
    )
  if not good:
    raise BadLineError(f"{path}: no (input, target) pairs in it")
  return check


class PairFilesSource(seqio.DataSource):
  """The pairs of each split's files, read line by line, in file order (the files shuffled when
  asked); any number of hosts each read every `num_shards`-th pair."""

  def __init__(
    self,
    files: Mapping[str, Sequence[str]],
    line_formats: Mapping[str, LineFormat],
    sizes: Mapping[str, int],
    skip_bad_lines: bool = False,
  ):
    super().__init__(splits=list(files), num_input_examples=dict(sizes))
    self.files = {split: tuple(paths) for split, paths in files.items()}
    self.line_formats = dict(line_formats)  # path -> its format
    self.skip_bad_lines = skip_bad_lines

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return self.files[split]

  def pairs(self, paths: Sequence[str]) -> Iterator[dict[str, str]]:
    for path in paths:
      for number, item in read_lines(path, self.line_formats[path]):
        if not isinstance(item, str):
          yield {"inputs": item[0], "targets": item[1]}
        elif not self.skip_bad_lines:  # counted at registration; here only if the file changed
          raise BadLineError(f"{path}:{number}: {item} (the file changed after registration)")

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
    del sequence_length, use_cached, num_epochs
    paths = list(self.files[split])
    if shuffle:
      random.Random(None if seed is None else int(seed)).shuffle(paths)
    spec = tf.TensorSpec((), tf.string)
    dataset = tf.data.Dataset.from_generator(
      functools.partial(self.pairs, paths), output_signature={"inputs": spec, "targets": spec}
    )
    if shard_info and shard_info.num_shards > 1:
      dataset = dataset.shard(shard_info.num_shards, shard_info.index)
    return dataset


def get_vocabulary(vocabulary: str | seqio.Vocabulary) -> seqio.Vocabulary:
  """A model family's vocabulary by name, a SentencePiece `.model` file, or the object itself."""
  if isinstance(vocabulary, seqio.Vocabulary):
    return vocabulary
  if vocabulary in VOCABULARIES:
    return VOCABULARIES[vocabulary]()
  if isinstance(vocabulary, str) and vocabulary.endswith(".model"):
    return vocab.sentencepiece_vocabulary(vocabulary)
  raise ValueError(
    f"vocabulary={vocabulary!r}: name the checkpoint's ({', '.join(map(repr, VOCABULARIES))}), a "
    "SentencePiece .model file (a Hugging Face T5 directory's spiece.model) or pass a "
    "seqio.Vocabulary"
  )


def get_metrics(metrics: str | Sequence[str | Callable] | None) -> list[Callable]:
  if not metrics:
    return []
  out = []
  for metric in [metrics] if isinstance(metrics, str) else metrics:
    if callable(metric):
      out.append(metric)
    elif metric in METRICS:
      out.append(METRICS[metric])
    else:
      raise ValueError(
        f"unknown metric {metric!r}; choose from {', '.join(map(repr, METRICS))} or pass a "
        "seqio metric function"
      )
  return out


def _paths(split: str, given: str | Sequence[str]) -> list[str]:
  """The files of a split: paths or glob patterns, each of which must name a file."""
  out = []
  for pattern in [given] if isinstance(given, str) else list(given):
    if any(c in pattern for c in "*?["):
      matched = sorted(tf.io.gfile.glob(pattern))
      if not matched:
        raise FileNotFoundError(f"{split}={pattern!r}: no file matches the pattern")
      out += matched
    elif not tf.io.gfile.exists(pattern):
      raise FileNotFoundError(f"{split}={pattern!r}: no such file")
    else:
      out.append(pattern)
  if not out:
    raise ValueError(f"{split}=: no files given")
  return out


def _describe(value) -> str:
  """A stable text for the task's name digest (functions and vocabularies by what they are)."""
  if isinstance(value, seqio.SentencePieceVocabulary):
    return f"SentencePieceVocabulary({value.sentencepiece_model_file})"
  if isinstance(value, seqio.Vocabulary):
    return type(value).__name__
  if callable(value):
    return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"
  if isinstance(value, list | tuple):
    return "[" + ", ".join(_describe(v) for v in value) + "]"
  return repr(value)


def _file_stamp(path: str) -> tuple:
  stat = tf.io.gfile.stat(path)
  return path, stat.length, stat.mtime_nsec


# task name -> (its arguments, their files' sizes and times): what `pairs_task` registered.
_registered: dict[str, tuple] = {}


def pairs_task(
  train: str | Sequence[str] | None = None,
  validation: str | Sequence[str] | None = None,
  test: str | Sequence[str] | None = None,
  *,
  vocabulary: str | seqio.Vocabulary,
  prefix: str = "",
  metrics: str | Sequence[str | Callable] | None = None,
  format: str | None = None,
  input_field: str = "inputs",
  target_field: str = "targets",
  skip_bad_lines: bool = False,
  name: str | None = None,
) -> str:
  """Registers a seqio Task over files of (input, target) pairs and returns its name.

  Args:
    train, validation, test: each split's file, or a list of files or glob patterns; at least
      one split. The task's splits are those given.
    vocabulary: the checkpoint's: 't5' (T5 / T5.1.1), 'mt5', 'byt5' (bytes), 'builtin' (the
      quickstart's 8192 ids), a SentencePiece `.model` file, or a `seqio.Vocabulary`.
    prefix: T5's task prefix, prepended to every input ("translate English to German: ").
    metrics: what evaluation computes on decoded predictions: 'bleu', 'chrf', 'accuracy' (exact
      match, reported as `exact_match`), seqio metric functions, or none.
    format: 'tsv' or 'jsonl'; by default from each file's extension.
    input_field, target_field: JSONL's field names.
    skip_bad_lines: skip malformed lines (counted and logged once per file) instead of refusing
      the first one.
    name: the task's name; by default `pairs_` and a digest of the arguments.

  Inputs and targets are tokenized with `vocabulary` and end with EOS, like every other task.
  """
  given = {s: p for s, p in zip(SPLITS, (train, validation, test), strict=True) if p is not None}
  if not given:
    raise ValueError("pairs_task needs files for at least one split: train=, validation= or test=")
  files = {split: _paths(split, paths) for split, paths in given.items()}
  arguments = (
    tuple((s, tuple(p)) for s, p in files.items()),
    _describe(vocabulary),
    prefix,
    _describe(metrics),
    format,
    input_field,
    target_field,
    skip_bad_lines,
  )
  name = name or "pairs_" + hashlib.sha256(repr(arguments).encode()).hexdigest()[:8]
  stamp = (arguments, tuple(_file_stamp(p) for paths in files.values() for p in paths))
  if _registered.get(name) == stamp and name in seqio.TaskRegistry.names():
    return name

  vocabulary = get_vocabulary(vocabulary)
  vocabulary.vocab_size  # noqa: B018 (loads it now: a missing file is reported before training)
  metric_fns = get_metrics(metrics)
  line_formats = {
    path: LineFormat(file_format(path, format), input_field, target_field)
    for paths in files.values()
    for path in paths
  }
  sizes = {
    split: sum(check_file(path, line_formats[path], skip_bad_lines).good for path in paths)
    for split, paths in files.items()
  }

  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
    name,
    source=PairFilesSource(files, line_formats, sizes, skip_bad_lines),
    preprocessors=[
      functools.partial(preprocessors.add_prefix, prefix=prefix),
      seqio.preprocessors.tokenize,
      seqio.preprocessors.append_eos_after_trim,
    ],
    output_features=parts.output_features(vocabulary),
    metric_fns=metric_fns,
  )
  _registered[name] = stamp
  log.info("task %s: %s", name, ", ".join(f"{s} {n} pairs" for s, n in sizes.items()))
  return name
