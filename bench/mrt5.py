"""MrT5 token deletion speed: encode + greedy decode with hard deletion vs the same model without
a gate, and the train-step cost of soft deletion.

  python -m bench.mrt5 [--batch 4 --input_length 1024 --decode_lengths 32,256 --deltas 0.5,0.75
                       --train_batch 2 --train_inputs 1024 --train_targets 189 --iters 3]

ByT5-small shapes: "no gate" is configs/models/byt5/small.gin, the gated model
configs/models/mrt5/small.gin (the same plus a gate on the input of encoder layer 3, softmax_1,
k = -30, threshold k/2) with the same params plus the gate's. bf16 activations (the gin default),
random params and random bytes, EOS disabled so every row decodes the full length.

"Gates set to delete δ": the gate's kernel is a fixed random unit direction and its bias is set so
that the gate logit is below the deletion point for a fraction δ of the real bytes of a separate
calibration batch (same distribution, another seed). The benchmark batch then goes through the
normal inference path, `mrt5.hard_encode` (a jitted gate pass, the batch's kept count read on the
host and rounded up to `--bucket`, then a jitted call running the later encoder layers on the
compacted length S' from the gate pass's hidden states) and `decoding.decode` on its memory; the
fraction the gate really deleted and S' are printed beside each row. Rows "early layers twice"
time the former path, `mrt5.hard_deletion_module` then `decoding.decode` with its module, whose
encode runs the layers before the gate a second time. Rows with 0 decode bytes time the encoder
alone (the no-gate model's jitted `encode` against `hard_encode`): the part hard deletion
shortens, without the decoder steps every row pays alike.

The train step (forward, backward and Adafactor; the gated loss adds the gate regularizer read
from `intermediates/delete_gate`) compares the plain model with the gated one in soft deletion,
which deletes nothing from the computation whatever G is (a fresh gate). All rows are timed
interleaved in one process; the JSON line's ratios are against the no-gate rows.
"""

from __future__ import annotations

import argparse

from models import runtime

runtime.configure(reexec=__name__ == "__main__")  # before JAX starts its backend

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.train_step import make_batch
from bench.util import emit_json, print_table, time_interleaved
from models import decoding, losses, mrt5
from models.config import T5Config
from models.network import Transformer
from trainer import optimizers

# ByT5's shape fields (configs/models/byt5/_family.gin + small.gin); "tiny" exercises the script in
# seconds (tests/bench) and measures nothing.
_BYT5 = dict(
  vocab_size=384,
  head_dim=64,
  mlp_activations=("gelu", "linear"),
  logits_via_embedding=False,
  relative_attention_num_buckets=32,
  relative_attention_max_distance=128,
  layer_norm_epsilon=1e-6,
  scan_layers=False,
)
SIZES = {
  "small": (
    T5Config(
      **_BYT5, d_model=1472, num_heads=6, d_ff=3584, num_encoder_layers=12, num_decoder_layers=4
    ),
    3,
  ),
  "tiny": (
    T5Config(
      **{**_BYT5, "head_dim": 16},
      d_model=32,
      num_heads=2,
      d_ff=64,
      num_encoder_layers=4,
      num_decoder_layers=2,
    ),
    1,
  ),
}
# configs/models/mrt5/gate.gin
GATE = dict(
  sigmoid_mask_scale=-30.0, deletion_threshold=None, gate_layer_norm=True, use_softmax1=True
)
BYTE_OFFSET = 3  # ByT5: byte b is id b + 3 (0 pad, 1 EOS, 2 UNK)


def random_bytes(batch, length, seed):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(BYTE_OFFSET, BYTE_OFFSET + 256, (batch, length)), jnp.int32)


def _gate(module, params, tokens_BS):
  return module.apply({"params": params}, tokens_BS, method="delete_gate")


# G [B, S] of a batch, computed by the model's own gate path
gate_values = jax.jit(_gate, static_argnums=0)


def gate_deleting(module, params, calib_BS, delta, seed=0):
  """`params` with a gate that deletes a fraction `delta` of `calib_BS`'s real tokens.

  The logit is z = w·h + b with w a random unit vector: with b = 0, the model's own gate gives
  G = k·sigmoid(-z0), which is inverted for z0; then b puts the deletion point (G = threshold, i.e.
  z = log((1 - r) / r), r = threshold / k) at z0's δ-quantile over real tokens.
  """
  cfg = module.config
  ff = params["encoder"]["delete_gate"]["feed_forward"]
  w = jax.random.normal(jax.random.PRNGKey(seed), ff["kernel"].shape, jnp.float32)
  p = _with_gate(params, w / jnp.linalg.norm(w), jnp.zeros_like(ff["bias"]))
  g = np.asarray(gate_values(module, p, calib_BS), np.float64)[np.asarray(calib_BS) > 0]
  s = g / cfg.sigmoid_mask_scale  # sigmoid(-z0), in (0, 1)
  z0 = np.log1p(-s) - np.log(s)
  r = cfg.gate_threshold / cfg.sigmoid_mask_scale
  bias = np.log((1 - r) / r) - np.quantile(z0, delta)
  return _with_gate(
    p, p["encoder"]["delete_gate"]["feed_forward"]["kernel"], jnp.full((1,), bias, jnp.float32)
  )


