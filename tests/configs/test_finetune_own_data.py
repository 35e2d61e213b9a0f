"""configs/experiments/finetune_own_data.gin: parsing needs no data; the job registers the task."""

import shlex

import gin
import pytest

import tasks
import train


@pytest.fixture(autouse=True)
def _clean_gin():
  yield
  gin.clear_config()


def parse(bindings=""):
  """Parses the gin with command-line bindings written as in a shell."""
  args, gin_bindings = train._parse_args(
    ["--gin_file=configs/experiments/finetune_own_data.gin", *shlex.split(bindings)]
  )
  train.parse_gin(args.gin_file, gin_bindings)


def value(selector):
  """A bound parameter as the job will see it: macros and `@fn()` references evaluated."""
  bound = gin.query_parameter(selector)
  return (
    bound.scoped_configurable_fn() if isinstance(bound, gin.config.ConfigurableReference) else bound
  )


def test_the_defaults_finetune_the_quickstart_on_train_and_dev_tsv(
  tmp_path, monkeypatch, builtin_data
):
  monkeypatch.chdir(tmp_path)
  parse()  # before the files exist: parsing reads no data
  (tmp_path / "train.tsv").write_text("Open the file.\tÖffnen Sie die Datei.\n", encoding="utf-8")
  (tmp_path / "dev.tsv").write_text("Yes.\tJa.\n", encoding="utf-8")
  name = value("train_script.train.mixture_or_task_name")
  task = tasks.get(name)
  assert set(task.splits) == {"train", "validation"}
  assert task.output_features["inputs"].vocabulary.vocab_size <= 8192
  assert value("train_script.train.initial_checkpoint_path") == "runs/quickstart"
  assert value("train_script.train.model_config").dropout_rate == 0.1
  assert value("train_script.train.model_config").vocab_size == 8192
  assert value("train_script.train.learning_rate")(0) == pytest.approx(1e-3)


def test_command_line_bindings_choose_the_files(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "mine.jsonl").write_text('{"q": "2+2?", "a": "4"}\n', encoding="utf-8")
  parse(
    """--gin.tasks.pairs_task.train="'mine.jsonl'" --gin.tasks.pairs_task.validation=None
    --gin.tasks.pairs_task.vocabulary="'byt5'" --gin.tasks.pairs_task.input_field="'q'"
    --gin.tasks.pairs_task.target_field="'a'" --gin.tasks.pairs_task.prefix="'math: '"
    --gin.tasks.pairs_task.metrics="['accuracy']" --gin.MODEL_DIR="'runs/mine'" """
  )
  task = tasks.get(value("train_script.train.mixture_or_task_name"))
  assert list(task.splits) == ["train"]
  example = next(task.get_dataset({"inputs": 16, "targets": 8}, shuffle=False).as_numpy_iterator())
  assert example["inputs_pretokenized"] == b"math: 2+2?"


def test_a_missing_file_fails_when_the_job_starts_not_at_parse_time(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  parse("""--gin.tasks.pairs_task.train="'nope.tsv'" """)
  with pytest.raises(FileNotFoundError, match=r"train='nope.tsv': no such file"):
    value("train_script.train.mixture_or_task_name")
