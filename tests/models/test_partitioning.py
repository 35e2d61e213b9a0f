"""Sharding proofs for models/partitioning.py on 8 fake CPU devices (see tests/conftest.py).

A tiny T5.1.1 (d_model 128 so the MLP kernels are big enough for Adafactor to factor them) is
initialised once, sharded (FSDP); its host copy feeds a single-device reference train step and
sharded train steps under every rule set, which must agree to 1e-5 relative to each leaf's scale.
"""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from models import losses, network
from models import partitioning as pt
from models.config import T5Config

CFG = T5Config(
  vocab_size=256,
  d_model=128,
  num_heads=4,
  head_dim=16,
  d_ff=256,
  num_encoder_layers=2,
  num_decoder_layers=2,
)
B, L = 8, 16
RTOL = 1e-5  # max |sharded - reference| <= RTOL * max |reference|, per leaf


def adafactor():  # T5X's defaults, as trainer.optimizers.adafactor
  return optax.adafactor(
    1e-2,
    decay_rate=0.8,
    clipping_threshold=1.0,
    multiply_by_parameter_scale=True,
    momentum=None,
    min_dim_size_to_factor=128,
  )


def assert_close(actual, expected, what):
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, jax.tree_util.keystr(path))
    scale = max(np.abs(b).max(initial=0.0), 1e-30)
    err = np.abs(a - b).max(initial=0.0)
    assert err <= RTOL * scale, f"{what}{jax.tree_util.keystr(path)}: {err} vs scale {scale}"


def specs(shardings):
  return jax.tree.map(lambda s: s.spec, shardings)


@pytest.fixture(scope="module")
def model():
  return network.Transformer(CFG)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  lengths = rng.integers(L // 2, L + 1, size=(2, B))
  mask = [np.arange(L)[None] < n[:, None] for n in lengths]  # some right padding
  tok = lambda m: (rng.integers(1, CFG.vocab_size, (B, L)) * m).astype(np.int32)
  targets = tok(mask[1])
  return {
    "encoder_input_tokens": tok(mask[0]),
    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": mask[1].astype(np.float32),
  }


@pytest.fixture(scope="module")
def abstract(model, batch):
  return pt.abstract_params(model, batch)


@pytest.fixture(scope="module")
def fsdp_init(model, batch):
  mesh = pt.make_mesh(data=8)
  params, shardings = pt.Placement(mesh, "fsdp").init_params(model, jax.random.key(0), batch)
  return mesh, params, shardings


@pytest.fixture(scope="module")
def host_params(fsdp_init):
  return jax.device_get(fsdp_init[1])


def make_train_step(model, tx):
  def step(params, opt_state, batch):
    grad_fn = jax.value_and_grad(lambda p: losses.loss_fn(model, p, batch), has_aux=True)
    (loss, _), grads = grad_fn(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return loss, grads, optax.apply_updates(params, updates), opt_state

  return step


@pytest.fixture(scope="module")
def reference(model, host_params, batch):
  """One train step on a single device (no mesh, no rules)."""
  tx = adafactor()
  dev = jax.devices()[0]
  params = jax.device_put(host_params, dev)
  out = jax.jit(make_train_step(model, tx))(params, tx.init(params), jax.device_put(batch, dev))
  assert all(x.sharding.device_set == {dev} for x in jax.tree.leaves(out))
  return jax.device_get(out)


# ----------------------------------------------------------------------------------------------
# Mesh


def test_make_mesh_shapes_and_axis_types():
  m = pt.make_mesh(data=8)
  assert m.axis_names == ("data", "model") and tuple(m.devices.shape) == (8, 1)
  assert m.axis_types == (AxisType.Auto,) * 2
  assert dict(pt.make_mesh(data=-1, model=2).shape) == {"data": 4, "model": 2}
  assert dict(pt.make_mesh({"data": 4, "model": 2}).shape) == {"data": 4, "model": 2}
  m3 = pt.make_mesh((2, 2, 2))
  assert m3.axis_names == ("replica", "data", "model") and m3.axis_types == (AxisType.Auto,) * 3
  assert dict(pt.make_mesh(replica=2, model=2).shape) == {"replica": 2, "data": 2, "model": 2}
  assert pt.make_mesh(data=4, devices=jax.devices()[:4]).devices.size == 4


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(data=3),
    dict(data=-1, model=3),
    dict(data=2, model=2),
    dict(data=-1, model=-1),
    dict(data=0),
  ],
)
def test_bad_mesh_shape_is_a_clear_error(kwargs):
  with pytest.raises(ValueError, match=r"mesh shape \{'replica': 1, 'data'") as e:
    pt.make_mesh(**kwargs)
  if kwargs not in (dict(data=-1, model=-1), dict(data=0)):
    assert "8 devices" in str(e.value)  # names the device count


