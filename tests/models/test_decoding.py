"""Decoding against references that use no cache: teacher-forced `apply` loops, exhaustive
enumeration (beam search), HF `generate` (greedy) and the sampling distribution itself.

Tiny float32 models (vocab 64 / 6, d_model 32, 2+2 layers). The output layer is scaled up so the
random models are confident enough for argmax chains, EOS and beam orderings to be meaningful.
"""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import decoding
from models.config import T5Config
from models.network import Transformer

EOS = 1


def tiny_config(architecture="encoder_decoder", scan_layers=False, vocab=64, per_layer=False):
  return T5Config(
    vocab_size=vocab,
    d_model=32,
    num_heads=2,
    head_dim=8,
    d_ff=48,
    num_encoder_layers=2,
    num_decoder_layers=2,
    architecture=architecture,
    scan_layers=scan_layers,
    relative_attention_per_layer=per_layer,
  )


@functools.cache
def make_model(
  architecture="encoder_decoder",
  scan_layers=False,
  vocab=64,
  seed=0,
  head_scale=4.0,
  eos_scale=1.0,
  per_layer=False,
):
  """(module, params) of a tiny random model, params drawn with NumPy at the network's shapes
  (no init compile). `head_scale` sharpens the output distribution; `eos_scale` (> 1) makes EOS
  likelier (for the EOS tests); `per_layer`: a position bias in every layer (umT5)."""
  cfg = tiny_config(architecture, scan_layers, vocab, per_layer)
  module = Transformer(cfg)
  dec = jnp.ones((2, 4), jnp.int32)
  enc = dec if architecture == "encoder_decoder" else None
  shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.PRNGKey(0), enc, dec)))
  rng = np.random.RandomState(seed)
  fan_in = {
    "query": cfg.d_model * cfg.head_dim,
    "key": cfg.d_model,
    "value": cfg.d_model,
    "out": cfg.inner_dim,
    "wi_0": cfg.d_model,
    "wi_1": cfg.d_model,
    "wo": cfg.d_ff,
    "logits_dense": cfg.d_model / head_scale**2,
    "embedding": 1,
    "rel_embedding": 1,
  }

  def draw(path, leaf):
    name = path[-1].key
    if name == "scale":  # norms: not all ones, so they matter
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
    return jnp.asarray(rng.normal(0, fan_in[name] ** -0.5, leaf.shape), jnp.float32)

  params = jax.tree_util.tree_map_with_path(draw, shapes["params"])
  if eos_scale != 1:
    head = params["decoder"]["logits_dense"]
    params["decoder"]["logits_dense"] = head.at[:, EOS].multiply(eos_scale)
  return module, params


@functools.cache
def _forward(module):
  """Jitted teacher-forced logits [B, T, V] (no cache)."""

  def f(params, enc, dec, causal):
    return module.apply(
      {"params": params},
      encoder_input_tokens=enc,
      decoder_input_tokens=dec,
      decoder_causal_attention=causal,
    )

  return jax.jit(f)


def forward(module, params, enc, dec_BT, prompt_len_B=None, prefix_lm=False):
  causal = None
  if prefix_lm:
    causal = (np.arange(dec_BT.shape[1])[None] < np.asarray(prompt_len_B)[:, None]).astype(np.int32)
  enc = None if enc is None else jnp.asarray(enc)
  return np.asarray(_forward(module)(params, enc, jnp.asarray(dec_BT), causal), np.float64)


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def reference_greedy(module, params, enc, prompts, L, prefix_lm=False):
  """No-cache greedy: each step runs the full network on the sequence so far (right-padded to a
  fixed width, which causality makes irrelevant, so one compile serves all steps)."""
  B = len(prompts)
  width = max(len(p) for p in prompts) + L
  seqs = [list(p) for p in prompts]
  plen = np.array([len(p) for p in prompts])
  out = np.zeros((B, L), np.int64)
  scores = np.zeros(B)
  done = np.zeros(B, bool)
  for j in range(L):
    dec = np.zeros((B, width), np.int32)
    for b, s in enumerate(seqs):
      dec[b, : len(s)] = s
    lp = log_softmax(forward(module, params, enc, dec, plen, prefix_lm))
    for b in range(B):
      if done[b]:
        continue
      row = lp[b, len(seqs[b]) - 1]
      tok = int(np.argmax(row))
      out[b, j], scores[b] = tok, scores[b] + row[tok]
      seqs[b].append(tok)
      done[b] = tok == EOS
  return out, scores


