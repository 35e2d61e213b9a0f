"""MrT5 in the trainer (trainer/state.py, evaluation.py, predict.py): the gate regularizer and
the paper's PI controller in the train step, the controller in the train state, the deleted
fraction in eval, hard deletion in predict and score.

References: the loss written out from the model's own pieces (`losses.compute_loss` plus
`mrt5.gate_regularizer` over the whole batch, differentiated by jax.grad), the PI controller's
update rule (Kallini et al. 2025, Section 3.2) written out in NumPy, the one-big-batch update
(gradient accumulation), and soft deletion (hard deletion decodes like it once the gate
saturates).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import decoding, losses, mrt5, partitioning
from models.config import T5Config
from models.network import Transformer
from trainer import optimizers
from trainer import predict as predict_lib
from trainer import state as state_lib

CFG = T5Config(
  vocab_size=64,
  d_model=16,
  num_heads=2,
  head_dim=8,
  d_ff=32,
  num_encoder_layers=2,
  num_decoder_layers=1,
  delete_gate_layer=1,
  use_softmax1=True,
  kernels="cpu",
)
LR = 0.1


def _batch(B=8, S=7, T=6, seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, 64, (B, S)).astype(np.int32)
  tgt = rng.integers(2, 64, (B, T)).astype(np.int32)
  for b in range(B):  # ragged padding, different per microbatch, in inputs and targets
    enc[b, S - b % 4 :] = 0
    tgt[b, T - 1 - b % 3 :] = 0
  dec_in = np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt}


def _setup(cfg=CFG, alpha0=0.0, rules="data_parallel"):
  placement = partitioning.Placement(partitioning.make_mesh(), rules)
  module = Transformer(cfg)
  tx = optimizers.make_optimizer("sgd", optimizers.constant(LR))
  batch = _batch()
  shardings = state_lib.state_shardings(module, tx, batch, placement)
  state = state_lib.init_state(
    module, tx, jax.random.key(0), batch, placement, shardings, alpha0=alpha0
  )
  return placement, module, tx, shardings, state, batch


def _steps(n, deletion, accumulation_steps=1, rules="data_parallel", alpha0=0.0, cfg=CFG):
  placement, module, tx, shardings, state, batch = _setup(cfg, alpha0=alpha0, rules=rules)
  step = placement.jit(
    state_lib.make_train_step(
      module, tx, LR, accumulation_steps=accumulation_steps, deletion=deletion
    ),
    in_shardings=(shardings, None, None),
    out_shardings=(shardings, None),
  )
  initial = jax.tree.map(np.asarray, state)
  history = []
  for _ in range(n):
    state, metrics = step(state, batch, jax.random.key(1))
    history.append({k: float(v) for k, v in metrics.items()})
  return module, batch, initial, jax.tree.map(np.asarray, state), history


def _pi_reference(deleted, target, k_p, k_i, p=0.0, i=0.0):
  """The paper's PI controller (Section 3.2), in float64."""
  err = target - deleted
  p = 0.9 * p + 0.1 * k_p * err
  i = i + k_i * err
  return p, i, max(0.0, p + i)