def test_unknown_mesh_axis_is_an_error():
  with pytest.raises(ValueError, match="unknown mesh axes"):
    pt.make_mesh({"data": 8, "tensor": 1})


# ----------------------------------------------------------------------------------------------
# Rules


@pytest.mark.parametrize("name", sorted(pt.RULES))
def test_activation_batch_keeps_data_axis(name):
  """flax skips a mesh axis already used in a spec, in rule order: with 'batch' first, FSDP's
  ('embed', 'data') cannot steal 'data' from the batch of a [B, L, D] activation."""
  for mesh, batch_axes in (
    (pt.make_mesh(data=4, model=2), "data"),
    (pt.make_mesh((2, 2, 2)), ("replica", "data")),
  ):
    rules = pt.logical_axis_rules(name, mesh)
    assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P(batch_axes, None, None)
    assert nn.logical_to_mesh_axes(("batch", "length", "mlp"), rules)[0] == batch_axes
    assert pt.Placement(mesh, name).batch_sharding.spec == P(batch_axes, None)
  # The trap this order avoids: 'embed' listed before 'batch' shards D and replicates B.
  bad = (("embed", "data"), ("batch", "data"))
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), bad) == P(None, None, "data")


def test_shape_aware_alternatives_and_layers_rule():
  mesh = pt.make_mesh(data=4, model=2)
  box = lambda shape, names: nn.LogicallyPartitioned(
    jax.ShapeDtypeStruct(shape, jnp.float32), names
  )
  tree = {
    "a": box((90, 256), ("embed", "mlp")),
    "h": box((6, 64), ("heads", "kv")),
    "n": jnp.zeros(3),
  }
  # FSDP: 'embed' (90) does not divide 4, so the 'mlp' alternative takes 'data'.
  assert pt.Placement(mesh, "fsdp").logical_specs(tree) == {
    "a": P(None, "data"),
    "h": P(None, None),
    "n": P(),
  }
  # tensor: 6 heads split over model=2, but not over model=4, where they stay replicated.
  assert pt.Placement(mesh, "tensor").logical_specs(tree)["h"] == P("model", None)
  assert pt.Placement(pt.make_mesh(data=2, model=4), "tensor").logical_specs(tree)["h"] == P(
    None, None
  )
  with pytest.raises(ValueError, match="layers"):
    pt.logical_axis_rules((("batch", "data"), ("layers", "data")))
  with pytest.raises(ValueError, match="unknown partitioning rules"):
    pt.logical_axis_rules("zero3")


def test_tensor_rules_split_attention_and_mlp_over_model(abstract):
  s = specs(pt.Placement(pt.make_mesh(data=4, model=2), "tensor").param_shardings(abstract))
  for stack, attn in (
    ("encoder", "attention"),
    ("decoder", "self_attention"),
    ("decoder", "encoder_decoder_attention"),
  ):
    a = s[stack]["layers_0"][attn]
    assert a["query"] == a["key"] == a["value"] == P(None, "model", None)
    assert a["out"] == P("model", None, None)
    m = s[stack]["layers_0"]["mlp"]
    assert m["wi_0"] == m["wi_1"] == P(None, "model") and m["wo"] == P("model", None)
  assert s["token_embedder"]["embedding"] == P("model", None)
  assert s["decoder"]["logits_dense"] == P(None, "model")
  assert s["encoder"]["encoder_norm"]["scale"] == P(None)


def test_jit_bakes_rules_into_each_function():
  """flax's rules are not in jax's jit cache key: a plain jax.jit traced under one rule set
  keeps it under another. pt.jit owns its rules; `with mesh:` would make constraints no-ops."""
  mesh = pt.make_mesh(data=4, model=2)
  f = lambda x: nn.with_logical_constraint(x * 2, ("batch", "embed"))
  x = jnp.ones((8, 8))
  sharded = lambda y, spec: y.sharding.is_equivalent_to(NamedSharding(mesh, spec), y.ndim)
  assert sharded(pt.Placement(mesh, "fsdp").jit(f)(x), P("data", None))
  assert sharded(pt.Placement(mesh, (("batch", "model"),)).jit(f)(x), P("model", None))
  with pt.Placement(mesh, "fsdp").context():
    assert "sharding_constraint" in jax.jit(f).lower(x).as_text()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    with mesh, nn.logical_axis_rules(pt.logical_axis_rules("fsdp", mesh)):
      assert "sharding_constraint" not in jax.jit(f).lower(x).as_text()