def sequence_logprob(module, params, enc, prompts, conts, prefix_lm=False):
  """Sum of log-probs [B] of each continuation up to and including its first EOS, and its
  length, computed with a teacher-forced forward pass."""
  conts = np.asarray(conts)
  B, L = conts.shape
  width = max(len(p) for p in prompts) + L
  dec = np.zeros((B, width), np.int32)
  lengths = np.full(B, L)
  for b in range(B):
    eos = np.flatnonzero(conts[b] == EOS)
    if eos.size:
      lengths[b] = eos[0] + 1
    p = len(prompts[b])
    dec[b, :p] = prompts[b]
    dec[b, p : p + L] = conts[b]
  plen = np.array([len(p) for p in prompts])
  lp = log_softmax(forward(module, params, enc, dec, plen, prefix_lm))
  total = np.zeros(B)
  for b in range(B):
    for j in range(lengths[b]):
      total[b] += lp[b, len(prompts[b]) - 1 + j, conts[b, j]]
  return total, lengths


def penalty(length, alpha=0.6):
  return ((5.0 + length) / 6.0) ** alpha


# Most encoder-decoder tests share these shapes, so they share compiled decoders.
B_ENC, S_ENC, L_ENC = 4, 8, 10


def encoder_batch(B=B_ENC, S=S_ENC, vocab=64, seed=0):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab, size=(B, S)).astype(np.int32)
  for b in range(B):
    enc[b, S - b :] = 0  # rows of different lengths, 0-padded
  return enc


def assert_pad_after_eos(tokens):
  for row in np.asarray(tokens).reshape(-1, np.asarray(tokens).shape[-1]):
    eos = np.flatnonzero(row == EOS)
    if eos.size:
      assert not row[eos[0] + 1 :].any(), row


# ----------------------------------------------------------------------------------------------
# Greedy: cache path == no-cache path; == HF generate


@pytest.mark.parametrize("scan_layers,per_layer", [(False, False), (True, False), (True, True)])
def test_greedy_encoder_decoder_matches_no_cache_reference(scan_layers, per_layer):
  module, params = make_model(scan_layers=scan_layers, per_layer=per_layer)
  enc, L = encoder_batch(), L_ENC
  out = decoding.greedy_decode(
    module, params, encoder_input_tokens=jnp.asarray(enc), max_decode_length=L
  )
  ref_tokens, ref_scores = reference_greedy(module, params, enc, [[0]] * len(enc), L)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref_tokens)
  np.testing.assert_allclose(np.asarray(out.scores), ref_scores, rtol=1e-5, atol=1e-5)
  assert len(set(ref_tokens.ravel().tolist())) >= 6  # a non-trivial chain
  # the entry point gives the same.
  tokens, scores = decoding.decode(
    module, params, {"encoder_input_tokens": enc}, max_decode_length=L
  )
  np.testing.assert_array_equal(np.asarray(tokens), ref_tokens)


PROMPTS = [[0], [0, 5, 9, 17], [12, 0, 33, 4, 50, 21]]  # lengths 1, 4, 6 (internal 0 kept)


def prompt_array(prompts, width):
  arr = np.zeros((len(prompts), width), np.int32)
  for b, p in enumerate(prompts):
    arr[b, : len(p)] = p
  return arr


@pytest.mark.parametrize(
  "scan_layers,prefix_lm,per_layer",
  [(False, False, False), (True, True, False), (False, True, False), (True, True, True)],
)
def test_greedy_decoder_only_prompts_match_no_cache_reference(scan_layers, prefix_lm, per_layer):
  module, params = make_model("decoder_only", scan_layers=scan_layers, seed=1, per_layer=per_layer)
  L = 8
  prompt_BP = prompt_array(PROMPTS, 7)  # one extra pad column: P > every prompt
  out = decoding.greedy_decode(
    module,
    params,
    decoder_prompt_tokens=jnp.asarray(prompt_BP),
    max_decode_length=L,
    prefix_lm=prefix_lm,
  )
  ref_tokens, ref_scores = reference_greedy(module, params, None, PROMPTS, L, prefix_lm)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref_tokens)
  np.testing.assert_allclose(np.asarray(out.scores), ref_scores, rtol=1e-5, atol=1e-5)
  assert len(set(ref_tokens.ravel().tolist())) >= 6
  # explicit lengths give the same as the derived ones.
  tokens, _ = decoding.decode(
    module,
    params,
    {"decoder_prompt_tokens": prompt_BP, "decoder_prompt_lengths": np.array([1, 4, 6], np.int32)},
    max_decode_length=L,
    prefix_lm=prefix_lm,
  )
  np.testing.assert_array_equal(np.asarray(tokens), ref_tokens)


