"""`python -m tasks list [PATTERN]`: the registered tasks and mixtures (PATTERN: a substring)."""

import argparse
import sys

import seqio

import tasks


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tasks", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  listing = sub.add_parser("list", help="print registered task and mixture names")
  listing.add_argument("pattern", nargs="?", default="", help="only names containing this")
  args = parser.parse_args(argv)
  mixtures = set(seqio.MixtureRegistry.names())
  for name in tasks.registry.registered_names():
    if args.pattern in name:
      print(f"{'mixture' if name in mixtures else 'task   '}  {name}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
