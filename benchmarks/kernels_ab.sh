#!/bin/bash
# A/B of the kernel table on one machine: the kernels of a checkout AB (default .ab_old) against the current ones,
# alternating ROUNDS times (default 3) so that clock drift hits both; medians in $OUT/kernels-ab.json.
#   OUT=/tmp/out bash benchmarks/kernels_ab.sh  [T=... D=... VARIANTS=...]
set -u
RUNS=$(mktemp -d)  # per-run files (kept off $OUT: only kernels-ab.json comes back)
export PYTHONUNBUFFERED=1
AB=${AB:-.ab_old}
# the old checkout's table: benchmarks/kernels.py before 0.3.0 (renamed, it shadowed the HF `kernels` package)
AB_TABLE=$(ls "$AB"/benchmarks/time_kernels.py "$AB"/benchmarks/kernels.py 2>/dev/null | head -1)
ARGS="--T ${T:-4096 16384} --D ${D:-64} --variants ${VARIANTS:-softmax} --no-flex"
for i in $(seq 1 "${ROUNDS:-3}"); do
    PYTHONPATH=$AB/src python3 "$AB_TABLE" $ARGS --out "$RUNS/old-$i.json" 2>&1 | grep -v '^{' | tail -3
    PYTHONPATH=src python3 benchmarks/time_kernels.py $ARGS --out "$RUNS/new-$i.json" 2>&1 | grep -v '^{' | tail -3
done
python3 - "$RUNS" "$OUT" <<'PY'
import glob, json, statistics, sys
runs = {tag: [json.load(open(p))["timings"] for p in sorted(glob.glob(f"{sys.argv[1]}/{tag}-*.json"))] for tag in ("old", "new")}
summary = {}
for cell in runs["new"][0]:
    for variant in runs["new"][0][cell]:
        if variant == "sdpa":
            continue
        for metric in ("fwd_ms", "fwd+bwd_ms"):
            old = statistics.median(r[cell][variant][metric] for r in runs["old"])
            new = statistics.median(r[cell][variant][metric] for r in runs["new"])
            summary[f"{cell}/{variant}/{metric}"] = {"old": old, "new": new, "new_over_old": new / old}
            print(f"{cell:12} {variant:9} {metric:11} old {old:.4f}  new {new:.4f}  new/old {new / old:.3f}")
json.dump(summary, open(f"{sys.argv[2]}/kernels-ab.json", "w"), indent=1)
PY