def test_greedy_matches_hf_generate():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from models.formats import hf

  V, L = 64, L_ENC
  hf_cfg = transformers.T5Config(
    vocab_size=V,
    d_model=32,
    d_kv=8,
    num_heads=2,
    d_ff=48,
    num_layers=2,
    num_decoder_layers=2,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    dropout_rate=0.0,
    decoder_start_token_id=0,
    eos_token_id=1,
    pad_token_id=0,
  )
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(hf_cfg).eval()
  with torch.no_grad():
    # transformers 5 ties lm_head to `shared` even with tie_word_embeddings=False: untie it,
    # and make the head confident (random T5 init is nearly uniform).
    model.lm_head.weight = torch.nn.Parameter(torch.randn(V, 32) * 0.6)
    model.config.tie_word_embeddings = False
  assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
  assert not torch.equal(model.lm_head.weight, model.shared.weight)

  cfg = hf.config_from_hf(model.config, dropout_rate=0.0)
  assert not cfg.logits_via_embedding
  params = hf.params_from_hf_state_dict(model.state_dict(), cfg)
  enc = encoder_batch(seed=3)
  with torch.no_grad():
    x = torch.tensor(enc, dtype=torch.long)
    hf = model.generate(
      input_ids=x, attention_mask=(x > 0).long(), do_sample=False, num_beams=1, max_new_tokens=L
    ).numpy()[:, 1:]  # drop the start token
  hf = np.pad(hf, ((0, 0), (0, L - hf.shape[1])))  # HF stops when every row is done
  tokens, _ = decoding.decode(
    Transformer(cfg), params, {"encoder_input_tokens": enc}, max_decode_length=L
  )
  np.testing.assert_array_equal(np.asarray(tokens), hf)
  assert all(len(set(row) - {0}) >= 4 for row in hf.tolist()), hf


# ----------------------------------------------------------------------------------------------
# EOS handling and early stopping


def test_eos_pads_and_stops_early():
  module, params = make_model(seed=10, eos_scale=6.0)
  enc, L = encoder_batch(seed=5), L_ENC
  out = decoding.greedy_decode(
    module, params, encoder_input_tokens=jnp.asarray(enc), max_decode_length=L
  )
  tokens = np.asarray(out.tokens)
  ref_tokens, _ = reference_greedy(module, params, enc, [[0]] * len(enc), L)
  np.testing.assert_array_equal(tokens, ref_tokens)
  assert_pad_after_eos(tokens)
  lengths = [int(np.flatnonzero(row == EOS)[0]) + 1 for row in tokens]  # every row ends
  assert len(set(lengths)) >= 2, lengths  # ... at different steps
  # the loop ran only as far as the longest row, not to max_decode_length.
  assert int(out.num_steps) == max(lengths) < L

  sampled = decoding.temperature_sample(
    module,
    params,
    jax.random.PRNGKey(0),
    encoder_input_tokens=jnp.asarray(enc),
    max_decode_length=L,
  )
  assert_pad_after_eos(sampled.tokens)
  assert (np.asarray(sampled.tokens) == EOS).any()


# ----------------------------------------------------------------------------------------------
# Beam search