def test_gated_step_is_the_lm_loss_plus_the_regularizer_and_steps_the_controller():
  deletion = state_lib.DeletionConfig(target=0.6, k_p=0.5, k_i=1e-2)
  module, batch, s0, s1, (m,) = _steps(1, deletion, alpha0=0.3)
  assert set(s0) == {"step", "params", "opt_state", state_lib.PI_KEY}
  params = s0["params"]
  real = batch["encoder_input_tokens"] > 0

  def reference_loss(p):
    logits, st = module.apply({"params": p}, **batch, mutable=["intermediates"])
    lm, lm_metrics = losses.compute_loss(logits, batch["decoder_target_tokens"])
    gate = mrt5.gate_values(st["intermediates"])
    return lm + mrt5.gate_regularizer(gate, real, 0.3), (lm_metrics, gate)

  grads, (lm_metrics, gate) = jax.grad(reference_loss, has_aux=True)(params)
  deleted = float(mrt5.deleted_fraction(gate, real, CFG.gate_threshold))
  mean_gate = float(jnp.sum(jnp.where(real, gate, 0)) / real.sum())
  assert m["loss"] == pytest.approx(float(lm_metrics["loss"]), rel=1e-5)
  assert m["deleted_fraction"] == pytest.approx(deleted, abs=1e-7)
  assert m["mean_gate"] == pytest.approx(mean_gate, rel=1e-5)
  assert m["alpha"] == pytest.approx(0.3)
  assert m["gate_loss"] == pytest.approx(0.3 * mean_gate, rel=1e-5)
  assert m["gate_loss"] < 0  # G <= 0: the regularizer rewards deletion
  # SGD: the update is the reference loss's gradient, gate params included
  want = jax.tree.map(lambda p, g: p - LR * g, params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s1["params"], want)
  assert np.abs(grads["encoder"]["delete_gate"]["feed_forward"]["kernel"]).max() > 0
  # the controller stepped once on this step's deleted fraction; the loss used the old α
  p, i, alpha = _pi_reference(m["deleted_fraction"], 0.6, 0.5, 1e-2)
  got = s1[state_lib.PI_KEY]
  np.testing.assert_allclose([got["p"], got["i"], got["alpha"]], [p, i, alpha], rtol=1e-5)


def test_accumulation_equals_one_big_batch_with_the_gate():
  deletion = state_lib.DeletionConfig(target=0.9, k_p=2.0)
  *_, s1, m1 = _steps(3, deletion, alpha0=0.5)
  *_, s4, m4 = _steps(3, deletion, accumulation_steps=4, rules="fsdp", alpha0=0.5)
  for a, b in zip(m1, m4):
    for k in ("loss", "deleted_fraction", "mean_gate", "gate_loss", "alpha", "grad_norm"):
      assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), s1["params"], s4["params"])
  for k in ("p", "i", "alpha"):
    np.testing.assert_allclose(s1[state_lib.PI_KEY][k], s4[state_lib.PI_KEY][k], rtol=1e-5)


def test_delay_and_a_fixed_weight():
  # during the delay: no regularizer (α = 0 in the loss) and no controller update
  *_, s, ms = _steps(3, state_lib.DeletionConfig(target=0.5, delay=2), alpha0=0.2)
  assert [m["alpha"] for m in ms] == pytest.approx([0.0, 0.0, 0.2])
  assert [m["gate_loss"] for m in ms[:2]] == [0.0, 0.0]
  p, i, alpha = _pi_reference(ms[2]["deleted_fraction"], 0.5, 0.5, 1e-5)
  got = s[state_lib.PI_KEY]
  np.testing.assert_allclose([got["p"], got["i"], got["alpha"]], [p, i, alpha], rtol=1e-5)
  # target None: α stays alpha0 (the authors' fixed delete_gate_loss_coeff)
  *_, s, ms = _steps(2, state_lib.DeletionConfig(target=None), alpha0=0.7)
  assert [m["alpha"] for m in ms] == pytest.approx([0.7, 0.7])
  assert float(s[state_lib.PI_KEY]["alpha"]) == pytest.approx(0.7)


def test_a_high_target_raises_the_deleted_fraction():
  *_, ms = _steps(30, state_lib.DeletionConfig(target=0.95, k_p=5.0, k_i=1e-3))
  first, last = ms[0]["deleted_fraction"], ms[-1]["deleted_fraction"]
  assert last > first + 0.3, (first, last)
  assert all(np.isfinite(m["loss"]) for m in ms)


