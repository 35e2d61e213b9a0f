"""Train-step speed: xt5 (float32 and bf16 activations) vs HF PyTorch T5 on the same shapes.

  python -m bench.train_step [--batch 8 --inputs 512 --targets 114 --iters 3]

T5.1.1-small shapes, Adafactor on both sides, no padding. HF runs in a child process of this
script (see `bench.util.PeerProcess`), its steps interleaved with ours. Also measures this
machine's fp32 matmul ceiling (the faster of XLA and PyTorch on a large square matmul) so the
GFLOP/s column reads as a fraction of what the hardware gives. Ends with one JSON line.

On an accelerator (JAX's default backend is not the CPU) it runs as it is, without the HF peer:
xt5 with the default kernels (the 'reference' path there, `T5Config.kernels`) in float32 and bf16,
and bf16 with the CPU-tuned kernels for comparison, each as MFU against the chip's datasheet bf16
peak (`trainer.metrics.peak_flops_per_device`; the measured fp32 matmul rate for an unknown chip).

Run as a script, it restarts once under glibc malloc tunables (models/runtime.py); the
HF child inherits that environment, so both sides run under the same allocator settings.
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

from bench.util import PeerProcess, emit_json, print_table, time_calls, time_interleaved
from models import flops, formats, layers, losses
from models.config import T5Config
from models.network import Transformer
from trainer import metrics, optimizers

MODELS = {
  "small": T5Config(),  # T5.1.1-small: 512 d_model, 6 heads, 8+8 layers, d_ff 1024, GEGLU
  # a few-KB model: exercises the whole script in seconds (tests/bench), measures nothing; one
  # layer a side, since compiling each layer is most of the scripts' time on it
  "tiny": T5Config(
    vocab_size=128,
    d_model=32,
    num_heads=2,
    head_dim=16,
    d_ff=64,
    num_encoder_layers=1,
    num_decoder_layers=1,
  ),
}
CEILING_N = 2048  # the square matmul that measures the machine's fp32 ceiling (--ceiling-n)


def make_batch(cfg, batch, inputs_len, targets_len, seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, cfg.vocab_size, (batch, inputs_len)).astype(np.int32)
  tgt = rng.integers(2, cfg.vocab_size, (batch, targets_len)).astype(np.int32)
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt}


def xt5_step(cfg, batch_np):
  """A blocking call running one jitted xt5 train step (state carried between calls)."""
  module = Transformer(cfg)
  tx = optimizers.adafactor(1e-3)  # T5X's defaults
  batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
  params = nn.unbox(
    jax.jit(module.init)(
      jax.random.PRNGKey(0), batch["encoder_input_tokens"], batch["decoder_input_tokens"]
    )["params"]
  )
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch):
    grad_fn = jax.value_and_grad(lambda p: losses.loss_fn(module, p, batch), has_aux=True)
    (loss, _), grads = grad_fn(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  state = [params, opt_state]

  def run():
    state[0], state[1], loss = step(state[0], state[1], batch)
    loss.block_until_ready()

  return run


def hf_model(cfg):
  """HF PyTorch `T5ForConditionalGeneration` of `cfg`'s shapes, seeded random init (peer side)."""
  import torch
  import transformers

  torch.manual_seed(0)
  return transformers.T5ForConditionalGeneration(
    transformers.T5Config(**formats.hf.hf_config_dict(cfg))
  )


def hf_step(cfg, batch_np, bf16_autocast):
  """A blocking call running one HF PyTorch train step."""
  import torch

  model = hf_model(cfg).train()
  opt = torch.optim.Adafactor(model.parameters(), lr=1e-3)
  enc = torch.as_tensor(batch_np["encoder_input_tokens"], dtype=torch.long)
  labels = torch.as_tensor(batch_np["decoder_target_tokens"], dtype=torch.long)

  def run():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast):
      loss = model(input_ids=enc, attention_mask=enc != 0, labels=labels).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  return run


def hf_peer(cfg_dict, batch_np, ceiling_n=CEILING_N):
  """Child-process factory: the HF train steps and PyTorch's matmul for the ceiling."""
  import torch

  cfg = T5Config.from_dict(cfg_dict)
  ta = torch.randn(ceiling_n, ceiling_n)
  return {
    "hf fp32": hf_step(cfg, batch_np, bf16_autocast=False),
    "hf bf16-autocast": hf_step(cfg, batch_np, bf16_autocast=True),
    "torch matmul": lambda: time_calls(lambda: ta @ ta, warmup=2, iters=10, best=True),
  }


def fp32_matmul_ceiling(peer: PeerProcess, n: int = CEILING_N):
  """GFLOP/s of an n×n×n fp32 matmul, the better of XLA and PyTorch (each at its best)."""
  xla = metrics.measure_host_matmul_flops(n, iters=10, warmup=2)
  torch = 2 * n**3 / peer["torch matmul"]()
  return max(xla, torch) / 1e9