def _with_gate(params, kernel, bias):
  gate = params["encoder"]["delete_gate"]
  gate = {**gate, "feed_forward": {"kernel": kernel, "bias": bias}}
  return {**params, "encoder": {**params["encoder"], "delete_gate": gate}}


def decode_call(prepare, params, enc_BS, length, eos_id):
  """A blocking greedy decode of `length` bytes; `prepare()` gives (module, encoded or None),
  built per call, so hard deletion's gate pass and compaction are timed."""

  def run():
    module, encoded = prepare()
    tokens, _ = decoding.decode(
      module,
      params,
      {"encoder_input_tokens": enc_BS},
      method="greedy",
      max_decode_length=length,
      eos_id=eos_id,
      encoded=encoded,
    )
    jax.block_until_ready(tokens)

  return run


def encode_call(encode):
  """A blocking call of `encode()` (an encoder memory, or a `HardEncoding`)."""
  return lambda: jax.block_until_ready(encode())


def train_call(module, params, batch, gated):
  """A blocking call running one jitted train step (state carried between calls)."""
  tx = optimizers.adafactor(1e-3)
  alpha = jnp.float32(1e-2)  # the regularizer's weight: its value does not change the cost

  def loss(p):
    if not gated:
      return losses.loss_fn(module, p, batch)[0]
    logits, state = module.apply(
      {"params": p},
      batch["encoder_input_tokens"],
      batch["decoder_input_tokens"],
      mutable=["intermediates"],
    )
    ce, _ = losses.compute_loss(logits, batch["decoder_target_tokens"])
    gate_BS = mrt5.gate_values(state["intermediates"])
    return ce + mrt5.gate_regularizer(gate_BS, batch["encoder_input_tokens"] > 0, alpha)

  @jax.jit
  def step(params, opt_state):
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  state = [params, tx.init(params)]

  def run():
    state[0], state[1], value = step(state[0], state[1])
    value.block_until_ready()

  return run


def _ints(text):
  return [int(x) for x in text.split(",") if x]


def _floats(text):
  return [float(x) for x in text.split(",") if x]


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", choices=sorted(SIZES), default="small")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--input_length", type=int, default=1024)
  p.add_argument("--decode_lengths", type=_ints, default=[32, 256], help="comma-separated")
  p.add_argument("--deltas", type=_floats, default=[0.5, 0.75], help="deleted fractions")
  p.add_argument("--bucket", type=int, default=64, help="hard_encode's bucket")
  p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
  p.add_argument("--iters", type=int, default=3, help="timed rounds (interleaved)")
  # batch 4 at 1024 bytes peaked at 18 GB resident on a CPU (two models' train states)
  p.add_argument("--train_batch", type=int, default=2)
  p.add_argument("--train_inputs", type=int, default=1024)
  p.add_argument(
    "--train_targets", type=int, default=189, help="ByT5's span corruption: 1024 -> 189"
  )
  p.add_argument("--no_train", action="store_true", help="skip the train-step rows")
  args = p.parse_args(argv)
  for name in (
    "batch",
    "input_length",
    "bucket",
    "iters",
    "train_batch",
    "train_inputs",
    "train_targets",
  ):
    if getattr(args, name) < 1:
      p.error(f"--{name}={getattr(args, name)}; expected a positive integer")
  if not args.decode_lengths or min(args.decode_lengths) < 1:
    p.error(f"--decode_lengths={args.decode_lengths}; expected positive integers, e.g. 32,256")
  if not args.deltas or not all(0 < d < 1 for d in args.deltas):
    p.error(f"--deltas={args.deltas}; expected fractions in (0, 1), e.g. 0.5,0.75")
  return args


def _fmt_delta(d):
  return f"{d:g}"