def test_beam_search_is_exact_on_a_tiny_vocabulary():
  """vocab 6, max length 4: enumerate every sequence (EOS-terminated or max-length), score it
  teacher-forced with the length penalty; with 128 beams (> the 5^3 live prefixes) beam search
  must return the exact top-128 list."""
  V, L, W = 6, 4, 128
  module, params = make_model(vocab=V, seed=4, head_scale=2.0)
  enc = encoder_batch(B=2, S=5, vocab=V, seed=1)
  seqs = []
  for n in range(1, L + 1):
    for body in itertools.product([t for t in range(V) if t != EOS], repeat=n - 1):
      for last in range(V):
        if n < L and last != EOS:
          continue
        seqs.append(list(body) + [last] + [0] * (L - n))
  seqs = np.array(seqs)  # 1 + 5 + 25 + 125 * 6 = 781 sequences
  assert len(seqs) == 781

  out = decoding.beam_search(
    module,
    params,
    encoder_input_tokens=jnp.asarray(enc),
    max_decode_length=L,
    num_beams=W,
    alpha=0.6,
  )
  # default 4 beams: not exact, but each score is the penalised log-prob of its own sequence.
  out4 = decoding.beam_search(
    module, params, encoder_input_tokens=jnp.asarray(enc), max_decode_length=L
  )
  for b in range(len(enc)):
    lp, lengths = sequence_logprob(
      module, params, np.repeat(enc[b : b + 1], len(seqs), 0), [[0]] * len(seqs), seqs
    )
    scores = lp / penalty(lengths)
    order = np.argsort(-scores, kind="stable")
    assert scores[order[0]] - scores[order[1]] > 1e-4  # a unique best
    np.testing.assert_array_equal(np.asarray(out.tokens[b, 0]), seqs[order[0]])
    np.testing.assert_allclose(np.asarray(out.scores[b]), scores[order[:W]], atol=1e-5)
    top = seqs[order[:W]]  # both kinds of ending compete: EOS before the limit, and the limit
    assert (top[:, -1] != EOS).any() and (top[:, : L - 1] == EOS).any()

    toks = np.asarray(out4.tokens[b])
    lp4, lengths4 = sequence_logprob(
      module, params, np.repeat(enc[b : b + 1], 4, 0), [[0]] * 4, toks
    )
    np.testing.assert_allclose(np.asarray(out4.scores[b]), lp4 / penalty(lengths4), atol=1e-5)
    assert float(out4.scores[b, 0]) <= scores[order[0]] + 1e-5