# ----------------------------------------------------------------------------------------------
# Params and optimizer state


def test_fsdp_init_holds_an_eighth_per_device(fsdp_init, abstract):
  mesh, params, shardings = fsdp_init
  dev0 = jax.devices()[0]
  assert specs(jax.tree.map(lambda x: x.sharding, params)) == specs(shardings)
  total = on_dev0 = 0
  for (path, x), a in zip(
    jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(pt.unbox(abstract))
  ):
    assert x.shape == a.shape and x.dtype == a.dtype
    mine = sum(s.data.nbytes for s in x.addressable_shards if s.device == dev0)
    total, on_dev0 = total + x.nbytes, on_dev0 + mine
    if x.size >= 1024:  # every big param is split 8 ways
      assert mine * 8 == x.nbytes, jax.tree_util.keystr(path)
  assert total > 500_000
  assert on_dev0 <= 1.02 * total / 8, (on_dev0, total)


def test_adafactor_factored_state_specs(abstract):
  tx = adafactor()
  for mesh, name, wi, wo in (
    (pt.make_mesh(data=8), "fsdp", ("data", None), (None, "data")),
    (pt.make_mesh(data=4, model=2), "2d", ("data", "model"), ("model", "data")),
  ):
    psh = pt.Placement(mesh, name).param_shardings(abstract)
    osh = pt.opt_state_shardings(tx, abstract, psh)
    fs = osh[0]
    assert isinstance(fs, optax.FactoredState)
    assert fs.count.spec == P()
    # wi_0 [embed 128, mlp 256]: v_row drops the largest dim (mlp), v_col the other (embed).
    mlp = lambda t: t["encoder"]["layers_1"]["mlp"]
    assert psh["encoder"]["layers_1"]["mlp"]["wi_0"].spec == P(*wi)
    assert mlp(fs.v_row)["wi_0"].spec == P(wi[0]) and mlp(fs.v_col)["wi_0"].spec == P(wi[1])
    # wo [mlp 256, embed 128]: v_row drops mlp (dim 0), v_col drops embed (dim 1).
    assert mlp(fs.v_row)["wo"].spec == P(wo[1]) and mlp(fs.v_col)["wo"].spec == P(wo[0])
    assert mlp(fs.v)["wo"].spec == P()  # (1,) placeholder
    # Unfactored query [128, 4, 16]: full v gets the param's spec, placeholders replicated.
    q = lambda t: t["decoder"]["layers_0"]["self_attention"]["query"]
    assert q(fs.v).spec == q(psh).spec and q(fs.v_row).spec == q(fs.v_col).spec == P()


def test_adamw_state_mirrors_params(fsdp_init, abstract):
  mesh, params, psh = fsdp_init
  tx = optax.adamw(1e-3)
  osh = pt.opt_state_shardings(tx, abstract, psh)
  adam = osh[0]
  assert specs(adam.mu) == specs(adam.nu) == specs(psh) and adam.count.spec == P()
  state = jax.jit(tx.init, out_shardings=osh)(params)
  assert specs(jax.tree.map(lambda x: x.sharding, state)) == specs(osh)


# ----------------------------------------------------------------------------------------------
# Train step equivalence

CASES = [
  ("data_parallel", dict(data=8)),
  ("fsdp", dict(data=8)),
  ("tensor", dict(data=4, model=2)),
  ("2d", dict(data=4, model=2)),
  ("2d", dict(replica=2, data=2, model=2)),
]


@pytest.mark.parametrize(
  "rules,shape", CASES, ids=[f"{r}-{'x'.join(map(str, s.values()))}" for r, s in CASES]
)
def test_sharded_train_step_matches_single_device(
  rules, shape, model, abstract, host_params, batch, reference
):
  mesh = pt.make_mesh(**shape)
  tx = adafactor()
  psh = pt.Placement(mesh, rules).param_shardings(abstract)
  osh = pt.opt_state_shardings(tx, abstract, psh)
  bsh = pt.Placement(mesh, rules).batch_sharding
  params = jax.device_put(host_params, psh)
  opt_state = jax.jit(tx.init, out_shardings=osh)(params)
  step = pt.Placement(mesh, rules).jit(
    make_train_step(model, tx),
    in_shardings=(psh, osh, bsh),
    out_shardings=(NamedSharding(mesh, P()), psh, psh, osh),
  )
  loss, grads, new_params, new_opt = step(params, opt_state, batch)

  ref_loss, ref_grads, ref_params, ref_opt = reference
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=RTOL)
  assert_close(grads, ref_grads, "grads")
  assert_close(new_params, ref_params, "params")
  assert_close(new_opt, ref_opt, "opt_state")
  assert specs(jax.tree.map(lambda x: x.sharding, new_params)) == specs(psh)
  # the activation constraints reached the compiled program
  assert "sharding_constraint" in step.lower(params, opt_state, batch).as_text()
  q = new_params["encoder"]["layers_0"]["attention"]["query"].addressable_shards[0].data
  wi = new_params["decoder"]["layers_1"]["mlp"]["wi_0"].addressable_shards[0].data
  if rules == "tensor":  # Megatron: heads and d_ff split over model=2
    assert q.shape == (128, 2, 16) and wi.shape == (128, 128)
  elif rules == "data_parallel":
    assert q.shape == (128, 4, 16)


