"""The model side of inference: numpy batches in, decoded tokens or target scores out, on a mesh.

`make_predict_fn` and `make_score_fn` close over a module, its params and a placement, and give
the plain callables that `trainer.infer` (JSONL output) and `trainer.evaluation` (seqio metrics)
consume, so neither of those knows about meshes or decoding options. `infer_checkpoint` is the
whole infer job: a checkpoint's params on a mesh, decoding or scoring into JSONL.

Batches are the unpacked features of the model's seqio feature converter. An encoder-decoder
model decodes from `encoder_input_tokens`. A decoder-only model is fed its converter's features
(`decoder_input_tokens`, `decoder_causal_attention`, ...: seqio's PrefixLMFeatureConverter for a
task with inputs, whether the converter is 'prefix_lm' or 'decoder_only', since seqio's
DecoderFeatureConverter hands such tasks to it), and decodes the continuation of a prompt:
`prompt_batch` cuts the prompt out of them, the positions `decoder_causal_attention` marks, i.e.
the start token 0 and the inputs (`[0, x_1, ..., x_n]`, x_n being the inputs' EOS), which is
exactly what the model saw in training before the first target. Prompt positions attend to each
other (`prefix_lm=True`), as `decoder_causal_attention` made them in training. A targets-only
(LM) task has no `decoder_causal_attention`: its prompt is the start token alone. Predictions
are the continuation after the prompt, so seqio's metrics compare them with the targets, as for
an encoder-decoder model. Scores of either kind are the summed log-likelihood of the target
tokens (EOS included): `decoder_loss_weights`, which the prefix-LM converter puts on the targets
only.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from models import decoding, mrt5, partitioning
from models.network import Transformer
from trainer import data
from trainer import infer as infer_lib
from trainer import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How predictions are decoded: T5X's defaults (greedy; beam 4 with length penalty 0.6)."""

  method: str = "greedy"  # 'greedy', 'beam' or 'sample'
  num_beams: int = 4
  alpha: float = 0.6  # beam search length penalty ((5 + len) / 6) ** alpha
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  # MrT5 (a gated model) decodes with hard deletion on S' encoder slots: the batch's largest
  # kept count rounded up to a multiple of this (one compilation per distinct S')
  deletion_bucket: int = 64


@dataclasses.dataclass
class DeletionCounts:
  """What MrT5's hard deletion did in the batches a predict fn decoded, over rows holding a real
  input token: the real tokens, the deleted ones, and the encoder slots the layers from the gate
  on ran over (S' per row) against the inputs' full length (S per row)."""

  real: int = 0
  deleted: int = 0
  slots: int = 0
  full_slots: int = 0

  def add(self, tokens_BS: np.ndarray, key_ok_BS: np.ndarray) -> None:
    """One batch: its input tokens and the hard-deletion memory's kept-slot mask [B, S']."""
    tokens_BS, key_ok_BS = np.asarray(tokens_BS), np.asarray(key_ok_BS)
    rows_B = (tokens_BS > 0).any(axis=1)
    real = int((tokens_BS[rows_B] > 0).sum())
    self.real += real
    self.deleted += real - int(key_ok_BS[rows_B].sum())
    self.slots += int(rows_B.sum()) * key_ok_BS.shape[1]
    self.full_slots += int(rows_B.sum()) * tokens_BS.shape[1]

  def since(self, earlier: DeletionCounts) -> DeletionCounts:
    fields = (f.name for f in dataclasses.fields(self))
    return DeletionCounts(*(getattr(self, f) - getattr(earlier, f) for f in fields))

  def metrics(self) -> dict[str, float]:
    """decode_deleted_fraction (of the real tokens) and decode_slots_fraction (S' / S: the
    share of full-length encoder work the layers after the gate did)."""
    return {
      "decode_deleted_fraction": self.deleted / max(self.real, 1),
      "decode_slots_fraction": self.slots / max(self.full_slots, 1),
    }


def prompt_length(task_feature_lengths: Mapping[str, int]) -> int:
  """P, the width of a decoder-only model's prompts: the start token and the inputs."""
  return task_feature_lengths.get("inputs", 0) + 1


