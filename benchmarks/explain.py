"""Benchmark: `sinklab explain` at 2,048 tokens on smollm2-135m on the CPU (goal: under 5 minutes on 2 cores).

One sequence of 2,048 tokens of the embedded corpus; torch limited to ``--threads`` threads. Measured in one
process: a plain forward pass of the same tokens (the baseline), the whole explain run (every probe), then each probe
alone with ``--per-probe`` (its own baseline pass included). The progress lines on stderr show each probe's start.

Prints a table, then one JSON line; saves benchmarks/results/explain-<hardware>.json.

    python benchmarks/explain.py [--tokens 2048] [--threads 2] [--hardware cpu2] [--per-probe] [--note "..."]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2-135m"
GOAL_SECONDS = 300


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hardware", default="cpu2")
    parser.add_argument("--note", default="shared machine: other engineers' tests ran at the same time")
    parser.add_argument("--per-probe", action="store_true", help="also time each probe alone (as long again)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import sinklab
    from sinklab.data import read_texts, token_sequences
    from sinklab.measure.probes.runner import PROBES

    model, tok = sinklab.load(MODEL)
    seqs = token_sequences(tok, read_texts(None), args.tokens, 1, exact=True)
    ids = torch.tensor(seqs)
    with torch.no_grad():
        forward = _timed(lambda: model(input_ids=ids, use_cache=False))
    holder = {}
    total = _timed(lambda: holder.update(result=sinklab.explain(model, tok, seqs, model_name=MODEL)))
    per_probe = {
        name: _timed(lambda name=name: sinklab.explain(model, tok, seqs, probes=[name], progress=False))
        for name in (PROBES if args.per_probe else ())
    }
    result = holder["result"]
    rows = [("plain forward", forward), ("explain (all probes)", total)]
    rows += [(f"  {name} alone", seconds) for name, seconds in per_probe.items()]
    print(f"explain {MODEL}, 1 x {args.tokens} tokens, {args.threads} threads")
    print(f"{'run':24s} {'seconds':>9s} {'x forward':>10s}")
    for name, seconds in rows:
        print(f"{name:24s} {seconds:9.1f} {seconds / forward:10.1f}")
    print(f"goal < {GOAL_SECONDS} s: {'met' if total < GOAL_SECONDS else 'NOT met'}")
    record = {
        "benchmark": "explain",
        "model": MODEL,
        "tokens": args.tokens,
        "sequences": 1,
        "threads": args.threads,
        "hardware": args.hardware,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "note": args.note,
        "forward_seconds": round(forward, 2),
        "explain_seconds": round(total, 2),
        "explain_over_forward": round(total / forward, 1),
        "probe_alone_seconds": {k: round(v, 2) for k, v in per_probe.items()},
        "goal_seconds": GOAL_SECONDS,
        "goal_met": total < GOAL_SECONDS,
        "sink_rate": result.baseline["sink_rate"],
        "not_applicable": result.not_applicable,
        "provenance": result.provenance,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"explain-{args.hardware}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
