#!/usr/bin/env bash
# Host side of a gu_study lease (DEVELOPERS.md, "Running on the GPU machine"): a snapshot of HEAD and the large
# corpus's pack, split over two carried folders of under 52 MB each, then the two device commands to paste.
#   make train-corpus-large && bash scripts/lease_kit.sh [KIT]     (KIT: .ship4 by default, git-ignored)
set -euo pipefail
kit=${1:-.ship4}
pack=data/train-corpus-large.pack
parts=("$pack"/corpus.part*)
[ ${#parts[@]} -eq 2 ] || { echo "lease_kit: $pack has ${#parts[@]} parts; two fit two calls (--part-mb 31)" >&2; exit 2; }
grep -qx "/$kit/" .git/info/exclude 2>/dev/null || echo "/$kit/" >> .git/info/exclude
rm -rf "$kit" && mkdir -p "$kit"/a "$kit"/b
git archive HEAD src benchmarks tests/gpu tests/conftest.py pyproject.toml > "$kit"/a/clean.tar  # + the CUDA tests
cp "${parts[0]}" "$pack"/corpus.sha256 "$kit"/a/
cp "${parts[1]}" "$pack"/corpus.sha256 "$kit"/b/
du -sh "$kit"/a "$kit"/b
commit=$(git rev-parse --short HEAD)
cat <<CMD
call 1 (carry $kit/a):
  export SINKLAB_COMMIT=$commit; R=\$PWD; mkdir -p /tmp/clean && tar -xf $kit/a/clean.tar -C /tmp/clean && cd /tmp/clean && SRC=/tmp/clean/src source benchmarks/ship.sh && stash \$R/$kit/a && nvidia-smi -L && python3 -m pytest -q -p no:cacheprovider tests/gpu/test_explain_gpu.py
call 2 at once (carry $kit/b), A = the study's arguments without --work/--out/--corpus:
  export SINKLAB_COMMIT=$commit; R=\$PWD; cd /tmp/clean && SRC=/tmp/clean/src source benchmarks/ship.sh && stash \$R/$kit/b && install_corpus && A="..." && start_study /tmp/gu60 \$A --corpus /tmp/corpus --compile && restart_if_failed /tmp/gu60 240 \$A --corpus /tmp/corpus --compile && watch_study /tmp/gu60 480
later calls:
  cd /tmp/clean && SRC=/tmp/clean/src source benchmarks/ship.sh && watch_study /tmp/gu60 560
each call's timeout_s: its watch_study seconds + 15 at least (the final copy), within budget_left_s
CMD