def prompt_batch(batch: Mapping[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
  """`decoder_prompt_tokens` [B, width] (left-aligned, 0-padded) of a batch of a decoder-only
  model's unpacked converter features: `decoder_input_tokens` where `decoder_causal_attention`
  is 1 (the start token 0 and the inputs), or the start token alone without that feature."""
  inputs_BT = np.asarray(batch["decoder_input_tokens"], np.int32)
  causal = batch.get("decoder_causal_attention")
  if causal is None:
    causal_BT = np.zeros(inputs_BT.shape, bool)
    causal_BT[:, 0] = True
  else:
    causal_BT = np.asarray(causal).astype(bool)
  longest = int(causal_BT.sum(axis=1).max(initial=1))
  if longest > width:
    raise ValueError(
      f"a prompt of {longest} tokens does not fit the prompt width {width} (the inputs "
      f"length + 1); decode with the inputs length the features were made with"
    )
  prompt_BP = np.zeros((len(inputs_BT), width), np.int32)
  n = min(width, inputs_BT.shape[1])
  prompt_BP[:, :n] = np.where(causal_BT, inputs_BT, 0)[:, :n]
  return {"decoder_prompt_tokens": prompt_BP}


def decoding_inputs(
  module: Transformer, params, batch: Mapping, bucket: int = DecodeConfig.deletion_bucket
) -> tuple[Transformer, Any]:
  """(module, encoded) to decode or score `batch` (arrays on the mesh) with: `(module, None)`
  (the decoder encodes), or for an MrT5 model the hard-deletion module and its memory
  (`mrt5.hard_encode`: a jitted gate pass whose kept count the host reads, then a jitted call
  running the later encoder layers on the bucketed kept length; every layer runs once, and jax
  caches a compilation per length)."""
  if module.config.delete_gate_layer is None:
    return module, None
  return mrt5.hard_encode(
    module,
    params,
    batch["encoder_input_tokens"],
    batch.get("encoder_segment_ids"),
    bucket=bucket,
  )


def make_predict_fn(
  module: Transformer,
  params,
  placement: partitioning.Placement,
  *,
  max_decode_length: int,
  prompt_length: int | None = None,
  decode: DecodeConfig = DecodeConfig(),
  seed: int = 0,
) -> Callable:
  """numpy batch -> (tokens [B, L], scores [B]) with the model's decoding, on the mesh.
  A decoder-only model needs `prompt_length`, its prompts' width (`prompt_length(lengths)`):
  one shape, so one compilation, for every batch. Sampling draws a new key per call, from
  `seed`. An MrT5 model decodes with hard deletion (`decoding_inputs`) and adds up what it
  deleted in the fn's `deletion_counts` (a `DeletionCounts`; None without a gate)."""
  key, calls = jax.random.key(seed), itertools.count()
  decoder_only = module.config.architecture == "decoder_only"
  counts = None if module.config.delete_gate_layer is None else DeletionCounts()
  if decoder_only and prompt_length is None:
    raise ValueError("a decoder-only model's predict fn needs prompt_length (inputs length + 1)")

  def predict(batch):
    if decoder_only:
      features = prompt_batch(batch, prompt_length)
    else:
      features = {"encoder_input_tokens": batch["encoder_input_tokens"]}
    features = data.replicated_batch(features, placement.batch_sharding)
    with placement.context():
      m, encoded = decoding_inputs(module, params, features, decode.deletion_bucket)
      if counts is not None:
        counts.add(batch["encoder_input_tokens"], data.to_host(encoded.key_ok_BS))
      tokens, scores = decoding.decode(
        m,
        params,
        features,
        encoded=encoded,
        method=decode.method,
        max_decode_length=max_decode_length,
        num_beams=decode.num_beams,
        alpha=decode.alpha,
        temperature=decode.temperature,
        top_k=decode.top_k,
        top_p=decode.top_p,
        rng=jax.random.fold_in(key, next(calls)),
        prefix_lm=decoder_only,
      )
    return data.to_host(tokens), data.to_host(scores)

  predict.deletion_counts = counts
  return predict


def make_score_fn(
  module: Transformer,
  params,
  placement: partitioning.Placement,
  *,
  deletion_bucket: int = DecodeConfig.deletion_bucket,
) -> Callable:
  """numpy batch with decoder features -> [B] summed log-likelihood of the targets (an MrT5
  model: with hard deletion, `decoding_inputs`)."""
  keys = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_causal_attention",
  )

  def score(batch):
    features = data.replicated_batch(
      {k: batch[k] for k in keys if k in batch}, placement.batch_sharding
    )
    with placement.context():
      m, encoded = decoding_inputs(module, params, features, deletion_bucket)
      return data.to_host(decoding.score_sequences(m, params, features, encoded=encoded))

  return score


def infer_checkpoint(
  *,
  checkpoint_path: str,
  model_config,
  output_file: str,
  batch_size: int,
  task_feature_lengths: Mapping[str, int],
  mixture_or_task_name: str | None = None,
  split: str = "validation",
  input_file: str | None = None,
  vocabulary=None,
  mode: str = "predict",
  max_examples: int | None = None,
  converter: str | None = None,
  decode: DecodeConfig = DecodeConfig(),
  mesh_shape=None,
  partitioning_rules="data_parallel",
  seed: int = 0,
) -> int:
  """Decodes (mode 'predict') or scores (mode 'score') a task split, or a text file, into
  JSONL; resumes a partly written OUTPUT_FILE. Returns the number of lines written.

  A text file is tokenized with `vocabulary`, else with MIXTURE_OR_TASK_NAME's vocabulary.
  `converter`: the model's feature converter (default: its architecture's, see
  `trainer.mesh.model_converter`)."""
  if input_file is None and mixture_or_task_name is None:
    raise mesh_lib.ConfigError(
      "infer needs MIXTURE_OR_TASK_NAME (decode a task split) or INPUT_FILE "
      "(decode a text file, one input per line)"
    )
  mesh_lib.check_positive(batch_size=batch_size, max_examples=max_examples)
  mesh_lib.check_output_path(output_file, "INFER_OUTPUT_FILE", directory=False)
  converter = mesh_lib.model_converter(model_config, converter)
  if mixture_or_task_name is not None:
    import tasks

    mesh_lib.check_feature_lengths(mixture_or_task_name, task_feature_lengths)
    mesh_lib.check_vocabulary(mixture_or_task_name, model_config)
    if input_file is None:
      mesh_lib.check_split(mixture_or_task_name, split, "INFER_SPLIT")
    vocabulary = vocabulary or tasks.get(mixture_or_task_name).output_features["inputs"].vocabulary
  if vocabulary is None:
    raise mesh_lib.ConfigError(
      "INPUT_FILE needs a vocabulary: set MIXTURE_OR_TASK_NAME to a task "
      "with the model's vocabulary, or bind train_script.infer.vocabulary "
      "(e.g. = @vocab.builtin_vocabulary())"
    )
  placement, module, params, batch_size = mesh_lib.load_model(
    checkpoint_path,
    model_config,
    mesh_shape,
    partitioning_rules,
    converter=converter,
    pack=False,
    task_feature_lengths=task_feature_lengths,
    batch_size=batch_size,
  )
  predict = make_predict_fn(
    module,
    params,
    placement,
    max_decode_length=task_feature_lengths["targets"],
    prompt_length=prompt_length(task_feature_lengths),
    decode=decode,
    seed=seed,
  )
  score = make_score_fn(module, params, placement, deletion_bucket=decode.deletion_bucket)
  if input_file is not None:
    return infer_lib.infer_file(
      input_file,
      output_file,
      vocabulary,
      task_feature_lengths["inputs"],
      batch_size,
      predict,
      score_fn=score,
      mode=mode,
      targets_length=task_feature_lengths["targets"],
      converter=converter,
    )
  return infer_lib.infer_task(
    mixture_or_task_name,
    split,
    task_feature_lengths,
    batch_size,
    predict,
    output_file,
    score_fn=score,
    mode=mode,
    max_examples=max_examples,
    converter=converter,
  )
