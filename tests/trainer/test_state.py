"""Train state and steps (trainer/state.py): accumulation equals the big batch, metrics are
per-token over the whole batch, shardings follow models.partitioning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import losses, partitioning
from models.config import T5Config
from models.network import Transformer
from trainer import optimizers
from trainer import state as state_lib

CFG = T5Config(
  vocab_size=64,
  d_model=16,
  num_heads=2,
  head_dim=8,
  d_ff=32,
  num_encoder_layers=1,
  num_decoder_layers=1,
)


def _batch(B=8, L=6, seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, 64, (B, L)).astype(np.int32)
  tgt = rng.integers(2, 64, (B, L)).astype(np.int32)
  for b in range(B):  # ragged padding: rows (and so microbatches) hold different counts
    tgt[b, L - 1 - b % 5 :] = 0
  dec_in = np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt}


def _run(accumulation_steps, rules="data_parallel", steps=2, initial=None):
  placement = partitioning.Placement(partitioning.make_mesh(), rules)
  module = Transformer(CFG)
  lr = optimizers.constant(0.1)
  tx = optimizers.make_optimizer("sgd", lr)
  batch = _batch()
  shardings = state_lib.state_shardings(module, tx, batch, placement)
  state = state_lib.init_state(module, tx, jax.random.key(0), batch, placement, shardings)
  if initial is not None:
    initial.update(params=jax.tree.map(np.asarray, state["params"]), module=module)
  step = placement.jit(
    state_lib.make_train_step(module, tx, lr, accumulation_steps=accumulation_steps),
    in_shardings=(shardings, None, None),
    out_shardings=(shardings, None),
  )
  history = []
  for _ in range(steps):
    state, metrics = step(state, batch, jax.random.key(1))
    history.append({k: float(v) for k, v in metrics.items()})
  return state, history


def test_accumulation_equals_one_big_batch():
  counts = (_batch()["decoder_target_tokens"] > 0).sum(axis=1)
  micro = [counts[i::4].sum() for i in range(4)]  # the rows of each of the 4 microbatches
  assert len(set(micro)) > 1  # so a mean of microbatch means would differ
  s1, m1 = _run(1)
  s4, m4 = _run(4, rules="fsdp")
  assert int(s1["step"]) == int(s4["step"]) == 2
  for a, b in zip(m1, m4):
    for k in ("loss", "accuracy", "z_loss", "num_target_tokens", "grad_norm"):
      assert a[k] == pytest.approx(b[k], rel=1e-5), k
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s1["params"], s4["params"])
  assert m1[1]["loss"] < m1[0]["loss"]


def test_metrics_are_per_token_over_the_batch():
  initial = {}
  _, (m,) = _run(4, steps=1, initial=initial)
  batch = _batch()
  # the whole batch's per-token loss at the initial params, computed by models.losses
  _, want = losses.loss_fn(initial["module"], initial["params"], batch)
  assert m["num_target_tokens"] == (batch["decoder_target_tokens"] > 0).sum()
  for k in ("loss", "z_loss", "accuracy"):
    assert m[k] == pytest.approx(float(want[k]), rel=1e-5), k
  assert m["loss"] == pytest.approx(m["cross_ent_loss"] + m["z_loss"], rel=1e-6)
  assert m["learning_rate"] == pytest.approx(0.1)


def test_refuses_bad_settings():
  module, tx = Transformer(CFG), optimizers.make_optimizer("sgd", 0.1)
  with pytest.raises(ValueError, match="accumulation_steps must be >= 1"):
    state_lib.make_train_step(module, tx, optimizers.constant(0.1), accumulation_steps=0)
  with pytest.raises(ValueError, match="per_sequence"):
    state_lib.make_train_step(
      module, tx, optimizers.constant(0.1), loss_normalizing_factor="per_sequence"
    )
  with pytest.raises(ValueError, match="not divisible by accumulation_steps=3"):
    state_lib._microbatches({"x": jnp.zeros((8, 2))}, 3)