def main(argv=None):
  args = parse_args(argv)
  base, gate_layer = SIZES[args.size]
  plain_cfg = base.replace(dtype=args.dtype)
  gated_cfg = plain_cfg.replace(delete_gate_layer=gate_layer, **GATE)
  plain, gated = Transformer(plain_cfg), Transformer(gated_cfg)
  no_eos = plain_cfg.vocab_size  # never generated, so every row decodes the full length
  B, S = args.batch, args.input_length
  enc_BS = random_bytes(B, S, seed=0)
  calib_BS = random_bytes(B, S, seed=1)

  # params do not depend on the lengths: init on a short batch; the plain model's are the gated
  # model's without the gate, so the two differ only by it.
  short = jnp.full((1, 4), BYTE_OFFSET, jnp.int32)
  params = jax.device_put(
    nn.unbox(jax.jit(gated.init)(jax.random.PRNGKey(0), short, short)["params"])
  )
  plain_params = {
    **params,
    "encoder": {k: v for k, v in params["encoder"].items() if k != "delete_gate"},
  }

  real_BS = enc_BS > 0
  gates = {}  # δ: (params, deleted fraction, largest kept count in a row, S')
  for d in args.deltas:
    p = gate_deleting(gated, params, calib_BS, d)
    g_BS = gate_values(gated, p, enc_BS)
    deleted = float(mrt5.deleted_fraction(g_BS, real_BS, gated_cfg.gate_threshold))
    kept = int(jnp.max(jnp.sum((g_BS > gated_cfg.gate_threshold) & real_BS, axis=1)))
    hard = mrt5.hard_deletion_module(gated, p, enc_BS, bucket=args.bucket)
    gates[d] = (p, deleted, kept, hard)

  rows, result = [], {"bench": "mrt5"}
  for L in args.decode_lengths:
    fns = {"no gate": decode_call(lambda: (plain, None), plain_params, enc_BS, L, no_eos)}
    for d, (p, *_) in gates.items():
      once = lambda p=p: mrt5.hard_encode(gated, p, enc_BS, bucket=args.bucket)
      twice = lambda p=p: (mrt5.hard_deletion_module(gated, p, enc_BS, bucket=args.bucket), None)
      fns[f"δ={_fmt_delta(d)}"] = decode_call(once, p, enc_BS, L, no_eos)
      fns[f"δ={_fmt_delta(d)} early layers twice"] = decode_call(twice, p, enc_BS, L, no_eos)
    times = time_interleaved(fns, rounds=args.iters)
    t0 = times["no gate"]
    rows.append([L, "no gate", 0.0, "", S, t0, 1.0])
    result[f"no_gate_s_decode{L}"] = t0
    for d, (_, deleted, kept, hard) in gates.items():
      name = f"δ={_fmt_delta(d)}"
      for run, key in ((name, ""), (f"{name} early layers twice", "_twice")):
        rows.append([L, run, deleted, kept, hard.kept_length, times[run], t0 / times[run]])
        result[f"speedup_at_{_fmt_delta(d)}{key}_decode{L}"] = t0 / times[run]
  # the encoder alone
  plain_encode = jax.jit(lambda p, e: plain.apply({"params": p}, e, method="encode"))
  fns = {"no gate": encode_call(lambda: plain_encode(plain_params, enc_BS))}
  for d, (p, *_) in gates.items():
    fns[f"δ={_fmt_delta(d)}"] = encode_call(
      lambda p=p: mrt5.hard_encode(gated, p, enc_BS, bucket=args.bucket).memory
    )
  times = time_interleaved(fns, rounds=args.iters)
  t0 = times["no gate"]
  rows.append([0, "no gate", 0.0, "", S, t0, 1.0])
  result["no_gate_s_encode"] = t0
  for d, (_, deleted, kept, hard) in gates.items():
    name = f"δ={_fmt_delta(d)}"
    rows.append([0, name, deleted, kept, hard.kept_length, times[name], t0 / times[name]])
    result[f"encoder_speedup_at_{_fmt_delta(d)}"] = t0 / times[name]
  first = args.decode_lengths[0]
  for d, (_, deleted, kept, hard) in gates.items():
    key = _fmt_delta(d)
    result[f"speedup_at_{key}"] = result[f"speedup_at_{key}_decode{first}"]
    result[f"deleted_fraction_at_{key}"] = deleted
    result[f"max_kept_at_{key}"] = kept
    result[f"kept_length_at_{key}"] = hard.kept_length

  print(
    f"byt5-{args.size} encode + greedy decode, batch {B}, {S} input bytes, {args.dtype} "
    f"activations, gate at encoder layer {gate_layer}, hard deletion bucket {args.bucket}, "
    f"median of {args.iters} interleaved rounds, {jax.devices()[0].device_kind}; "
    "decode bytes 0: the encoder alone"
  )
  print_table(["decode bytes", "run", "deleted", "max kept/row", "S'", "s", "speedup"], rows)

  if not args.no_train:
    batch = {
      k: jnp.asarray(v)
      for k, v in make_batch(
        plain_cfg, args.train_batch, args.train_inputs, args.train_targets
      ).items()
    }
    times = time_interleaved(
      {
        "no gate": train_call(plain, plain_params, batch, gated=False),
        "gate, soft deletion": train_call(gated, params, batch, gated=True),
      },
      rounds=args.iters,
    )
    overhead = times["gate, soft deletion"] / times["no gate"] - 1
    print(
      f"\ntrain step (forward, backward, Adafactor), batch {args.train_batch}, "
      f"{args.train_inputs}/{args.train_targets} bytes; the gated loss adds the gate regularizer"
    )
    print_table(
      ["train step", "s/step", "vs no gate"],
      [[name, t, t / times["no gate"]] for name, t in times.items()],
    )
    result["train_step_no_gate_s"] = times["no gate"]
    result["train_step_soft_deletion_s"] = times["gate, soft deletion"]
    result["soft_deletion_train_overhead"] = overhead
  emit_json(result)


if __name__ == "__main__":
  main()
