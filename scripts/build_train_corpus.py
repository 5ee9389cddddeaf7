"""Build the pre-training corpus for `sinklab train` (one command, deterministic, offline but for apt).

    python scripts/build_train_corpus.py                      # -> data/train-corpus/{train,val}.bin, meta.json
    python scripts/build_train_corpus.py --packages all --out data/train-corpus-large \
        --pack data/train-corpus-large.pack                   # every package (>100M tokens), in parts of 55 MiB
    python scripts/build_train_corpus.py --tokenizer byte --no-debian my_notes/   # tiny, no apt

Debian documentation packages are fetched with `apt-get download` into $SINKLAB_CACHE/debian-docs (no root).
`--pack DIR` writes the corpus as xz parts + corpus.sha256; on the GPU machine `install_corpus` in
benchmarks/ship.sh checks, joins and unpacks them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sinklab.data.train_corpus import DEBIAN_DOCS, SMALL_DOCS, TOKENIZERS, build_corpus, pack_corpus
from sinklab.errors import SinklabInputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="extra text files, directories or .jsonl files")
    parser.add_argument("--out", default="data/train-corpus", help="output directory")
    parser.add_argument("--tokenizer", default="smollm2-135m", choices=TOKENIZERS)
    parser.add_argument(
        "--packages", nargs="*", default=list(SMALL_DOCS), help="Debian documentation packages, or 'all'"
    )
    parser.add_argument("--no-debian", action="store_true", help="no Debian packages: pydoc topics + paths only")
    parser.add_argument("--heldout", type=float, default=0.02, help="share of documents held out for validation")
    parser.add_argument("--max-tokens", type=int, default=None, help="refuse a corpus of more tokens (train + val)")
    parser.add_argument("--pack", metavar="DIR", default=None, help="also write the corpus as compressed parts here")
    parser.add_argument("--part-mb", type=float, default=55, help="largest part written by --pack, in MiB")
    parser.add_argument("--skip-build", action="store_true", help="with --pack: pack the corpus already at --out")
    args = parser.parse_args(argv)
    packages = [] if args.no_debian else list(DEBIAN_DOCS) if args.packages == ["all"] else args.packages
    try:
        if args.skip_build and args.pack is None:
            raise SinklabInputError("--skip-build only makes sense with --pack DIR")
        start = time.perf_counter()
        if not args.skip_build:
            build_corpus(
                args.out,
                packages=packages,
                extra=args.paths,
                tokenizer=args.tokenizer,
                heldout=args.heldout,
                max_tokens=args.max_tokens,
            )
        built = time.perf_counter()
        pack = pack_corpus(args.out, args.pack, args.part_mb) if args.pack else None  # refuses an unbuilt --out
    except SinklabInputError as exc:
        print(f"build_train_corpus: error: {exc}", file=sys.stderr)
        return 2
    meta = json.loads((Path(args.out) / "meta.json").read_text())
    summary = {
        "out": args.out,
        "tokens": meta["tokens"],
        "sources": meta["sources"],
        "build_s": round(built - start, 1),
    }
    if pack is not None:
        summary["pack"] = {"dir": args.pack, "parts": pack["parts"], "mib": round(pack["bytes"] / 2**20, 1)}
        summary["pack_s"] = round(time.perf_counter() - built, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
