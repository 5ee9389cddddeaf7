"""Build the pre-training corpus for `sinklab train` (one command, deterministic, offline but for apt).

    python scripts/build_train_corpus.py                      # -> data/train-corpus/{train,val}.bin, meta.json
    python scripts/build_train_corpus.py --tokenizer byte --no-debian my_notes/   # tiny, no apt

Debian documentation packages are fetched with `apt-get download` into $SINKLAB_CACHE/debian-docs (no root).
"""

from __future__ import annotations

import argparse
import json
import sys

from sinklab.data.train_corpus import DEBIAN_DOCS, TOKENIZERS, build_corpus
from sinklab.errors import SinklabInputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="extra text files, directories or .jsonl files")
    parser.add_argument("--out", default="data/train-corpus", help="output directory")
    parser.add_argument("--tokenizer", default="smollm2-135m", choices=TOKENIZERS)
    parser.add_argument("--packages", nargs="*", default=list(DEBIAN_DOCS), help="Debian documentation packages")
    parser.add_argument("--no-debian", action="store_true", help="no Debian packages: pydoc topics + paths only")
    parser.add_argument("--heldout", type=float, default=0.02, help="share of documents held out for validation")
    args = parser.parse_args(argv)
    try:
        meta = build_corpus(
            args.out,
            packages=[] if args.no_debian else args.packages,
            extra=args.paths,
            tokenizer=args.tokenizer,
            heldout=args.heldout,
        )
    except SinklabInputError as exc:
        print(f"build_train_corpus: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, "tokens": meta["tokens"], "sources": meta["sources"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
