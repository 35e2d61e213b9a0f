"""Every command in README.md works as written.

- `python train.py ...` commands parse: gin files exist, every macro is set, every binding names a
  real parameter (the jobs themselves are tested in test_train.py; `make quickstart` runs one).
- `python -m MODULE ...` commands: the converter runs for real on a tiny checkpoint where the
  placeholders allow; otherwise the subcommand and every flag used exist in the module's --help.
- `make TARGET`, `pip install -e '.[EXTRA]'`, `jupyter lab DIR`: the target, extra, dir exist.
- Python blocks run, with `runs/quickstart` pointed at a tiny run trained here.
A command of a kind not handled here fails the test, so new README commands get checked too.
"""

import contextlib
import io
import os
import re
import shlex
import tomllib

import gin
import pytest

import train
from models.config import T5Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
TINY = T5Config(
  vocab_size=8192,
  d_model=32,
  num_heads=2,
  head_dim=16,
  d_ff=64,
  num_encoder_layers=1,
  num_decoder_layers=1,
)
EXTERNAL = ("gcloud ",)  # cluster launchers named in prose; not runnable here


def blocks(language):
  return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def python_block(marker):
  """The one ```python block that contains `marker`."""
  (block,) = [b for b in blocks("python") if marker in b]
  return block


def shell_commands():
  """Commands of the ```sh blocks (continuations joined, comments dropped) and inline ones."""
  out = []
  for block in blocks("sh"):
    for line in block.replace("\\\n", " ").splitlines():
      line = re.sub(r"\s+#.*$", "", line).strip()
      if line:
        out.append(line)
  for span in re.findall(r"`([^`\n]+)`", README):
    if re.match(r"(python3? |make |pip |\.venv/bin/python )", span) and "(" not in span:
      out.extend(part.strip() for part in span.split("&&"))
  return out


COMMANDS = shell_commands()


def test_readme_has_the_two_commands():
  assert "make quickstart" in COMMANDS and "make test" in COMMANDS
  makefile = open(os.path.join(REPO, "Makefile")).read()
  assert "train.py --gin_file=configs/experiments/quickstart.gin" in makefile
  assert open(os.path.join(REPO, ".ci", "run")).read().strip().endswith("make test")


@pytest.fixture
def clean_gin():
  yield
  gin.clear_config()


@pytest.mark.parametrize("command", [c for c in COMMANDS if "train.py" in c])
def test_train_commands_parse(command, clean_gin):
  argv = shlex.split(command)
  args, bindings = train._parse_args(argv[argv.index("train.py") + 1 :])
  train.parse_gin(args.gin_file, bindings)  # raises ConfigError naming what is wrong
  assert gin.query_parameter("train_script.run.job") is not None


def _help(module, argv):
  import importlib

  try:
    main = importlib.import_module(module).main
  except AttributeError:
    main = importlib.import_module(f"{module}.__main__").main
  out = io.StringIO()
  with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
    main(argv + ["--help"])
  assert exit_info.value.code == 0
  return out.getvalue()


@pytest.mark.parametrize("command", [c for c in COMMANDS if " -m " in c])
def test_module_commands_exist(command):
  argv = shlex.split(command)
  module, rest = argv[2], argv[3:]
  sub = (
    [rest[0]]
    if rest
    and not rest[0].startswith("-")
    and rest[0].islower()
    and module in ("models.formats", "tasks.vocab", "tasks.corpora")
    else []
  )
  text = _help(module, sub)
  for flag in (a.split("=")[0] for a in rest if a.startswith("--")):
    assert flag in text, f"{command}: {flag} is not an option of {module} {sub}"


