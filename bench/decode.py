"""Decoding speed: xt5 greedy and 4-beam search vs HF `generate` on the same weights.

  python -m bench.decode [--batch 8 --inputs 128 --new-tokens 64 --iters 3]

T5.1.1-small shapes, float32 on both sides, random weights: HF's init, saved with
`save_pretrained` by the peer process and loaded here through `models.formats.hf.load_hf`. HF runs
in a child process of this script (see `bench.util.PeerProcess`), its calls interleaved with
ours. EOS is disabled on both sides (HF: `min_new_tokens`; xt5: an EOS id outside the
vocabulary), so every run produces exactly `--new-tokens` tokens per sequence. xt5 also decodes
with bfloat16 activations (the gin files' default; params stay float32) for reference; the
ratios compare float32 with float32. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

from models import runtime

runtime.configure(reexec=__name__ == "__main__")  # before JAX starts its backend

import jax
import numpy as np

from bench.train_step import MODELS, hf_model
from bench.util import PeerProcess, emit_json, print_table, time_interleaved
from models import decoding, formats
from models.config import T5Config
from models.network import Transformer


def hf_peer(cfg_dict, hf_dir, enc_np, new_tokens, beams):
  """Child-process factory: builds the HF model, saves it to `hf_dir`, returns generate calls."""
  import torch

  hf = hf_model(T5Config.from_dict(cfg_dict)).eval()
  hf.save_pretrained(hf_dir)
  enc_t = torch.as_tensor(enc_np, dtype=torch.long)

  def generate(num_beams):
    def run():
      with torch.inference_mode():
        out = hf.generate(
          input_ids=enc_t,
          attention_mask=enc_t != 0,
          do_sample=False,
          num_beams=num_beams,
          max_new_tokens=new_tokens,
          min_new_tokens=new_tokens,
        )
      assert out.shape[1] == new_tokens + 1, out.shape  # start token + the new ones

    return run

  return {"hf greedy": generate(1), f"hf beam{beams}": generate(beams)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", choices=sorted(MODELS), default="small")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=128)
  p.add_argument("--new-tokens", type=int, default=64)
  p.add_argument("--beams", type=int, default=4)
  p.add_argument("--iters", type=int, default=3, help="timed rounds (interleaved)")
  args = p.parse_args(argv)
  L = args.new_tokens

  model_cfg = MODELS[args.model]
  rng = np.random.default_rng(0)
  enc_np = rng.integers(2, model_cfg.vocab_size, (args.batch, args.inputs)).astype(np.int32)
  with tempfile.TemporaryDirectory() as hf_dir:
    peer = PeerProcess("bench.decode:hf_peer", model_cfg.to_dict(), hf_dir, enc_np, L, args.beams)
    try:
      cfg, params = formats.hf.load_hf(hf_dir)
      # on the device once: the converter returns (often non-contiguous) numpy arrays.
      params = jax.device_put(params)
      no_eos = cfg.vocab_size  # never generated, so every row runs the full length

      def ours(method, dtype="float32"):
        module = Transformer(dataclasses.replace(cfg, dtype=dtype))

        def run():
          out = decoding.decode(
            module,
            params,
            {"encoder_input_tokens": enc_np},
            method=method,
            max_decode_length=L,
            num_beams=args.beams,
            eos_id=no_eos,
          )
          jax.block_until_ready(out)

        return run

      times = time_interleaved(
        {
          "xt5 greedy": ours("greedy"),
          "hf greedy": peer["hf greedy"],
          f"xt5 beam{args.beams}": ours("beam"),
          f"hf beam{args.beams}": peer[f"hf beam{args.beams}"],
          "xt5 greedy bf16": ours("greedy", "bfloat16"),
          f"xt5 beam{args.beams} bf16": ours("beam", "bfloat16"),
        },
        rounds=args.iters,
      )
    finally:
      peer.close()

  new_tokens = args.batch * L
  print(
    f"t5.1.1-{args.model} decoding, batch {args.batch}, {args.inputs} input tokens, {L} new "
    f"tokens, float32 (xt5 also bf16 activations), {jax.devices()[0].device_kind}"
  )
  print_table(["run", "s", "new tokens/s"], [[k, t, new_tokens / t] for k, t in times.items()])
  emit_json(
    {
      "bench": "decode",
      **{k.replace(" ", "_") + "_tok_s": new_tokens / t for k, t in times.items()},
      "ratio_vs_hf_greedy": times["hf greedy"] / times["xt5 greedy"],
      "ratio_vs_hf_beam": times[f"hf beam{args.beams}"] / times[f"xt5 beam{args.beams}"],
    }
  )


if __name__ == "__main__":
  main()