@pytest.mark.parametrize(
  "architecture,scan_layers,per_layer",
  [("encoder_decoder", True, False), ("decoder_only", False, False), ("decoder_only", True, True)],
)
def test_beam_scores_match_teacher_forcing(architecture, scan_layers, per_layer):
  """4 beams, alpha 0.6, vocab 64: every returned beam's score equals the length-penalised
  teacher-forced log-prob of its tokens (this checks the beam-reordered cache), and beams are
  distinct and sorted."""
  module, params = make_model(
    architecture, scan_layers=scan_layers, seed=5, eos_scale=2.0, per_layer=per_layer
  )
  L, W = 10, 4
  if architecture == "encoder_decoder":
    enc = encoder_batch(B=3, seed=2)
    prompts = [[0]] * 3
    batch = {"encoder_input_tokens": enc}
  else:
    enc, prompts = None, PROMPTS
    batch = {"decoder_prompt_tokens": prompt_array(PROMPTS, 6)}
  tokens, scores = decoding.decode(
    module, params, batch, method="beam", max_decode_length=L, return_all_beams=True
  )
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  assert tokens.shape == (3, W, L) and scores.shape == (3, W)
  assert_pad_after_eos(tokens)
  for w in range(W):
    lp, lengths = sequence_logprob(module, params, enc, prompts, tokens[:, w])
    np.testing.assert_allclose(scores[:, w], lp / penalty(lengths), atol=1e-5)
  assert (np.diff(scores, axis=1) <= 1e-6).all()
  for b in range(3):
    assert len({tuple(t) for t in tokens[b]}) == W
  best, best_scores = decoding.decode(module, params, batch, method="beam", max_decode_length=L)
  np.testing.assert_array_equal(np.asarray(best), tokens[:, 0])
  np.testing.assert_array_equal(np.asarray(best_scores), scores[:, 0])
  assert ((tokens == EOS).any(-1)).any() and (~(tokens == EOS).any(-1)).any()  # both endings

  if architecture == "encoder_decoder":
    # a model that ends sooner: every example's finished beams beat anything still alive
    # before max_decode_length, so the loop stops early; scores stay exact.
    module, params = make_model(architecture, scan_layers=scan_layers, seed=5, eos_scale=4.0)
    out = decoding.beam_search(
      module, params, encoder_input_tokens=jnp.asarray(enc), max_decode_length=L
    )
    assert int(out.num_steps) < L
    assert (np.asarray(out.tokens) == EOS).any(-1).all()
    for w in range(W):
      lp, lengths = sequence_logprob(module, params, enc, prompts, np.asarray(out.tokens[:, w]))
      np.testing.assert_allclose(np.asarray(out.scores[:, w]), lp / penalty(lengths), atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_copy_rows_copies_the_written_positions_of_each_row_exactly(dtype):
  """The beam cache move: rows dst[j] <- src[j] for j < count over the first `length`
  positions, bit for bit (bf16 goes through its uint16 bits). Other rows and cross-attention
  leaves are left alone; a copied row's positions past `length` are don't-cares (whole blocks
  are copied, and decoding rewrites those positions before reading them)."""
  rng = np.random.default_rng(0)
  R, H, N, K = 6, 2, 40, 3  # N > 2 blocks of _COPY_BLOCK, not a multiple of it
  draw = lambda: rng.standard_normal((R, H, N, K)).astype(np.float32)
  cache = {
    "layers_0": {
      "self_attention": {
        "cached_key": jnp.asarray(draw(), dtype),
        "cached_value": jnp.asarray(draw(), jnp.float32),
      },
      "encoder_decoder_attention": {"cached_key": jnp.asarray(draw(), dtype)},
    }
  }
  src, dst, count, length = np.array([0, 0, 4, 1, 1, 1]), np.array([2, 3, 5, 0, 0, 0]), 3, 37
  out = jax.jit(decoding._copy_rows, static_argnums=4)(
    cache, jnp.asarray(src), jnp.asarray(dst), count, length
  )
  bits = lambda x: np.asarray(x).view(np.uint8)
  for (path, before), after in zip(
    jax.tree_util.tree_leaves_with_path(cache), jax.tree_util.tree_leaves(out)
  ):
    assert after.dtype == before.dtype
    expected, after = bits(before).copy(), bits(after)
    if "encoder_decoder_attention" in jax.tree_util.keystr(path):
      np.testing.assert_array_equal(after, expected)
      continue
    for j in range(count):
      expected[dst[j], :, :length] = bits(before)[src[j], :, :length]
    untouched = np.setdiff1d(np.arange(R), dst[:count])
    np.testing.assert_array_equal(after[untouched], expected[untouched])
    np.testing.assert_array_equal(after[:, :, :length], expected[:, :, :length])


# ----------------------------------------------------------------------------------------------
# Sampling


def test_sampling_degenerate_cases_equal_greedy_and_keys_matter():
  module, params = make_model()
  enc, L = jnp.asarray(encoder_batch()), L_ENC
  greedy = decoding.greedy_decode(module, params, encoder_input_tokens=enc, max_decode_length=L)
  key = jax.random.PRNGKey(7)
  top1 = decoding.temperature_sample(
    module, params, key, encoder_input_tokens=enc, max_decode_length=L, temperature=1.5, top_k=1
  )
  tiny_p = decoding.temperature_sample(
    module, params, key, encoder_input_tokens=enc, max_decode_length=L, temperature=1.5, top_p=1e-6
  )
  for out in (top1, tiny_p):
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(greedy.tokens))
    np.testing.assert_allclose(np.asarray(out.scores), np.asarray(greedy.scores), rtol=1e-6)

  batch = {"encoder_input_tokens": np.asarray(enc)}
  sample = functools.partial(
    decoding.decode, module, params, batch, method="sample", max_decode_length=L, temperature=1.0
  )
  a, a_scores = sample(rng=jax.random.PRNGKey(1))
  a2, a2_scores = sample(rng=jax.random.PRNGKey(1))
  c, _ = sample(rng=jax.random.PRNGKey(2))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
  np.testing.assert_array_equal(np.asarray(a_scores), np.asarray(a2_scores))
  assert (np.asarray(a) != np.asarray(c)).any()
  # sampling scores are the model's log-probs of the sampled tokens.
  lp, _ = sequence_logprob(module, params, batch["encoder_input_tokens"], [[0]] * B_ENC, a)
  np.testing.assert_allclose(np.asarray(a_scores), lp, rtol=1e-5, atol=1e-5)