def accelerator_main(args, cfg, batch_np, step_flops, target_tokens):
  """The GPU/TPU run: xt5 only, MFU against the datasheet bf16 peak."""
  device = jax.devices()[0]
  peak = metrics.peak_flops_per_device(device)
  peak_what = f"{device.device_kind} bf16 peak"
  if peak is None:
    peak = metrics.measure_host_matmul_flops(args.ceiling_n, iters=10, warmup=2)
    peak_what = f"measured fp32 matmul on {device.device_kind}"
  times = time_interleaved(
    {
      "xt5 fp32": xt5_step(cfg, batch_np),
      "xt5 bf16": xt5_step(cfg.replace(dtype="bfloat16"), batch_np),
      "xt5 bf16 cpu-kernels": xt5_step(cfg.replace(dtype="bfloat16", kernels="cpu"), batch_np),
    },
    rounds=args.iters,
  )
  rows = [
    [name, t, target_tokens / t, step_flops / t / 1e12, step_flops / t / peak]
    for name, t in times.items()
  ]
  print(
    f"t5.1.1-{args.model} train step, batch {args.batch}, inputs {args.inputs}, targets "
    f"{args.targets}, Adafactor; {step_flops / 1e9:.1f} matmul GFLOP/step; {peak_what} "
    f"{peak / 1e12:.0f} TFLOP/s; default kernels: {layers.resolve_kernels(cfg.kernels)}"
  )
  print_table(["run", "s/step", "target tok/s", "TFLOP/s", "MFU"], rows)
  emit_json(
    {
      "bench": "train_step",
      "backend": jax.default_backend(),
      "device_kind": device.device_kind,
      "xt5_fp32_s": times["xt5 fp32"],
      "xt5_bf16_s": times["xt5 bf16"],
      "xt5_bf16_cpu_kernels_s": times["xt5 bf16 cpu-kernels"],
      "mfu_fp32": step_flops / times["xt5 fp32"] / peak,
      "mfu_bf16": step_flops / times["xt5 bf16"] / peak,
      "mfu_bf16_cpu_kernels": step_flops / times["xt5 bf16 cpu-kernels"] / peak,
      "peak_tflops": peak / 1e12,
    }
  )


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", choices=sorted(MODELS), default="small")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=512)
  p.add_argument("--targets", type=int, default=114)
  p.add_argument("--iters", type=int, default=3, help="timed rounds (interleaved)")
  p.add_argument(
    "--ceiling-n",
    type=int,
    default=CEILING_N,
    help="side of the square fp32 matmul that measures the machine's ceiling",
  )
  args = p.parse_args(argv)

  cfg = MODELS[args.model]
  batch_np = make_batch(cfg, args.batch, args.inputs, args.targets)
  step_flops = flops.train_step_matmul_flops(cfg, args.batch, args.inputs, args.targets)
  target_tokens = args.batch * args.targets
  if jax.default_backend() != "cpu":
    return accelerator_main(args, cfg, batch_np, step_flops, target_tokens)
  peer = PeerProcess("bench.train_step:hf_peer", cfg.to_dict(), batch_np, args.ceiling_n)
  try:
    ceiling = fp32_matmul_ceiling(peer, args.ceiling_n)
    times = time_interleaved(
      {
        "xt5 fp32": xt5_step(cfg, batch_np),
        "hf fp32": peer["hf fp32"],
        "xt5 bf16": xt5_step(cfg.replace(dtype="bfloat16"), batch_np),
        "hf bf16-autocast": peer["hf bf16-autocast"],
      },
      rounds=args.iters,
    )
  finally:
    peer.close()
  rows = [
    [name, t, target_tokens / t, step_flops / t / 1e9, step_flops / t / 1e9 / ceiling]
    for name, t in times.items()
  ]
  print(
    f"t5.1.1-{args.model} train step, batch {args.batch}, inputs {args.inputs}, targets "
    f"{args.targets}, Adafactor; {step_flops / 1e9:.1f} matmul GFLOP/step; fp32 matmul "
    f"ceiling {ceiling:.1f} GFLOP/s on {jax.devices()[0].device_kind}"
  )
  print_table(["run", "s/step", "target tok/s", "GFLOP/s", "of ceiling"], rows)
  best_xt5 = min(times["xt5 fp32"], times["xt5 bf16"])
  emit_json(
    {
      "bench": "train_step",
      "backend": "cpu",
      "xt5_fp32_s": times["xt5 fp32"],
      "xt5_bf16_s": times["xt5 bf16"],
      "hf_fp32_s": times["hf fp32"],
      "hf_bf16_s": times["hf bf16-autocast"],
      "ratio_vs_hf_fp32": times["hf fp32"] / times["xt5 fp32"],
      "ratio_vs_hf_bf16": times["hf bf16-autocast"] / times["xt5 bf16"],
      "fraction_of_fp32_ceiling": step_flops / best_xt5 / 1e9 / ceiling,
      "fp32_ceiling_gflops": ceiling,
    }
  )


if __name__ == "__main__":
  main()
