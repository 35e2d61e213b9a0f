"""xt5 from Python: decode, score, translate, train a few steps and evaluate a model in memory.

The role T5X's InteractiveModel plays, built from the functions train.py runs (its jitted train
step, data stream, decoding, seqio evaluation and checkpoint readers), so what a notebook sees
is what a training run does.

    from interactive import InteractiveModel
    model = InteractiveModel.load("runs/quickstart")   # MODEL_DIR, xt5, Hugging Face or T5X
    model.translate(["Open the file."], target_language="de", method="beam")
    model.score(["translate English to German: Yes."], ["Ja."])   # log-likelihoods
    history = model.train("translate_en_de", steps=100)          # or [(input, target), ...]
    model.evaluate("translate_en_de", max_examples=64)           # {"translate_en_de/bleu": ...}
    model.save("runs/finetuned")                                 # an xt5 checkpoint

Decoder-only configs (`architecture='decoder_only'`) work the same: inputs are the prompt, and
predictions its continuation (`trainer.predict`). `converter` picks the seqio feature converter
they train on: 'decoder_only' (the default) or 'prefix_lm', the same features for (input,
target) pairs.
"""

from __future__ import annotations

from models import runtime

runtime.configure()  # XLA and TensorFlow settings, before either starts

import hashlib  # noqa: E402  (after runtime.configure)
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import seqio
import tqdm

from models import formats, mrt5
from models.config import T5Config
from trainer import data as data_lib
from trainer import evaluation, optimizers
from trainer import infer as infer_lib
from trainer import loop as loop_lib
from trainer import mesh as mesh_lib
from trainer import params as params_lib
from trainer import predict as predict_lib
from trainer import state as state_lib

Examples = Sequence[tuple[str, str] | Mapping[str, str]]


def _drop_in_memory_task_notes(record: logging.LogRecord) -> bool:
  """seqio's advice to cache a FunctionDataSource before training is about resharding big
  sources on restarts; for a list of pairs held in memory it only confuses."""
  return data_lib.drop_known_seqio_notes(record) and not record.getMessage().startswith(
    "Using an uncached FunctionDataset"
  )


def default_vocabulary(cfg: T5Config) -> seqio.Vocabulary:
  """The vocabulary a config's `vocab_size` implies: bytes (384), the built-in SentencePiece
  model (8192) or mT5's (250112, when installed)."""
  from tasks import vocab

  candidates = [("bytes", vocab.byte_vocabulary)]
  if vocab.builtin_vocabulary_path().is_file():
    candidates.append(("the built-in vocabulary", vocab.builtin_vocabulary))
  if vocab.mt5_vocabulary_path().is_file():
    candidates.append(("mT5's vocabulary", vocab.mt5_vocabulary))
  for _, make in candidates:
    vocabulary = make()
    if vocab.padded_vocab_size(vocabulary) == cfg.vocab_size:
      return vocabulary
  raise ValueError(
    f"no known vocabulary has vocab_size {cfg.vocab_size} (tried "
    f"{', '.join(what for what, _ in candidates)}): pass vocabulary=<a seqio.Vocabulary, "
    f"e.g. tasks.vocab.sentencepiece_vocabulary(PATH)> or the name of a task that uses it"
  )


def _language_name(language: str) -> str:
  from tasks import preprocessors

  if language in preprocessors.LANGUAGE_NAMES.values():
    return language
  return preprocessors.language_name(language)


