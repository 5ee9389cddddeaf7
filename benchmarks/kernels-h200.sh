#!/bin/bash
# One device call: tile tuning, kernel check + table + statistics timing, the GPU tests, and (with AB=DIR, a
# checkout of the kernels before a change) the old kernel table on the same machine. Results go to $OUT.
#   OUT=/tmp/out bash benchmarks/kernels-h200.sh            (AB=.ab_old for the before/after table)
# TABLE_FLAGS (default --no-flex) go to the new table's run; PYTEST_K selects GPU tests (default: all).
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1 SINKLAB_TRITON_TILES=$OUT/tiles.json
start=$(date +%s)
step() {  # step NAME CMD...: run CMD with what is left of BUDGET_S (default 560 s), skip it when nothing is
    local left=$((${BUDGET_S:-560} - $(date +%s) + start))
    if [ "$left" -lt 20 ]; then echo "skipped $1: time budget"; return; fi
    echo "== $1 ($left s left)"; shift
    timeout "$left" "$@" 2>&1 | grep -v '^{' | tail -70
}
# the old checkout's table: benchmarks/kernels.py before 0.3.0 (renamed, it shadowed the HF `kernels` package)
AB_TABLE=$(ls "${AB:-.ab_old}"/benchmarks/time_kernels.py "${AB:-.ab_old}"/benchmarks/kernels.py 2>/dev/null | head -1)
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu --format=csv,noheader
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
step tune python3 benchmarks/time_kernels.py --tune --tune-only --out "$OUT/tune.json"
step table python3 benchmarks/time_kernels.py --check --stats ${TABLE_FLAGS:---no-flex} --out "$OUT/kernels-h200.json" \
    --stats-out "$OUT/kernels-stats-h200.json"
if [ -n "${AB:-}" ]; then  # the same table from the old code, its own tiles file (10 entries: no column-sum tiles)
    python3 -c "import json; d = json.load(open('$OUT/tiles.json')); json.dump({k: {**v, 'config': v['config'][:10]} for k, v in d.items()}, open('$OUT/tiles-old.json', 'w'))"
    SINKLAB_TRITON_TILES=$OUT/tiles-old.json PYTHONPATH=$AB/src step before python3 "$AB_TABLE" \
        --no-flex --out "$OUT/kernels-h200-before.json"
fi
OMP_NUM_THREADS=2 step pytest python3 -m pytest tests/gpu -q -n 8 -p no:cacheprovider -k "${PYTEST_K:-}"
echo "wall $(( $(date +%s) - start )) s"