def test_scanned_gated_model_trains_sharded():
  """scan_layers with a gate: the encoder's two scanned stacks shard by their logical axes
  (fsdp over 8 fake devices), and the step trains the gate and steps the controller."""
  cfg = CFG.replace(scan_layers=True, num_encoder_layers=3)
  deletion = state_lib.DeletionConfig(target=0.9, k_p=0.5, k_i=1e-2)
  _, _, s0, s1, ms = _steps(2, deletion, rules="fsdp", cfg=cfg)
  enc = s1["params"]["encoder"]
  assert (
    enc["layers"]["mlp"]["wo"].shape[0] == 1 and enc["layers_after_gate"]["mlp"]["wo"].shape[0] == 2
  )
  gate0 = s0["params"]["encoder"]["delete_gate"]["feed_forward"]["kernel"]
  assert np.abs(enc["delete_gate"]["feed_forward"]["kernel"] - gate0).max() > 0
  assert all(np.isfinite(m["loss"]) for m in ms)
  assert ms[0]["alpha"] == 0 and ms[1]["alpha"] > 0 and ms[1]["gate_loss"] < 0
  assert float(s1[state_lib.PI_KEY]["alpha"]) > 0


def test_without_a_gate_the_state_has_no_controller():
  cfg = CFG.replace(delete_gate_layer=None, use_softmax1=False)
  placement, module, tx, shardings, state, batch = _setup(cfg)
  assert set(state) == set(shardings) == {"step", "params", "opt_state"}
  target = state_lib.abstract_state(module, tx, batch, shardings)
  assert set(target) == {"step", "params", "opt_state"}
  step = jax.jit(state_lib.make_train_step(module, tx, LR))
  _, m = step(state, batch, jax.random.key(1))
  assert not {"deleted_fraction", "gate_loss", "alpha", "mean_gate"} & set(m)


def test_gated_abstract_state_matches_the_state():
  placement, module, tx, shardings, state, batch = _setup(alpha0=0.25)
  target = state_lib.abstract_state(module, tx, batch, shardings)
  assert jax.tree.structure(target) == jax.tree.structure(state)
  pi = target[state_lib.PI_KEY]
  assert all(pi[k].shape == () and pi[k].dtype == jnp.float32 for k in mrt5.PIState._fields)
  assert float(state[state_lib.PI_KEY]["alpha"]) == 0.25
  assert state[state_lib.PI_KEY]["p"].sharding.is_fully_replicated


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(target=1.0), "deletion_target=1.0"),
    (dict(target=-0.1), "deletion_target"),
    (dict(k_p=-1.0), "deletion_k_p"),
    (dict(alpha0=-1.0), "deletion_alpha0"),
    (dict(delay=-1), "deletion_delay=-1"),
  ],
)
def test_bad_deletion_settings_are_one_line_errors(kw, match):
  with pytest.raises(ValueError, match=match) as e:
    state_lib.DeletionConfig(**kw)
  assert "\n" not in str(e.value)


def test_eval_step_sums_the_deleted_fraction():
  placement, module, tx, shardings, state, batch = _setup()
  eval_step = jax.jit(state_lib.make_eval_step(module))
  halves = [{k: v[i::2] for k, v in batch.items()} for i in range(2)]
  total = None
  for half in halves:
    sums = {k: float(v) for k, v in eval_step(state["params"], half).items()}
    total = sums if total is None else {k: total[k] + sums[k] for k in total}
  m = state_lib.metrics_from_sums(total)
  _, st = module.apply({"params": state["params"]}, **batch, mutable=["intermediates"])
  real = batch["encoder_input_tokens"] > 0
  want = mrt5.deleted_fraction(mrt5.gate_values(st["intermediates"]), real, CFG.gate_threshold)
  assert float(m["deleted_fraction"]) == pytest.approx(float(want), abs=1e-7)


def _saturated(params, seed=1):
  """Gate params whose logits are ±(>= ~30): every G is ~0 (kept) or ~k (deleted)."""
  p = jax.tree.map(lambda x: x, params)
  ff = dict(p["encoder"]["delete_gate"]["feed_forward"])
  w = jax.random.normal(jax.random.PRNGKey(seed), ff["kernel"].shape)
  ff["kernel"] = 1e4 * w / jnp.linalg.norm(w)
  ff["bias"] = jnp.zeros_like(ff["bias"])
  p["encoder"] = {
    **p["encoder"],
    "delete_gate": {**p["encoder"]["delete_gate"], "feed_forward": ff},
  }
  return p