class InteractiveModel:
  """A T5-family model (encoder-decoder or decoder-only) and its train state, on a mesh, in
  memory.

  Params come from a checkpoint (`load`) or a fresh init. Decoding, scoring and evaluation
  use the current params; `train` updates them (the optimizer state is created on first use
  and kept across calls, as is each dataset's position). As with train.py's
  INITIAL_CHECKPOINT_PATH, only params are loaded: `step` counts this object's train steps.
  """

  def __init__(
    self,
    model_config: T5Config,
    params: Any = None,
    *,
    checkpoint_path: str | None = None,
    vocabulary: seqio.Vocabulary | str | None = None,
    task_feature_lengths: Mapping[str, int] | None = None,
    batch_size: int = 8,
    optimizer: Callable = optimizers.adafactor,
    learning_rate: Callable | float = optimizers.constant(1e-3),
    clip_grad_norm: float | None = None,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
    loss_normalizing_factor="per_token",
    mesh_shape: Mapping[str, int] | None = None,
    partitioning_rules: str | Sequence = "data_parallel",
    converter: str | None = None,
    deletion: state_lib.DeletionConfig = state_lib.DeletionConfig(),
    deletion_bucket: int = 64,
    seed: int = 0,
  ):
    """`params` (a pytree in the config's layout) or `checkpoint_path`, else a random init
    from `seed`. `vocabulary`: a seqio vocabulary, or a task whose inputs vocabulary to use
    (default: the one `model_config.vocab_size` implies). `task_feature_lengths` and
    `batch_size` are the defaults of every call; `optimizer`, `learning_rate` (default: the
    finetuning constant 1e-3) and the loss options are those of `train`. `converter`: the
    seqio feature converter of every call, by default the architecture's ('encoder_decoder';
    'decoder_only' for decoder-only configs, which may also take 'prefix_lm').

    MrT5 configs (`delete_gate_layer`): `deletion` is `train`'s gate regularizer and PI
    controller (whose state is kept across calls, like the optimizer's); decoding and scoring
    delete hard, on a kept length rounded up to `deletion_bucket`; `train` and `evaluate`
    report the deleted fraction, and `deleted_fraction(texts)` gives it per text."""
    self.converter = mesh_lib.model_converter(model_config, converter)
    if params is not None and checkpoint_path is not None:
      raise ValueError("pass params or checkpoint_path, not both")
    logging.getLogger("absl").addFilter(_drop_in_memory_task_notes)  # once per process
    self.config = model_config
    self.vocabulary = self._vocabulary(vocabulary)
    self.task_feature_lengths = dict(task_feature_lengths or {"inputs": 128, "targets": 128})
    self.batch_size = batch_size
    self.seed = seed
    self.placement, self.module = mesh_lib.setup_model(model_config, mesh_shape, partitioning_rules)
    self.learning_rate = learning_rate
    self.tx = optimizers.make_optimizer(optimizer, learning_rate, clip_grad_norm)
    self._loss = state_lib.LossConfig(z_loss, label_smoothing, loss_normalizing_factor)
    self.deletion, self.deletion_bucket = deletion, deletion_bucket
    example = self._example_batch = self._example(
      self.task_feature_lengths, self._round(batch_size)
    )
    self._shardings = state_lib.state_shardings(self.module, self.tx, example, self.placement)
    param_shardings = self._shardings["params"]
    if checkpoint_path is not None:
      params = params_lib.load_params(checkpoint_path, model_config, param_shardings)
    elif params is None:
      params, _ = self.placement.init_params(self.module, jax.random.key(seed), example)
    else:
      formats.tree.check_params(params, model_config, "params")
      params = jax.tree.map(jax.device_put, params, param_shardings)
    self._params = params
    self._opt_state = None
    self._controller = None  # an MrT5 model's PI controller, created with the optimizer state
    self.step = 0
    self.history: list[dict[str, float]] = []  # every train() log record, across calls
    self._train_step = None
    self._eval_step = None
    self._streams: dict[tuple, data_lib.TrainStream] = {}
    self._evaluators: dict[tuple, Any] = {}

  @classmethod
  def load(
    cls,
    path: str,
    *,
    model_config: T5Config | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    **kwargs,
  ) -> InteractiveModel:
    """A model from any checkpoint train.py reads: a training MODEL_DIR (its newest good
    step), an xt5 checkpoint, a Hugging Face T5 directory or a T5X checkpoint. The config
    is read from it unless given; `config_overrides` replace fields (e.g.
    `{"dtype": "float32"}`)."""
    cfg = model_config or params_lib.read_model_config(path)
    if config_overrides:
      cfg = cfg.replace(**config_overrides)
    return cls(cfg, checkpoint_path=path, **kwargs)

  def __repr__(self) -> str:
    n = sum(x.size for x in jax.tree.leaves(self._params))
    return (
      f"InteractiveModel({n / 1e6:.1f}M params, d_model {self.config.d_model}, "
      f"{self.config.num_encoder_layers}+{self.config.num_decoder_layers} layers, "
      f"vocab {self.config.vocab_size}, step {self.step}, mesh {dict(self.placement.mesh.shape)})"
    )

  # ------------------------------------------------------------------------------------------
  # Pieces

  def _vocabulary(self, vocabulary) -> seqio.Vocabulary:
    from tasks import vocab

    if vocabulary is None:
      return default_vocabulary(self.config)
    if isinstance(vocabulary, str):
      import tasks

      vocabulary = tasks.get(vocabulary).output_features["inputs"].vocabulary
    vocab.check_fits(vocabulary, self.config.vocab_size)
    return vocabulary

  def _round(self, batch_size: int) -> int:
    return self.placement.round_batch_size(batch_size)

  def _example(self, task_feature_lengths, batch_size):
    return mesh_lib.example_batch(self.converter, True, task_feature_lengths, batch_size)

  @property
  def params(self):
    """The current params (a pytree of arrays on the mesh)."""
    return self._params

  def _lengths(self, task_feature_lengths) -> dict[str, int]:
    return dict(task_feature_lengths or self.task_feature_lengths)

  def _task_name(self, data: str | Examples) -> str:
    """A registered task/mixture name, or a task registered for in-memory examples (named
    by their content, so the same list reuses one task)."""
    import tasks

    if isinstance(data, str):
      tasks.get(data)  # unknown names: an error with the close ones
      mesh_lib.check_vocabulary(data, self.config)
      return data
    pairs = [(x["inputs"], x["targets"]) if isinstance(x, Mapping) else tuple(x) for x in data]
    if any(len(p) != 2 for p in pairs):
      raise ValueError(
        "examples must be (input, target) pairs or {'inputs': ..., 'targets': ...} dicts"
      )
    digest = hashlib.sha1(
      json.dumps([pairs, type(self.vocabulary).__name__, self.vocabulary.vocab_size]).encode()
    )
    name = f"interactive_{digest.hexdigest()[:12]}"
    if name not in seqio.TaskRegistry.names():
      tasks.add_examples_task(name, pairs, self.vocabulary)
    return name

  # ------------------------------------------------------------------------------------------
  # Decoding and scoring

  def predict(
    self,
    inputs: Sequence[str],
    *,
    method: str = "greedy",
    num_beams: int = 4,
    alpha: float = 0.6,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_decode_length: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    return_scores: bool = False,
  ) -> list[str] | list[tuple[str, float]]:
    """Decoded outputs of `inputs` (text, tokenized with the model's vocabulary and cut to
    the inputs length). method: 'greedy', 'beam' (num_beams, alpha: T5X's length penalty)
    or 'sample' (temperature, top_k, top_p; the same `seed` gives the same samples).
    Scores: summed log-probabilities (beam: length-penalised)."""
    lengths = self.task_feature_lengths
    predict_fn = predict_lib.make_predict_fn(
      self.module,
      self._params,
      self.placement,
      max_decode_length=max_decode_length or lengths["targets"],
      prompt_length=predict_lib.prompt_length(lengths),
      decode=predict_lib.DecodeConfig(
        method, num_beams, alpha, temperature, top_k, top_p, self.deletion_bucket
      ),
      seed=self.seed if seed is None else seed,
    )
    records = infer_lib.infer_texts(
      inputs,
      self.vocabulary,
      lengths["inputs"],
      self._round(batch_size or self.batch_size),
      predict_fn,
      converter=self.converter,
    )
    if return_scores:
      return [(r["prediction"], r["score"]) for r in records]
    return [r["prediction"] for r in records]

  def translate(
    self,
    texts: Sequence[str],
    *,
    target_language: str = "de",
    source_language: str = "en",
    **decode_options,
  ) -> list[str]:
    """`predict` with T5's prompt, "translate English to German: <text>"; languages are
    tags ('de') or English names ('German')."""
    prefix = f"translate {_language_name(source_language)} to {_language_name(target_language)}: "
    return self.predict([prefix + t for t in texts], **decode_options)

  def score(
    self, inputs: Sequence[str], targets: Sequence[str], *, batch_size: int | None = None
  ) -> np.ndarray:
    """Log-likelihood of each target given its input, summed over the target's tokens
    (EOS included) [len(inputs)]."""
    lengths = self.task_feature_lengths
    score_fn = predict_lib.make_score_fn(
      self.module, self._params, self.placement, deletion_bucket=self.deletion_bucket
    )
    records = infer_lib.infer_texts(
      inputs,
      self.vocabulary,
      lengths["inputs"],
      self._round(batch_size or self.batch_size),
      None,
      targets=targets,
      score_fn=score_fn,
      mode="score",
      targets_length=lengths["targets"],
      converter=self.converter,
    )
    return np.array([r["score"] for r in records], np.float32)

  def deleted_fraction(self, inputs: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
    """An MrT5 model's fraction of each input's tokens (EOS included, cut to the inputs
    length) that its gate deletes (G <= threshold: what hard deletion drops) [len(inputs)]."""
    if self.config.delete_gate_layer is None:
      raise ValueError("deleted_fraction needs an MrT5 config (delete_gate_layer set)")
    if isinstance(inputs, str):
      raise TypeError("inputs must be a list of strings, not one string")
    length, eos = self.task_feature_lengths["inputs"], self.vocabulary.eos_id
    tail = [eos] if eos is not None else []
    ids = [infer_lib.truncate(self.vocabulary.encode(x) + tail, length, eos)[0] for x in inputs]
    batch_size = self._round(batch_size or self.batch_size)
    out = []
    for start in range(0, len(ids), batch_size):
      chunk = ids[start : start + batch_size]
      tokens_BS = infer_lib.encode_features(chunk, length, batch_size)["encoder_input_tokens"]
      tokens = data_lib.replicated_batch({"t": tokens_BS}, self.placement.batch_sharding)["t"]
      with self.placement.context():
        gate_BS = np.asarray(data_lib.to_host(mrt5.compute_gate(self.module, self._params, tokens)))
      real_BS = tokens_BS > 0
      deleted_B = ((gate_BS <= self.config.gate_threshold) & real_BS).sum(axis=1)
      out.extend((deleted_B / np.maximum(real_BS.sum(axis=1), 1))[: len(chunk)])
    return np.asarray(out, np.float32)

  # ------------------------------------------------------------------------------------------
  # Training and evaluation

  def _state(self) -> dict:
    if self._opt_state is None:
      fresh = state_lib.init_state(
        self.module,
        self.tx,
        None,
        self._example_batch,
        self.placement,
        self._shardings,
        self._params,
        alpha0=self.deletion.alpha0,
      )
      self._opt_state, self._controller = fresh["opt_state"], fresh.get(state_lib.PI_KEY)
    step = jax.device_put(np.int32(self.step), self._shardings["step"])
    state = {"step": step, "params": self._params, "opt_state": self._opt_state}
    if self._controller is not None:
      state[state_lib.PI_KEY] = self._controller
    return state

  def train(
    self,
    data: str | Examples,
    steps: int,
    *,
    batch_size: int | None = None,
    task_feature_lengths: Mapping[str, int] | None = None,
    pack: bool = True,
    log_every: int = 10,
    show_progress: bool = True,
  ) -> list[dict[str, float]]:
    """Runs `steps` steps of train.py's train step on a task or mixture name, or on a list
    of (input, target) pairs (repeated and shuffled). Each dataset resumes where the last
    call on it stopped. Returns a record per `log_every` steps ({"step", "train/loss",
    "train/accuracy", ...; an MrT5 model's also "train/deleted_fraction", "train/gate_loss",
    "train/alpha", "train/mean_gate"}), also appended to `self.history`."""
    name = self._task_name(data)
    lengths = self._lengths(task_feature_lengths)
    batch_size = batch_size or self.batch_size
    mesh_lib.check_batch_size(batch_size, 1, self.placement)
    config = data_lib.DatasetConfig(
      name, lengths, "train", batch_size, self.converter, pack, True, self.seed
    )
    key = (name, tuple(sorted(lengths.items())), batch_size, pack)
    if key not in self._streams:
      self._streams[key] = data_lib.TrainStream(config)
    stream = self._streams[key]
    if self._train_step is None:
      self._train_step = loop_lib.make_train_step_fn(
        self.module,
        self.tx,
        self.learning_rate,
        self._shardings,
        self.placement,
        loss=self._loss,
        deletion=self.deletion,
      )
    rng = jax.random.key(self.seed + 1)
    state = self._state()
    records, window = [], loop_lib.StepWindow()
    bar = tqdm.tqdm(total=steps, disable=not show_progress, unit="step", desc=name)
    try:
      for i in range(steps):
        batch = data_lib.global_batch(next(stream), self.placement.batch_sharding)
        state, step_metrics = self._train_step(state, batch, rng)
        self.step += 1
        window.add(self.step, step_metrics)
        if len(window) == log_every or i == steps - 1:
          n = len(window)
          record = {"step": self.step, **{f"train/{k}": v for k, v in window.summary().items()}}
          records.append(record)
          self.history.append(record)
          bar.update(n)
          bar.set_postfix(loss=f"{record['train/loss']:.3f}")
    finally:
      # the step donates its input state: keep the newest one, even after an interrupt
      self._params, self._opt_state = state["params"], state["opt_state"]
      self._controller = state.get(state_lib.PI_KEY)
      bar.close()
    return records

  def evaluate(
    self,
    data: str | Examples,
    split: str = "validation",
    *,
    max_examples: int | None = None,
    eval_batches: int | None = None,
    method: str = "greedy",
    num_beams: int = 4,
    alpha: float = 0.6,
    batch_size: int | None = None,
    task_feature_lengths: Mapping[str, int] | None = None,
  ) -> dict[str, float]:
    """What train.py's evaluation reports: teacher-forced loss/accuracy per task and, for
    tasks with metrics, the metrics of decoded predictions (BLEU, chrF, ...), as
    {"<task>/<metric>": value} (an MrT5 model's also "<task>/deleted_fraction", teacher-forced).
    `max_examples` caps the decoded examples per task, `eval_batches` the teacher-forced
    batches."""
    name = self._task_name(data)
    lengths = self._lengths(task_feature_lengths)
    batch_size = self._round(batch_size or self.batch_size)
    key = (name, split, tuple(sorted(lengths.items())), batch_size, max_examples)
    if key not in self._evaluators:  # caches the split's examples, so build once
      self._evaluators[key] = evaluation.make_inference_evaluator(
        name,
        split,
        lengths,
        batch_size,
        converter=self.converter,
        max_examples=max_examples,
        seed=self.seed,
      )
    if self._eval_step is None:
      self._eval_step = self.placement.jit(
        state_lib.make_eval_step(self.module, z_loss=self._loss.z_loss)
      )
    return evaluation.evaluate_params(
      self.module,
      self._params,
      self.placement,
      self._eval_step,
      self._evaluators[key],
      mixture_or_task_name=name,
      split=split,
      task_feature_lengths=lengths,
      batch_size=batch_size,
      converter=self.converter,
      eval_batches=eval_batches,
      decode=predict_lib.DecodeConfig(
        method, num_beams, alpha, deletion_bucket=self.deletion_bucket
      ),
      seed=self.seed,
      step=self.step,
    )

  # ------------------------------------------------------------------------------------------
  # Saving

  def save(self, directory: str, *, overwrite: bool = False) -> str:
    """An xt5 checkpoint (params/, config.json, model.gin) of the current params, which
    `load`, train.py's INITIAL_CHECKPOINT_PATH and `python -m models.formats to-hf` read.
    An existing checkpoint there is an error unless `overwrite`."""
    directory = os.path.abspath(os.path.expanduser(directory))
    formats.xt5.save_checkpoint(directory, self.config, self._params, force=overwrite)
    return directory

  def save_hf(self, hf_dir: str) -> str:
    """A Hugging Face directory that `T5ForConditionalGeneration.from_pretrained` loads."""
    hf_dir = os.path.abspath(os.path.expanduser(hf_dir))
    formats.hf.save_hf(self._params, self.config, hf_dir)
    return hf_dir