# ----------------------------------------------------------------------------------------------
# Scanned layers


def stack_layers(params, num_layers):
  """Unrolled layers_0..N-1 → one 'layers' subtree with a leading layer axis (scan layout)."""
  out = {k: v for k, v in params.items()}
  for stack, n in num_layers.items():
    sub = {k: v for k, v in params[stack].items() if not k.startswith("layers_")}
    sub["layers"] = jax.tree.map(
      lambda *xs: np.stack(xs), *[params[stack][f"layers_{i}"] for i in range(n)]
    )
    out[stack] = sub
  return out


def test_scan_layers_match_unrolled_under_2d_mesh(model, abstract, host_params, batch):
  scan_model = network.Transformer(CFG.replace(scan_layers=True))
  scan_abstract = pt.abstract_params(scan_model, batch)
  scan_params = stack_layers(
    host_params, {"encoder": CFG.num_encoder_layers, "decoder": CFG.num_decoder_layers}
  )
  assert jax.tree.structure(scan_params) == jax.tree.structure(pt.unbox(scan_abstract))
  assert [x.shape for x in jax.tree.leaves(scan_params)] == [
    x.shape for x in jax.tree.leaves(pt.unbox(scan_abstract))
  ]

  # 'layers' is never sharded, under any rule set or mesh; the rest matches the unrolled spec.
  for name, shape in CASES:
    mesh = pt.make_mesh(**shape)
    scan_specs = pt.Placement(mesh, name).logical_specs(scan_abstract)
    unrolled = pt.Placement(mesh, name).logical_specs(abstract)
    for stack in ("encoder", "decoder"):
      flat = jax.tree.leaves(scan_specs[stack]["layers"], is_leaf=lambda x: isinstance(x, P))
      assert flat and all(s[0] is None for s in flat)
      flat0 = jax.tree.leaves(unrolled[stack]["layers_0"], is_leaf=lambda x: isinstance(x, P))
      assert [tuple(s)[1:] for s in flat] == [tuple(s) for s in flat0]

  mesh, rules = pt.make_mesh(data=4, model=2), "2d"
  inputs = {k: v for k, v in batch.items() if k != "decoder_loss_weights"}
  bsh = pt.Placement(mesh, rules).batch_sharding
  logits = {}
  for m, ab, p in ((model, abstract, host_params), (scan_model, scan_abstract, scan_params)):
    psh = pt.Placement(mesh, rules).param_shardings(ab)
    fwd = pt.Placement(mesh, rules).jit(
      lambda p, x, m=m: m.apply({"params": p}, **x), in_shardings=(psh, bsh)
    )
    logits[m.config.scan_layers] = jax.device_get(fwd(jax.device_put(p, psh), inputs))
  assert logits[True].shape == (B, L, CFG.vocab_size)
  assert_close(logits[True], logits[False], "logits")


def test_per_layer_position_biases_shard_like_the_stack_bias(abstract, batch):
  """umT5's per-layer biases carry the stack bias's axes ('heads', 'relpos_buckets'), so every
  rule set places them as it places T5's; under scan the 'layers' axis stays unsharded."""
  cfg = CFG.replace(relative_attention_per_layer=True)
  for scan in (False, True):
    per_layer = pt.abstract_params(network.Transformer(cfg.replace(scan_layers=scan)), batch)
    for name, shape in CASES:
      placement = pt.Placement(pt.make_mesh(**shape), name)
      want = placement.logical_specs(abstract)
      got = placement.logical_specs(per_layer)
      for stack in ("encoder", "decoder"):
        spec = want[stack]["relpos_bias"]["rel_embedding"]
        if scan:
          assert got[stack]["layers"]["relpos_bias"]["rel_embedding"] == P(None, *spec)
        else:
          assert got[stack]["layers_1"]["relpos_bias"]["rel_embedding"] == spec
        assert "relpos_bias" not in got[stack]