def _chi2(counts, probs):
  n = counts.sum()
  expected = n * probs
  big = expected >= 5  # merge the rare tokens into one cell
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  keep = exp > 0
  return float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep])), int(keep.sum()) - 1


def test_sample_frequencies_follow_tempered_softmax():
  """4096 rows of one input, one step: token counts match softmax(logits / T), and with top-k
  the renormalised top-k distribution (nothing outside it)."""
  module, params = make_model(head_scale=3.0)
  enc = encoder_batch(B=1)
  n, T = 4096, 0.5
  logits = forward(module, params, enc, np.zeros((1, 1), np.int32))[0, 0]
  batch = {"encoder_input_tokens": np.repeat(enc, n, 0)}
  for top_k in (0, 5):
    tokens, _ = decoding.decode(
      module,
      params,
      batch,
      method="sample",
      max_decode_length=1,
      temperature=T,
      top_k=top_k,
      rng=jax.random.PRNGKey(3),
    )
    counts = np.bincount(np.asarray(tokens)[:, 0], minlength=len(logits))
    z = logits / T
    if top_k:
      allowed = np.argsort(-logits)[:top_k]
      assert set(np.flatnonzero(counts)) <= set(allowed.tolist())
      z = np.where(np.isin(np.arange(len(z)), allowed), z, -np.inf)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    chi2, dof = _chi2(counts, probs)
    bound = dof + 6 * np.sqrt(2 * dof) + 10  # generous: mean dof, sd sqrt(2 dof)
    assert chi2 < bound, (chi2, dof)
    if not top_k:  # and the check can tell temperatures apart: T=1 is far off
      wrong = np.exp(logits - logits.max())
      wrong_chi2, wrong_dof = _chi2(counts, wrong / wrong.sum())
      assert wrong_chi2 > 4 * (wrong_dof + 6 * np.sqrt(2 * wrong_dof) + 10), wrong_chi2


# ----------------------------------------------------------------------------------------------
# Scoring


@pytest.mark.parametrize("architecture", ["encoder_decoder", "decoder_only"])
def test_score_sequences_matches_teacher_forced_log_softmax(architecture):
  module, params = make_model(architecture, seed=6)
  rng = np.random.RandomState(0)
  targets = rng.randint(2, 64, size=(3, 8)).astype(np.int32)
  targets[0, 5:] = 0
  targets[1, 3] = EOS
  targets[1, 4:] = 0
  dec_in = np.concatenate([np.zeros((3, 1), np.int32), targets[:, :-1]], axis=1)
  batch = {"decoder_target_tokens": targets}
  enc = None
  causal = None
  if architecture == "encoder_decoder":
    enc = batch["encoder_input_tokens"] = encoder_batch(B=3, seed=4)
  else:
    causal = batch["decoder_causal_attention"] = (
      (np.arange(8) < 3)[None].repeat(3, 0).astype(np.int32)
    )
  got = np.asarray(decoding.score_sequences(module, params, batch))
  lp = log_softmax(np.asarray(_forward(module)(params, enc, dec_in, causal), np.float64))
  want = [sum(lp[b, t, targets[b, t]] for t in range(8) if targets[b, t] > 0) for b in range(3)]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # explicit weights
  w = (targets > 0).astype(np.float32)
  w[:, 0] = 0
  got_w = np.asarray(decoding.score_sequences(module, params, dict(batch, decoder_loss_weights=w)))
  np.testing.assert_allclose(
    got_w, np.asarray(want) - lp[np.arange(3), 0, targets[:, 0]], rtol=1e-5
  )


def test_rejects_bad_arguments():
  module, params = make_model()
  enc = encoder_batch()
  with pytest.raises(ValueError, match="method"):
    decoding.decode(
      module, params, {"encoder_input_tokens": enc}, method="nope", max_decode_length=4
    )
  with pytest.raises(ValueError, match="rng"):
    decoding.decode(
      module, params, {"encoder_input_tokens": enc}, method="sample", max_decode_length=4
    )
  with pytest.raises(ValueError, match="encoder_input_tokens"):
    decoding.decode(module, params, {}, max_decode_length=4)
  dmodule, dparams = make_model("decoder_only", seed=1)
  with pytest.raises(ValueError, match="decoder_prompt_tokens"):
    decoding.decode(dmodule, dparams, {}, max_decode_length=4)
