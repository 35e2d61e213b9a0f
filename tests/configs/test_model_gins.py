"""Every configs/models gin file parses and yields the published T5Config shapes."""

import gin
import pytest

import configs
from models import config as model_config

FAMILIES = ("t5_1_0", "t5_1_1", "mt5", "byt5", "umt5")
SIZES = ("tiny", "small", "base", "large", "xl", "xxl")
# umT5 was published in these sizes only (HF google/umt5-*, T5X's umT5 checkpoints).
FAMILY_SIZES = {f: SIZES for f in FAMILIES} | {"umt5": ("tiny", "small", "base", "xl", "xxl")}

# (d_model, num_heads, head_dim, num_encoder_layers, num_decoder_layers, d_ff): docs/design.md
# and the papers. T5.1.0 xl/xxl are the 3B/11B models: d_model 1024 with wide heads and MLPs.
T511_SHAPES = {
  "small": (512, 6, 64, 8, 8, 1024),
  "base": (768, 12, 64, 12, 12, 2048),
  "large": (1024, 16, 64, 24, 24, 2816),
  "xl": (2048, 32, 64, 24, 24, 5120),
  "xxl": (4096, 64, 64, 24, 24, 10240),
}
SHAPES = {
  "t5_1_0": {
    "tiny": (32, 2, 16, 2, 2, 128),
    "small": (512, 8, 64, 6, 6, 2048),
    "base": (768, 12, 64, 12, 12, 3072),
    "large": (1024, 16, 64, 24, 24, 4096),
    "xl": (1024, 32, 128, 24, 24, 16384),
    "xxl": (1024, 128, 128, 24, 24, 65536),
  },
  "t5_1_1": {"tiny": (32, 2, 16, 2, 2, 64), **T511_SHAPES},
  "mt5": {"tiny": (32, 2, 16, 2, 2, 64), **T511_SHAPES},
  "umt5": {"tiny": (32, 2, 16, 2, 2, 64), **T511_SHAPES},
  "byt5": {
    "tiny": (32, 2, 16, 3, 1, 64),
    "small": (1472, 6, 64, 12, 4, 3584),
    "base": (1536, 12, 64, 18, 6, 3968),
    "large": (1536, 16, 64, 36, 12, 3840),
    "xl": (2560, 32, 64, 36, 12, 6720),
    "xxl": (4672, 64, 64, 36, 12, 12352),
  },
}
# (vocab_size, mlp_activations, logits_via_embedding)
FAMILY_FIELDS = {
  "t5_1_0": (32128, ("relu",), True),
  "t5_1_1": (32128, ("gelu", "linear"), False),
  "mt5": (250112, ("gelu", "linear"), False),
  "byt5": (384, ("gelu", "linear"), False),
  "umt5": (256384, ("gelu", "linear"), False),  # 256000 pieces + 300 extra ids, padded
}


@pytest.fixture(autouse=True)
def _foreign_cwd(tmp_path, monkeypatch):
  # Outside the repo root gin must find the files through the `configs` package.
  monkeypatch.chdir(tmp_path)


def load(family, size, bindings=()):
  """Parses one model gin (plus bindings) and evaluates its MODEL_CONFIG macro."""
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([f"configs/models/{family}/{size}.gin"], list(bindings))
    # A macro `NAME = value` is stored as the binding `NAME/gin.macro.value`.
    ref = gin.query_parameter("MODEL_CONFIG/gin.macro.value")
    return ref.scoped_configurable_fn()
  finally:
    gin.clear_config()


@pytest.mark.parametrize(
  "family,size", [(f, s) for f in FAMILIES for s in FAMILY_SIZES[f]], ids="/".join
)
def test_published_shapes(family, size):
  cfg = load(family, size)
  assert isinstance(cfg, model_config.T5Config)
  got = (
    cfg.d_model,
    cfg.num_heads,
    cfg.head_dim,
    cfg.num_encoder_layers,
    cfg.num_decoder_layers,
    cfg.d_ff,
  )
  assert got == SHAPES[family][size]
  vocab, acts, tied = FAMILY_FIELDS[family]
  if (family, size) in (("mt5", "tiny"), ("umt5", "tiny")):
    vocab = 512  # (u)mT5 tiny trades the 250k vocab for speed.
  assert (cfg.vocab_size, cfg.mlp_activations, cfg.logits_via_embedding) == (vocab, acts, tied)
  assert cfg.dtype == ("float32" if size == "tiny" else "bfloat16")
  assert cfg.dropout_rate == 0.0
  assert (cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance) == (32, 128)
  # umT5's one difference from mT5's layers: a position bias in every layer
  assert cfg.relative_attention_per_layer == (family == "umt5")
  assert cfg.layer_norm_epsilon == 1e-6
  assert (cfg.architecture, cfg.scan_layers, cfg.remat_policy) == ("encoder_decoder", False, "none")


def test_t5_1_0_uses_4x_mlp():
  for size in ("tiny", "small", "base", "large"):
    cfg = load("t5_1_0", size)
    assert cfg.d_ff == 4 * cfg.d_model


@pytest.mark.parametrize("family", FAMILIES)
def test_macros_override(family):
  cfg = load(family, "small", ["DROPOUT_RATE = 0.1", "ACTIVATION_DTYPE = 'float32'"])
  assert (cfg.dropout_rate, cfg.dtype) == (0.1, "float32")
  # A direct field binding after the include wins too (what run gins and --gin.X flags do).
  assert load(family, "small", ["model_config.T5Config.scan_layers = True"]).scan_layers


def test_unknown_binding_names_the_bad_parameter():
  with pytest.raises(ValueError, match="d_modle"):
    load("t5_1_1", "small", ["model_config.T5Config.d_modle = 5"])


def test_every_gin_folder_is_a_package():
  # Gin resolves 'configs/a/b.gin' through the module configs.a; see configs/__init__.py.
  for gin_file in configs.CONFIG_DIR.rglob("*.gin"):
    assert (gin_file.parent / "__init__.py").is_file(), f"{gin_file.parent} lacks __init__.py"


@pytest.mark.parametrize(
  "size,shape",
  [
    ("tiny", (32, 2, 16, 2, 64)),
    ("small", (512, 6, 64, 8, 1024)),
    ("base", (768, 12, 64, 12, 2048)),
  ],
)
def test_decoder_only_gins_are_t5_1_1_layers_in_one_stack(size, shape):
  cfg = load("decoder_only", size)
  assert (cfg.architecture, cfg.num_encoder_layers) == ("decoder_only", 0)
  assert (cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.num_decoder_layers, cfg.d_ff) == shape
  assert (cfg.vocab_size, cfg.mlp_activations, cfg.logits_via_embedding) == (
    32128,
    ("gelu", "linear"),
    False,
  )


@pytest.mark.parametrize(
  "argv",
  [
    [
      "--gin_file=configs/models/decoder_only/small.gin",
      "--gin_file=configs/runs/pretrain.gin",
      "--gin.MODEL_DIR='/tmp/x'",
      "--gin.MIXTURE_OR_TASK_NAME='mono_prefix_lm'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 64}",
      "--gin.TRAIN_STEPS=10",
    ],
    ["--gin_file=configs/experiments/prefix_lm_quickstart.gin"],
  ],
)
def test_decoder_only_runs_parse(argv):
  import train

  args, bindings = train._parse_args(argv)
  try:
    train.parse_gin(args.gin_file, bindings)
    cfg = gin.query_parameter("MODEL_CONFIG/gin.macro.value").scoped_configurable_fn()
    assert (cfg.architecture, cfg.num_encoder_layers) == ("decoder_only", 0)
  finally:
    gin.clear_config()
