"""`python -m tasks.corpora prepare|status [--data_dir DIR]`: build or inspect xt5's corpora."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SHOWN_LOCALES = ("de", "ru", "es", "fr", "ja", "zh-CN")


def _summary(root: Path) -> str:
  """What the built datasets hold, read from their TFDS metadata."""
  from tasks.corpora import fetch
  from tasks.corpora.builders import Xt5GnomeHelp, Xt5Monolingual
  from tasks.corpora.languages import parse_split_name

  tfds_dir = fetch.tfds_data_dir(root)
  pairs = {}
  for config in Xt5GnomeHelp.BUILDER_CONFIGS:
    splits = Xt5GnomeHelp(config=config.name, data_dir=tfds_dir).info.splits
    pairs[config.target] = sum(split.num_examples for split in splits.values())
  mono = Xt5Monolingual(data_dir=tfds_dir).info.splits
  languages = {parse_split_name(name)[0] for name in mono.keys()}
  lines = [
    "GNOME Help en→X pairs: "
    + ", ".join(f"{tag} {pairs[tag]}" for tag in SHOWN_LOCALES)
    + f"; total {sum(pairs.values())} over {len(pairs)} locales",
    f"monolingual: {len(languages)} languages, "
    f"{sum(split.num_examples for split in mono.values())} documents",
    f"data: {tfds_dir} (TFDS data_dir), artifacts in {fetch.downloads_dir(root)}",
  ]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tasks.corpora", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  prepare_cmd = sub.add_parser(
    "prepare", help="download the artifacts, build both datasets and the default vocabulary"
  )
  prepare_cmd.add_argument("--force", action="store_true", help="rebuild even if already built")
  status_cmd = sub.add_parser("status", help="say whether the corpora are prepared, and where")
  for cmd in (prepare_cmd, status_cmd):
    cmd.add_argument(
      "--data_dir",
      default=None,
      help="root of the built-in data (default: $XT5_DATA_DIR or ~/.cache/xt5)",
    )
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads (lazily)

  import tasks.corpora as corpora

  root = Path(args.data_dir) if args.data_dir else corpora.data_dir()
  if args.command == "status":
    if not corpora.is_prepared(root):
      print(f"not prepared in {root}: run `{corpora.PREPARE_COMMAND}`")
      return 1
    print(_summary(root))
    return 0

  print(f"preparing xt5's built-in corpora in {root}")
  try:
    corpora.prepare(root, force=args.force, progress=True)
  except corpora.CorpusFetchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  from tasks import vocab  # the default vocabulary is trained on the built corpus
  from tasks.vocab import training

  vocab_path = training.prepare_builtin(root, force=args.force, progress=True)
  print(_summary(root))
  print(
    f"vocabulary: {vocab_path} ({vocab.BUILTIN_VOCAB_SIZE} ids incl. {vocab.EXTRA_IDS} sentinels)"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
