"""`python -m tasks.vocab train --mixture NAME --size N --out DIR`: a SentencePiece vocabulary.

    python -m tasks.vocab train --mixture mono --size 8192 --out DIR

trains a SentencePiece unigram model on text sampled from a task or mixture (by the mixture's
rates, capped at --max_sentences lines) and writes `DIR/sentencepiece.model`. Load it with
`sentencepiece_vocabulary(DIR / "sentencepiece.model")`: seqio appends the 100 extra ids, so the
vocabulary has exactly --size ids and `<extra_id_0>` is the highest one.
"""

from __future__ import annotations

import argparse
import sys

from tasks import corpora, registry, vocab
from tasks.vocab import training


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m tasks.vocab",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", required=True)
  train = sub.add_parser("train", help="train a SentencePiece vocabulary on a task or mixture")
  train.add_argument("--mixture", required=True, help="task or mixture name")
  train.add_argument("--size", type=int, required=True, help="vocabulary size incl. 100 extra ids")
  train.add_argument("--out", required=True, help="output directory")
  train.add_argument("--max_sentences", type=int, default=200_000, help="sampling cap (lines)")
  train.add_argument("--split", default="train")
  train.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    path = training.train_from_mixture(
      args.mixture, args.size, args.out, args.max_sentences, args.split, args.seed
    )
  except (
    ValueError,
    corpora.CorpusNotPreparedError,
    vocab.VocabularyNotFoundError,
    registry.UnknownTaskError,  # an unknown --mixture, with the close names
  ) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  vocabulary = vocab.sentencepiece_vocabulary(path)
  print(f"wrote {path} ({vocabulary.vocab_size} ids incl. {vocab.EXTRA_IDS} extra ids)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
