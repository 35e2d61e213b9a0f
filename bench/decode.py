"""Decoding speed: xt5 greedy and 4-beam search vs HF `generate` on the same weights.

  python -m bench.decode [--batch 8 --inputs 128 --new-tokens 64 --iters 3]

T5.1.1-small shapes, float32 on both sides, random weights (HF's init, converted to xt5 params).
EOS is disabled on both sides (HF: `min_new_tokens`; xt5: an EOS id outside the vocabulary), so
every run produces exactly `--new-tokens` tokens per sequence. Ends with one JSON line.
"""

from __future__ import annotations

import argparse

from models import runtime

runtime.configure()  # before JAX starts its backend


import jax
import numpy as np

from bench.util import emit_json, print_table, time_interleaved
from models import convert, decoding
from models.network import Transformer


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=128)
  p.add_argument("--new-tokens", type=int, default=64)
  p.add_argument("--beams", type=int, default=4)
  p.add_argument("--iters", type=int, default=3)
  args = p.parse_args(argv)

  import torch
  import transformers

  hf_cfg = transformers.T5Config(
      vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8,
      num_heads=6, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  torch.manual_seed(0)
  hf = transformers.T5ForConditionalGeneration(hf_cfg).eval()
  cfg = convert.config_from_hf(hf_cfg)
  # on the device once: the converter returns (often non-contiguous) numpy arrays.
  params = jax.device_put(convert.params_from_hf_state_dict(hf.state_dict(), cfg))
  module = Transformer(cfg)

  rng = np.random.default_rng(0)
  enc_np = rng.integers(2, cfg.vocab_size, (args.batch, args.inputs)).astype(np.int32)
  enc_t = torch.as_tensor(enc_np, dtype=torch.long)
  no_eos = cfg.vocab_size  # never generated, so every row runs the full length
  L = args.new_tokens

  def ours(method):
    def run():
      out = decoding.decode(module, params, {"encoder_input_tokens": enc_np}, method=method,
                            max_decode_length=L, num_beams=args.beams, eos_id=no_eos)
      jax.block_until_ready(out)
    return run

  def theirs(num_beams):
    def run():
      with torch.inference_mode():
        out = hf.generate(input_ids=enc_t, attention_mask=enc_t != 0, do_sample=False,
                          num_beams=num_beams, max_new_tokens=L, min_new_tokens=L)
      assert out.shape[1] == L + 1, out.shape  # start token + L new ones
    return run

  times = time_interleaved({
      "xt5 greedy": ours("greedy"),
      "hf greedy": theirs(1),
      f"xt5 beam{args.beams}": ours("beam"),
      f"hf beam{args.beams}": theirs(args.beams),
  }, rounds=args.iters)
  new_tokens = args.batch * L
  print(f"t5.1.1-small decoding, batch {args.batch}, {args.inputs} input tokens, {L} new "
        f"tokens, float32, {jax.devices()[0].device_kind}")
  print_table(["run", "s", "new tokens/s"], [[k, t, new_tokens / t] for k, t in times.items()])
  emit_json({
      "bench": "decode",
      **{k.replace(" ", "_") + "_tok_s": new_tokens / t for k, t in times.items()},
      "ratio_vs_hf_greedy": times["hf greedy"] / times["xt5 greedy"],
      "ratio_vs_hf_beam": times[f"hf beam{args.beams}"] / times[f"xt5 beam{args.beams}"],
  })


if __name__ == "__main__":
  main()