def test_predict_and_score_delete_hard_and_match_soft_deletion():
  placement, module, *_, batch = _setup()
  enc = batch["encoder_input_tokens"]
  params = nn.unbox(module.init(jax.random.key(2), enc, batch["decoder_input_tokens"])["params"])
  params = _saturated(params)
  hard, _ = predict_lib.decoding_inputs(module, params, batch, bucket=2)
  assert hard.deletion == "hard" and hard.kept_length < enc.shape[1]  # really shorter
  predict = predict_lib.make_predict_fn(
    module, params, placement, max_decode_length=6, decode=predict_lib.DecodeConfig()
  )
  tokens, scores = predict(batch)
  # what it deleted: the gate's count on these inputs, on kept_length slots per row
  gate = mrt5.compute_gate(module, params, jnp.asarray(enc))
  real = np.asarray(enc) > 0
  counts = predict.deletion_counts
  assert counts.real == real.sum() and counts.full_slots == enc.size
  deleted = (np.asarray(gate) <= CFG.gate_threshold) & real
  assert counts.deleted == deleted.sum() > 0
  bucket = predict_lib.DecodeConfig().deletion_bucket
  kept_length = mrt5.kept_length_for((real & ~deleted).sum(1).max(), enc.shape[1], bucket)
  assert counts.slots == len(enc) * kept_length
  want_tokens, want_scores = decoding.decode(
    module, params, {"encoder_input_tokens": enc}, max_decode_length=6
  )
  np.testing.assert_array_equal(tokens, np.asarray(want_tokens))
  np.testing.assert_allclose(scores, np.asarray(want_scores), rtol=1e-4, atol=1e-4)
  score = predict_lib.make_score_fn(module, params, placement, deletion_bucket=2)
  np.testing.assert_allclose(
    score(batch), np.asarray(decoding.score_sequences(module, params, batch)), rtol=1e-4
  )
  # a second batch with the same kept length reuses the compiled decoder
  compiled = decoding._sample_jit._cache_size()
  predict(batch)
  assert decoding._sample_jit._cache_size() == compiled


def test_without_a_gate_decoding_uses_the_module_itself():
  module = Transformer(CFG.replace(delete_gate_layer=None, use_softmax1=False))
  used, encoded = predict_lib.decoding_inputs(module, None, _batch())
  assert used is module and encoded is None


def test_decoding_inputs_hand_the_hard_deletion_memory_on():
  """predict and score encode once: `decoding_inputs` gives the hard-deletion module (the same
  S' as `mrt5.hard_deletion_module`) and its memory on S' slots, equal to that module's own
  encode."""
  _, module, *_, batch = _setup()
  enc = batch["encoder_input_tokens"]
  params = nn.unbox(module.init(jax.random.key(2), enc, batch["decoder_input_tokens"])["params"])
  params = _saturated(params)
  m, memory = predict_lib.decoding_inputs(module, params, batch, bucket=2)
  assert m.kept_length == mrt5.hard_deletion_module(module, params, enc, bucket=2).kept_length
  assert memory.encoded_BSD.shape == (enc.shape[0], m.kept_length, CFG.d_model)
  want = jax.jit(lambda p: m.apply({"params": p}, enc, method="encode"))(params)
  err = jnp.max(jnp.abs(memory.encoded_BSD - want.encoded_BSD))
  assert float(err) <= 1e-6 * float(jnp.max(jnp.abs(want.encoded_BSD)))
  np.testing.assert_array_equal(np.asarray(memory.key_ok_BS), np.asarray(want.key_ok_BS))
  plain = Transformer(CFG.replace(delete_gate_layer=None, use_softmax1=False))
  assert predict_lib.decoding_inputs(plain, None, batch) == (plain, None)
