"""Tiny configs and helpers shared by the checkpoint-format tests."""

from __future__ import annotations

import jax
import numpy as np

from models.config import T5Config
from models.formats import tree

GATED = T5Config(
  vocab_size=64,
  d_model=24,
  num_heads=3,
  head_dim=4,
  d_ff=40,
  num_encoder_layers=3,
  num_decoder_layers=2,
  dropout_rate=0.0,
  dtype="float32",
)
RELU_TIED = GATED.replace(
  mlp_activations=("relu",), logits_via_embedding=True, num_encoder_layers=2
)
DECODER_ONLY = GATED.replace(architecture="decoder_only", num_encoder_layers=0)
# umT5 / T5X's scalable T5: a relative position bias in every layer.
UMT5 = GATED.replace(relative_attention_per_layer=True)


def random_params(cfg: T5Config, seed: int = 0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
    lambda s: rng.standard_normal(s.shape).astype(np.float32), tree.param_shapes(cfg)
  )


def assert_trees_equal(a, b):
  fa, fb = tree.flatten(a), tree.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))
