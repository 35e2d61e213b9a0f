"""Inference to JSONL: decode or score every example of a task split or of a text file.

    infer_task("translate_en_de", "validation", {"inputs": 512, "targets": 256}, 32,
               predict_fn, "runs/x/infer/translate_en_de.jsonl")
    infer_file("inputs.txt", "out.jsonl", vocabulary, inputs_length=512, batch_size=32,
               predict_fn=predict_fn)
    infer_texts(["translate English to German: Hello."], vocabulary, 512, 32, predict_fn)

The model side comes in as plain callables on numpy batches of exactly `batch_size` rows (one
jitted function per shape): a last, short batch is padded with all-zero rows whose outputs are
dropped. Outputs are written in input order, one JSON object per line, flushed and fsynced after
every batch; rerunning on an existing output resumes after its last complete line.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import seqio
import tqdm

from models import decoding
from tasks import registry
from trainer import data

logger = logging.getLogger(__name__)

# Batch of the model's seqio converter features, unpacked (EncDecFeatureConverter for an
# encoder-decoder model, PrefixLMFeatureConverter for a decoder-only one) -> (tokens [B, L] int32,
# 0-padded after EOS; scores [B] float32).
PredictFn = Callable[[Mapping[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]
# Same batch with the decoder features -> [B] float32 summed log-likelihood of the targets.
ScoreFn = Callable[[Mapping[str, np.ndarray]], np.ndarray]

MODES = ("predict", "score")


# --- Batches for the model side ------------------------------------------------------------------


def truncate(ids: Sequence[int], length: int, eos_id: int | None) -> tuple[list[int], bool]:
  """`ids` cut to `length`, keeping a final EOS at the end; and whether anything was cut."""
  ids = list(ids)
  if len(ids) <= length:
    return ids, False
  if eos_id is not None and ids and ids[-1] == eos_id:
    return ids[: length - 1] + [eos_id], True
  return ids[:length], True


def encode_features(
  inputs: Sequence[Sequence[int]],
  inputs_length: int,
  batch_size: int,
  targets: Sequence[Sequence[int]] | None = None,
  targets_length: int | None = None,
  converter: str = "encoder_decoder",
) -> dict[str, np.ndarray]:
  """The unpacked features of seqio's `converter` ('encoder_decoder', or 'decoder_only' /
  'prefix_lm', which make the same features of inputs and targets) of already-truncated token
  lists, zero-padded to `batch_size` rows. Encoder-decoder: decoder features only when
  `targets` are given. Decoder-only: see `prefix_lm_features`."""
  if len(inputs) > batch_size:
    raise ValueError(f"{len(inputs)} examples do not fit a batch of {batch_size}")
  if targets is not None and targets_length is None:
    raise ValueError("encode_features needs targets_length when targets are given")
  if converter in ("decoder_only", "prefix_lm"):
    return prefix_lm_features(inputs, inputs_length, batch_size, targets, targets_length)
  if converter != "encoder_decoder":
    raise ValueError(
      f"unknown converter {converter!r}; expected 'encoder_decoder', 'decoder_only' or 'prefix_lm'"
    )
  encoder_BS = np.zeros((batch_size, inputs_length), np.int32)
  for row, ids in enumerate(inputs):
    encoder_BS[row, : len(ids)] = ids
  features = {"encoder_input_tokens": encoder_BS}
  if targets is not None:
    targets_BT = np.zeros((batch_size, targets_length), np.int32)
    for row, ids in enumerate(targets):
      targets_BT[row, : len(ids)] = ids
    # Teacher forcing: targets shifted right by one, BOS = 0 (seqio's autoregressive inputs).
    decoder_inputs_BT = decoding.shift_right(targets_BT)
    features.update(
      decoder_target_tokens=targets_BT,
      decoder_input_tokens=decoder_inputs_BT,
      decoder_loss_weights=(targets_BT != 0).astype(np.int32),
    )
  return features


def prefix_lm_features(
  inputs: Sequence[Sequence[int]],
  inputs_length: int,
  batch_size: int,
  targets: Sequence[Sequence[int]] | None = None,
  targets_length: int | None = None,
) -> dict[str, np.ndarray]:
  """seqio's PrefixLMFeatureConverter(pack=False) features: each row is its inputs then its
  targets (none: one pad target, as seqio adds), zero-padded to inputs_length +
  targets_length (1 when not given); `decoder_causal_attention` on the start token and the
  inputs, `decoder_loss_weights` on the targets only."""
  length = inputs_length + (targets_length or 1)
  tokens_BT = np.zeros((batch_size, length), np.int32)
  causal_BT = np.zeros((batch_size, length), np.int32)
  weights_BT = np.zeros((batch_size, length), np.int32)
  for row, ids in enumerate(inputs):
    target_ids = list(targets[row]) if targets is not None else []
    sequence = list(ids) + target_ids
    tokens_BT[row, : len(sequence)] = sequence
    causal_BT[row, : len(ids) + 1] = 1
    weights_BT[row, len(ids) : len(sequence)] = np.asarray(target_ids) != 0
  decoder_inputs_BT = np.zeros_like(tokens_BT)
  decoder_inputs_BT[:, 1:] = tokens_BT[:, :-1]
  return {
    "decoder_target_tokens": tokens_BT,
    "decoder_input_tokens": decoder_inputs_BT,
    "decoder_loss_weights": weights_BT,
    "decoder_causal_attention": causal_BT,
  }


def run_predict(
  predict_fn: PredictFn, features: Mapping[str, np.ndarray], num_real: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
  """predict_fn on a batch padded to `batch_size`; the outputs of the first `num_real` rows."""
  result = predict_fn(data.pad_batch(features, batch_size))
  if not (isinstance(result, tuple) and len(result) == 2):
    raise TypeError(
      f"predict_fn must return (tokens [B, L], scores [B]), got {type(result).__name__}"
    )
  tokens_BL, scores_B = np.asarray(result[0]), np.asarray(result[1])
  if tokens_BL.ndim != 2 or len(tokens_BL) != batch_size or scores_B.shape != (batch_size,):
    raise ValueError(
      f"predict_fn must return tokens [{batch_size}, L] and scores "
      f"[{batch_size}], got shapes {tokens_BL.shape} and {scores_B.shape}"
    )
  return tokens_BL[:num_real].astype(np.int32), scores_B[:num_real].astype(np.float32)


def run_score(
  score_fn: ScoreFn, features: Mapping[str, np.ndarray], num_real: int, batch_size: int
) -> np.ndarray:
  """score_fn on a batch padded to `batch_size`; the scores of the first `num_real` rows."""
  scores_B = np.asarray(score_fn(data.pad_batch(features, batch_size)))
  if scores_B.shape != (batch_size,):
    raise ValueError(f"score_fn must return scores [{batch_size}], got shape {scores_B.shape}")
  return scores_B[:num_real].astype(np.float32)


def decode_prediction(vocabulary: seqio.Vocabulary, tokens: Sequence[int]) -> str:
  """The text of `tokens` up to (not including) the first EOS, padding dropped."""
  ids = [int(t) for t in tokens]
  if vocabulary.eos_id is not None and vocabulary.eos_id in ids:
    ids = ids[: ids.index(vocabulary.eos_id)]
  while ids and ids[-1] == 0:
    ids.pop()
  return vocabulary.decode(ids)


# --- Resumable JSONL output ----------------------------------------------------------------------


def completed_lines(output_path: str | os.PathLike, mode: str) -> int:
  """How many complete results `output_path` already holds (0 if it does not exist).

  An unterminated or unparsable last line (a run killed mid-write) is cut off the file.
  """
  path = Path(output_path)
  if not path.exists():
    return 0
  data = path.read_bytes()
  lines = data.split(b"\n")
  complete, good_bytes = 0, 0
  for number, line in enumerate(lines[:-1], start=1):  # lines[-1]: after the last newline
    try:
      record = json.loads(line)
      if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    except ValueError:
      if number == len(lines) - 1 and not lines[-1]:
        break  # the last line is broken: drop it like an unterminated one
      raise ValueError(
        f"{path}:{number} is not a JSON object, so the file cannot be "
        f"resumed; delete it or choose another output path"
      ) from None
    if number == 1 and ("prediction" in record) != (mode == "predict"):
      raise ValueError(
        f"{path} holds another mode's results (this run's mode is "
        f"{mode!r}); delete it or choose another output path"
      )
    complete += 1
    good_bytes += len(line) + 1
  if good_bytes < len(data):
    logger.info("dropping a partial last line of %s to resume after line %d", path, complete)
    if jax.process_index() == 0:  # the only writer
      os.truncate(path, good_bytes)
  return complete


@dataclass
class _Example:
  input_text: str
  input_ids: list[int]
  target_text: str | None = None
  target_ids: list[int] | None = None
  extra: dict | None = None  # fields copied to the output record (the task of a mixture)


def _results(
  examples: Iterable[_Example],
  batch_size: int,
  mode: str,
  predict_fn: PredictFn | None,
  score_fn: ScoreFn | None,
  output_vocabulary: seqio.Vocabulary,
  inputs_length: int,
  targets_length: int | None,
  eos_id: int | None,
  converter: str = "encoder_decoder",
) -> Iterator[list[dict]]:
  """Runs the model on `examples` batch by batch; yields each batch's output records
  ({"input", "prediction", "score"[, "target"]} or {"input", "target", "score"})."""
  cut_inputs = cut_targets = 0
  examples = iter(examples)
  while batch := list(itertools.islice(examples, batch_size)):
    inputs, targets = [], []
    for ex in batch:
      ids, cut = truncate(ex.input_ids, inputs_length, eos_id)
      inputs.append(ids)
      cut_inputs += cut
      if ex.target_ids is not None and targets_length is not None:
        ids, cut = truncate(ex.target_ids, targets_length, eos_id)
        targets.append(ids)
        cut_targets += cut
    has_targets = len(targets) == len(batch)
    features = encode_features(
      inputs,
      inputs_length,
      batch_size,
      targets if has_targets else None,
      targets_length,
      converter,
    )
    if mode == "predict":
      tokens_BL, scores_B = run_predict(predict_fn, features, len(batch), batch_size)
      records = [
        {
          "input": ex.input_text,
          "prediction": decode_prediction(output_vocabulary, tokens),
          "score": float(score),
        }
        for ex, tokens, score in zip(batch, tokens_BL, scores_B)
      ]
    else:
      scores_B = run_score(score_fn, features, len(batch), batch_size)
      records = [
        {"input": ex.input_text, "target": ex.target_text, "score": float(score)}
        for ex, score in zip(batch, scores_B)
      ]
    for ex, record in zip(batch, records):
      if mode == "predict" and ex.target_text is not None:
        record["target"] = ex.target_text
      record.update(ex.extra or {})
    yield records
  cuts = [
    f"{n} {what} to {length} tokens"
    for n, what, length in (
      (cut_inputs, "inputs", inputs_length),
      (cut_targets, "targets", targets_length),
    )
    if n
  ]
  if cuts:
    logger.warning("truncated %s (EOS kept at the end)", " and ".join(cuts))


def _write_results(
  examples: Iterable[_Example],
  total: int | None,
  done: int,
  output_path: Path,
  batch_size: int,
  mode: str,
  predict_fn: PredictFn | None,
  score_fn: ScoreFn | None,
  output_vocabulary: seqio.Vocabulary,
  inputs_length: int,
  targets_length: int | None,
  eos_id: int | None,
  converter: str = "encoder_decoder",
) -> int:
  """Appends one line per example (the ones after the first `done`) to `output_path`, fsynced
  after every batch; returns the number of lines written in all."""
  # every process runs the model (its arrays span them all); process 0 alone writes
  sink = output_path if jax.process_index() == 0 else os.devnull
  with (
    open(sink, "a", encoding="utf-8") as out,
    tqdm.tqdm(total=total, initial=done, unit="ex", desc=output_path.name) as bar,
  ):
    for records in _results(
      examples,
      batch_size,
      mode,
      predict_fn,
      score_fn,
      output_vocabulary,
      inputs_length,
      targets_length,
      eos_id,
      converter,
    ):
      for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
      out.flush()
      os.fsync(out.fileno())
      done += len(records)
      bar.update(len(records))
  return done


def _check_mode(mode: str, batch_size: int, predict_fn, score_fn) -> None:
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; choose one of {list(MODES)}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if mode == "predict" and predict_fn is None:
    raise ValueError("mode 'predict' needs a predict_fn")
  if mode == "score" and score_fn is None:
    raise ValueError("mode 'score' needs a score_fn (pass score_fn=...)")


def _resume_point(output_path, mode: str, total: int | None, what: str) -> tuple[Path, int]:
  """(output path, lines already done) for a run that appends to `output_path`."""
  output_path = Path(output_path)
  output_path.parent.mkdir(parents=True, exist_ok=True)
  done = completed_lines(output_path, mode)
  if total is not None and done > total:
    raise ValueError(
      f"{output_path} already has {done} lines but {what} has only {total} "
      f"examples: it holds another input's results; delete it or choose "
      f"another output path"
    )
  return output_path, done


# --- Entry points --------------------------------------------------------------------------------


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _task_examples(
  task: seqio.Task, split: str, lengths: Mapping[str, int], max_examples: int | None, tag: bool
) -> Iterator[_Example]:
  """A task split in its order (no shuffling), as input/target texts and token ids."""
  ds = task.get_dataset(
    dict(lengths), split=split, shuffle=False, num_epochs=1, seed=0, use_cached=False
  )
  if max_examples is not None:
    ds = ds.take(max_examples)
  features = task.output_features
  for ex in ds.as_numpy_iterator():
    target_ids = ex["targets"].tolist() if "targets" in ex else None
    target_text = None
    if target_ids is not None:
      target_text = (
        _text(ex["targets_pretokenized"])
        if "targets_pretokenized" in ex
        else features["targets"].vocabulary.decode(target_ids)
      )
    input_text = (
      _text(ex["inputs_pretokenized"])
      if "inputs_pretokenized" in ex
      else features["inputs"].vocabulary.decode(ex["inputs"].tolist())
    )
    yield _Example(
      input_text,
      ex["inputs"].tolist(),
      target_text,
      target_ids,
      {"task": task.name} if tag else None,
    )


def _split_size(task: seqio.Task, split: str, max_examples: int | None) -> int | None:
  try:
    size = task.num_input_examples(split)
  except Exception:  # sources without sizes (endless streams) raise or return None
    return None
  if size is None:
    return None
  return min(size, max_examples) if max_examples is not None else size


def infer_task(
  mixture_or_task_name: str,
  split: str,
  task_feature_lengths: Mapping[str, int],
  batch_size: int,
  predict_fn: PredictFn | None,
  output_path: str | os.PathLike,
  *,
  score_fn: ScoreFn | None = None,
  mode: str = "predict",
  max_examples: int | None = None,
  converter: str = "encoder_decoder",
) -> int:
  """Decodes (mode "predict") or scores (mode "score") a task split into JSONL at `output_path`;
  `converter` names the features the callables take (`encode_features`).

  Lines: {"input", "prediction", "score", "target"} or {"input", "target", "score"}; for a
  mixture, its tasks one after the other (each capped at `max_examples`) with a "task" field.
  Resumes after the complete lines of an existing output. Returns the number of output lines.
  """
  _check_mode(mode, batch_size, predict_fn, score_fn)
  provider = registry.get(mixture_or_task_name)
  subtasks = seqio.get_subtasks(provider) if isinstance(provider, seqio.Mixture) else [provider]
  task_list = [t for t in subtasks if split in t.splits]
  if not task_list:
    splits = sorted({s for t in subtasks for s in t.splits})
    raise ValueError(f"{mixture_or_task_name!r} has no split {split!r}; it has {splits}")
  for task in task_list:
    if "inputs" not in task.output_features:
      raise ValueError(
        f"task {task.name!r} has no 'inputs' feature; inference needs a task with "
        f"inputs (the encoder's input, or a decoder-only model's prompt) and targets"
      )
    if mode == "score" and "targets" not in task.output_features:
      raise ValueError(f"task {task.name!r} has no targets to score; use mode 'predict'")
  if "inputs" not in task_feature_lengths:
    raise ValueError(
      f"task_feature_lengths needs an 'inputs' length, got {dict(task_feature_lengths)}"
    )
  targets_length = task_feature_lengths.get("targets")
  if mode == "score" and targets_length is None:
    raise ValueError("mode 'score' needs a 'targets' length in task_feature_lengths")
  sizes = [_split_size(t, split, max_examples) for t in task_list]
  total = None if None in sizes else sum(sizes)

  output_path, done = _resume_point(output_path, mode, total, repr(mixture_or_task_name))
  if done == total:
    return done
  tag = isinstance(provider, seqio.Mixture)
  examples = itertools.chain.from_iterable(
    _task_examples(t, split, task_feature_lengths, max_examples, tag) for t in task_list
  )
  first = task_list[0].output_features
  output_vocabulary = first.get("targets", first["inputs"]).vocabulary
  return _write_results(
    itertools.islice(examples, done, None),
    total,
    done,
    output_path,
    batch_size,
    mode,
    predict_fn,
    score_fn,
    output_vocabulary,
    task_feature_lengths["inputs"],
    targets_length,
    first["inputs"].vocabulary.eos_id,
    converter,
  )


def _file_lines(path: Path) -> Iterator[tuple[int, str]]:
  """(line number, text) of each line; splits on "\\n" only (CRLF endings stripped)."""
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        yield number, raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(
          f"{path}:{number} is not valid UTF-8 ({e.reason}); re-encode the file as UTF-8"
        ) from None


def _text_example(vocabulary: seqio.Vocabulary, source: str, target: str | None = None) -> _Example:
  """An example of raw text, tokenized with EOS appended (seqio's tokenize + append_eos)."""
  eos = [vocabulary.eos_id] if vocabulary.eos_id is not None else []
  if target is None:
    return _Example(source, vocabulary.encode(source) + eos)
  return _Example(source, vocabulary.encode(source) + eos, target, vocabulary.encode(target) + eos)


def _split_pair(path: Path, number: int, line: str) -> tuple[str, str]:
  if "\t" not in line:
    raise ValueError(
      f"{path}:{number} has no tab: mode 'score' needs one `input<TAB>target` pair per line"
    )
  source, target = line.split("\t", 1)
  return source, target


def infer_file(
  input_path: str | os.PathLike,
  output_path: str | os.PathLike,
  vocabulary: seqio.Vocabulary,
  inputs_length: int,
  batch_size: int,
  predict_fn: PredictFn | None,
  *,
  score_fn: ScoreFn | None = None,
  mode: str = "predict",
  targets_length: int | None = None,
  converter: str = "encoder_decoder",
) -> int:
  """Decodes (mode "predict", one input per line) or scores (mode "score", one
  `input<TAB>target` per line) a UTF-8 text file into JSONL at `output_path`.

  Text is tokenized with `vocabulary`, EOS appended, and truncated to `inputs_length` /
  `targets_length` (EOS kept), and made into `converter`'s features (`encode_features`).
  Resumes after the complete lines of an existing output. Returns the number of output lines.
  """
  _check_mode(mode, batch_size, predict_fn, score_fn)
  if mode == "score" and targets_length is None:
    raise ValueError("mode 'score' needs targets_length (the decoder length to score)")
  input_path = Path(input_path)
  if not input_path.is_file():
    raise FileNotFoundError(f"input file {input_path} does not exist")
  # A first pass counts the examples (the progress bar's total) and checks every line, so a
  # bad line fails before any model time is spent.
  total = 0
  for number, line in _file_lines(input_path):
    if mode == "score":
      _split_pair(input_path, number, line)
    total = number
  if total == 0:
    raise ValueError(f"input file {input_path} is empty; give it one example per line")

  output_path, done = _resume_point(output_path, mode, total, str(input_path))
  if done == total:
    return done

  def examples() -> Iterator[_Example]:
    for number, line in itertools.islice(_file_lines(input_path), done, None):
      if mode == "score":
        yield _text_example(vocabulary, *_split_pair(input_path, number, line))
      else:
        yield _text_example(vocabulary, line)

  return _write_results(
    examples(),
    total,
    done,
    output_path,
    batch_size,
    mode,
    predict_fn,
    score_fn,
    vocabulary,
    inputs_length,
    targets_length,
    vocabulary.eos_id,
    converter,
  )


def infer_texts(
  inputs: Sequence[str],
  vocabulary: seqio.Vocabulary,
  inputs_length: int,
  batch_size: int,
  predict_fn: PredictFn | None,
  *,
  targets: Sequence[str] | None = None,
  score_fn: ScoreFn | None = None,
  mode: str = "predict",
  targets_length: int | None = None,
  converter: str = "encoder_decoder",
) -> list[dict]:
  """`infer_file` on strings in memory: one record per input, in order ({"input",
  "prediction", "score"} to predict; {"input", "target", "score"} to score `targets`)."""
  _check_mode(mode, batch_size, predict_fn, score_fn)
  if isinstance(inputs, str):
    raise TypeError("inputs must be a list of strings, not one string")
  if targets is not None and len(targets) != len(inputs):
    raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
  if mode == "score" and (targets is None or targets_length is None):
    raise ValueError("mode 'score' needs targets and targets_length")
  pairs = zip(inputs, targets) if targets is not None else ((x, None) for x in inputs)
  examples = [_text_example(vocabulary, x, y) for x, y in pairs]
  return [
    record
    for records in _results(
      examples,
      batch_size,
      mode,
      predict_fn,
      score_fn,
      vocabulary,
      inputs_length,
      targets_length,
      vocabulary.eos_id,
      converter,
    )
    for record in records
  ]
