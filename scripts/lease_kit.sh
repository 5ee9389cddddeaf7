#!/usr/bin/env bash
# Host side of a device lease (DEVELOPERS.md, "Running on the GPU machine"): a snapshot of HEAD and the large
# corpus's pack, split over two carried folders, then the device commands to paste. Each folder plus the working
# tree (which travels with every call) must stay within a call's 64 MiB: checked here, refused with the numbers.
# --hybrid adds what hybrid_study.py needs for fla's Gated DeltaNet kernel: fla-core, flash-linear-attention and
# einops beside the second corpus part, and Triton 3.7.1 (fla's gated backward is wrong on Hopper below it, fla
# issue 640) in parts sized to fit, KIT/t0, t1, ..., one call each (benchmarks/ship.sh install_triton joins them).
#   make train-corpus-large && bash scripts/lease_kit.sh [--hybrid] [KIT]     (KIT: .ship4 by default, git-ignored)
set -euo pipefail
hybrid=0
[ "${1:-}" = --hybrid ] && { hybrid=1; shift; }
kit=${1:-.ship4}
pack=data/train-corpus-large.pack
parts=("$pack"/corpus.part*)
[ ${#parts[@]} -eq 2 ] || { echo "lease_kit: $pack has ${#parts[@]} parts; two fit two calls (--part-mb 31)" >&2; exit 2; }
limit=$((64 * 1024 * 1024))
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s}')
room=$((limit - tree - 1024 * 1024))  # what one call can carry beside the working tree, 1 MiB to spare
fits() {  # fits DIR: refuse a carried folder that would take its call past the limit
    local size
    size=$(du -sb "$1" | cut -f1)
    [ "$size" -le "$room" ] || { echo "lease_kit: $1 is $size bytes; beside the working tree's $tree a call carries" \
        "at most $room (64 MiB less the tree and 1 MiB)" >&2; exit 2; }
}
grep -qx "/$kit/" .git/info/exclude 2>/dev/null || echo "/$kit/" >> .git/info/exclude
rm -rf "$kit" && mkdir -p "$kit"/a "$kit"/b
# the code of HEAD and its CUDA tests; benchmarks/results stays out (15 MB of records that the working tree
# carries to every call anyway: a resumed study copies its record from $R/benchmarks/results)
git archive HEAD src benchmarks tests/gpu tests/conftest.py pyproject.toml ':(exclude)benchmarks/results' \
    > "$kit"/a/clean.tar
cp "${parts[0]}" "$pack"/corpus.sha256 "$kit"/a/
cp "${parts[1]}" "$pack"/corpus.sha256 "$kit"/b/
commit=$(git rev-parse --short HEAD)
if [ $hybrid = 1 ]; then
    wheels=.whl/hybrid  # downloaded once (git-ignored)
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 -d "$wheels" \
        triton==3.7.1 fla-core==0.6.0 flash-linear-attention==0.6.0 einops==0.8.2 2> >(grep -v "is ignored" >&2)
    cp "$wheels"/fla_core-0.6.0-*.whl "$wheels"/flash_linear_attention-0.6.0-*.whl "$wheels"/einops-0.8.2-*.whl "$kit"/b/
    triton=$(ls "$wheels"/triton-3.7.1-cp312-*.whl)
    size=$(stat -c %s "$triton")
    n=$(((size + room - 1) / room))  # as few calls as fit, the parts of equal size
    split -b $(((size + n - 1) / n)) -d -a 1 "$triton" "$kit"/tpart.
    tparts=("$kit"/tpart.*)
    for i in "${!tparts[@]}"; do mkdir -p "$kit"/t"$i" && mv "$kit"/tpart."$i" "$kit"/t"$i"/; done
    last=$((${#tparts[@]} - 1))
    (cd "$wheels" && sha256sum "$(basename "$triton")") > "$kit"/t$last/triton.sha256
fi
for dir in "$kit"/*/; do fits "$dir"; done
du -sh "$kit"/*/
echo "working tree $tree bytes; each call carries at most $room beside it"
cat <<CMD
call 1 (carry $kit/a):
  export SINKLAB_COMMIT=$commit; R=\$PWD; mkdir -p /tmp/clean && tar -xf $kit/a/clean.tar -C /tmp/clean && cd /tmp/clean && SRC=/tmp/clean/src source benchmarks/ship.sh && stash \$R/$kit/a && nvidia-smi -L && python3 -m pytest -q -p no:cacheprovider tests/gpu/test_explain_gpu.py
call 2 at once (carry $kit/b), A = the study's arguments without --work/--out/--corpus:
  export SINKLAB_COMMIT=$commit; R=\$PWD; cd /tmp/clean && SRC=/tmp/clean/src source benchmarks/ship.sh && stash \$R/$kit/b && install_corpus && A="..." && start_study /tmp/gu60 \$A --corpus /tmp/corpus --compile && restart_if_failed /tmp/gu60 240 \$A --corpus /tmp/corpus --compile && watch_study /tmp/gu60 480
  (runs added to a committed record, with lease_start \$BUDGET in call 1: ... install_corpus && A="..." &&
  resume_study \$R/benchmarks/results/gu60m-v03-h200 /tmp/gu60 \$A --corpus /tmp/corpus --compile)
later calls:
  cd /tmp/clean && SRC=/tmp/clean/src source benchmarks/ship.sh && watch_study /tmp/gu60 560
two studies in one call (the first's watch bounded by the call, then the second started; B = its arguments):
  ... && watch_study /tmp/ds \$((578 - SECONDS)); then_study /tmp/ds /tmp/gu60 \$B --corpus /tmp/corpus --compile
  (then_hybrid /tmp/gu60 /tmp/hyb \$B starts hybrid_study.py instead: its layouts without linear layers need no fla;
  with lease_start \$BUDGET in call 1, every later call can be watch_then_hybrid /tmp/gu60 /tmp/hyb \$B, whose time
  limits come from lease_left)
send every call of the lease in one batch of tool calls: they run one after another, and a machine left idle for
30 s between two turns goes cold (the eleventh lease restarted three times, its study's state lost each time)
CMD
if [ $hybrid = 1 ]; then
    cat <<CMD
hybrid lease instead: call 1 as above, call 2 ending at install_corpus, then one call per Triton part at once:
calls 3 to $((last + 2)) (carry $kit/tN, N = 0 to $((last - 1))):
  R=\$PWD; cd /tmp/clean && SRC=/tmp/clean/src source benchmarks/ship.sh && stash \$R/$kit/tN
call $((last + 3)) (carry $kit/t$last), A = hybrid_study.py's arguments without --out, B = budget_left_s after call $((last + 2)):
  export SINKLAB_COMMIT=$commit; R=\$PWD; cd /tmp/clean && SRC=/tmp/clean/src source benchmarks/ship.sh && stash \$R/$kit/t$last && install_triton && install_fla && A="..." && start_hybrid /tmp/hyb \$A --corpus /tmp/corpus --time-limit \$((B - 80 - SECONDS)) && watch_study /tmp/hyb \$((585 - SECONDS))
  (fla's kernel against the torch reference, tests/gpu/test_fla_gated_delta.py, passed there in the tenth lease and
  costs 221 s of Triton JIT: add it before start_hybrid when fla or Triton changes; a resumed study also needs
  its record first: mkdir -p /tmp/hyb && cp \$R/benchmarks/results/hybrid-h200.json /tmp/hyb/ and --resume in A)
  (the last call can end with keep_triton_cache: the compiled kernels and fla's autotune results come back in
  triton-cache.tgz; copied into $kit/c by hand, a later lease carries them in one more call, stash \$R/$kit/c &&
  restore_triton_cache before start_hybrid (what that saves of the first run's compile is not measured yet))
CMD
fi
echo "each call's timeout_s: its watch_study seconds + 15 at least (the final copy), within budget_left_s"