def test_other_commands():
  pyproject = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))
  extras = pyproject["project"]["optional-dependencies"]
  makefile = open(os.path.join(REPO, "Makefile")).read()
  for command in COMMANDS:
    if "train.py" in command or " -m " in command or command.startswith(EXTERNAL):
      continue
    argv = shlex.split(command)
    if argv[0] == "make":
      assert re.search(rf"^{argv[1]}:", makefile, flags=re.M), command
    elif argv[:3] == ["pip", "install", "-e"]:
      match = re.fullmatch(r"\.(?:\[(\w+)\])?", argv[3])
      assert match and (match.group(1) is None or match.group(1) in extras), command
    elif argv[:2] == ["jupyter", "lab"]:
      assert "jupyter==1.1.1" in extras["notebooks"] and os.path.isdir(argv[2])
    else:
      pytest.fail(f"README command with no check: {command}")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, builtin_data):
  """A tiny MODEL_DIR trained on the built-in translation task, for `runs/quickstart`."""
  run = tmp_path_factory.mktemp("quickstart")
  train.train(
    model_dir=str(run),
    model_config=TINY,
    mixture_or_task_name="translate_en_de",
    task_feature_lengths={"inputs": 32, "targets": 32},
    train_steps=2,
    batch_size=8,
    eval_period=None,
    show_progress=False,
  )
  return run


def test_python_blocks_run(tiny_run, tmp_path, monkeypatch, capsys):
  tour, functions = python_block("model.translate("), python_block("Transformer(cfg)")
  monkeypatch.chdir(tmp_path)
  tour = tour.replace('"runs/quickstart_de"', repr(str(tmp_path / "de"))).replace(
    '"runs/quickstart"', repr(str(tiny_run))
  )
  # 2 steps run train's whole path as well as 20 (test_interactive.py checks what it computes)
  tour = tour.replace(
    'model.train("translate_en_de", steps=20)', 'model.train("translate_en_de", steps=2)'
  )
  exec(compile(tour, "README tour", "exec"), {})
  printed = capsys.readouterr().out
  assert "translate_en_de/bleu" in printed
  assert os.path.isfile(tmp_path / "de" / "config.json")
  namespace = {}
  exec(compile(functions, "README functions", "exec"), namespace)
  assert namespace["tokens_BL"].shape == (8, 16) and float(namespace["loss"]) > 0


def test_own_data_block_runs(tiny_run, tmp_path, monkeypatch, capsys):
  """The recipe's Python call, on a train.tsv and dev.tsv written here."""
  block = python_block("tasks.pairs_task(")
  monkeypatch.chdir(tmp_path)
  pairs = "Open the file.\tÖffnen Sie die Datei.\nPrint the page.\tDrucken Sie die Seite.\n"
  for name in ("train.tsv", "dev.tsv"):
    (tmp_path / name).write_text(pairs, encoding="utf-8")
  block = block.replace("steps=20", "steps=2").replace('"runs/quickstart"', repr(str(tiny_run)))
  exec(compile(block, "README own data", "exec"), {})
  assert re.search(r"'pairs_\w+/bleu'", capsys.readouterr().out)


def test_convert_commands_run(tiny_run, tmp_path):
  """from-hf and to-hf, placeholders filled with a tiny model's directories."""
  from interactive import InteractiveModel
  from models.formats import __main__ as formats_cli

  hf_dir = InteractiveModel.load(str(tiny_run)).save_hf(str(tmp_path / "hf"))
  paths = {"HF_DIR": hf_dir, "OUT_DIR": str(tmp_path / "xt5"), "CKPT_DIR": str(tmp_path / "xt5")}
  ran = 0
  for command in COMMANDS:
    argv = shlex.split(command)
    if argv[2:3] == ["models.formats"] and argv[3] in ("from-hf", "to-hf"):
      args = [paths.get(a, a) for a in argv[3:]]
      if argv[3] == "to-hf":
        args[-1] = str(tmp_path / "hf_again")
      assert formats_cli.main(args) == 0, command
      ran += 1
  assert ran == 2
  assert os.path.isfile(tmp_path / "hf_again" / "config.json")
