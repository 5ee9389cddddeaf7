"""Benchmark: `sinklab explain` at 2,048 tokens on smollm2-135m on the CPU (goal: under 5 minutes on 2 idle cores).

One sequence of 2,048 tokens of the embedded corpus; torch limited to ``--threads`` threads. Measured in one
process: a plain forward pass of the same tokens (with the LM head, as explain's passes) before and after the whole
explain run (every probe), then each probe alone with ``--per-probe`` (its own baseline pass included), and with
``--twin`` explain on the twin path (``fused=False``, the site's chunked attention) for comparison. The progress
lines on stderr show each stage (the baseline, then each probe) with its count of forward passes.

On a shared machine absolute seconds depend on the load: the ratio to the plain forward measured in the same run is
the comparable figure (also in process CPU time, which other jobs inflate less), and ``idle_estimate_seconds`` is
that ratio times ``--idle-forward`` (the plain forward of the same tokens on 2 idle cores, from
benchmarks/results/scan-cpu2.json).

Prints a table, then one JSON line; saves benchmarks/results/explain-<hardware>.json.

    python benchmarks/explain.py [--tokens 2048] [--threads 2] [--hardware cpu2] [--per-probe] [--twin] [--note "..."]
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
IDLE_FORWARD_2048 = 4.12  # s, plain forward of 2,048 tokens on 2 idle cores (benchmarks/results/scan-cpu2.json)


def _timed(fn, cpu: list | None = None) -> float:
    """Wall seconds of ``fn()``; appends its process CPU seconds (every thread) to ``cpu``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hardware", default="cpu2")
    parser.add_argument("--note", default="", help="what else ran on the machine (the load averages are recorded)")
    parser.add_argument("--per-probe", action="store_true", help="also time each probe alone (as long again)")
    parser.add_argument("--twin", action="store_true", help="also time explain on the twin path (fused=False)")
    parser.add_argument("--idle-forward", type=float, default=None, help="idle plain forward, s (known at 2,048)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import sinklab
    from sinklab.data import read_texts, token_sequences
    from sinklab.measure.probes.runner import PROBES

    model, tok = sinklab.load(MODEL)
    seqs = token_sequences(tok, read_texts(None), args.tokens, 1, exact=True)
    ids = torch.tensor(seqs)
    load_before = os.getloadavg()

    def plain() -> None:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)

    plain()  # warm-up
    cpu_forward, cpu_explain = [], []
    forward_before = _timed(plain, cpu_forward)
    holder = {}
    total = _timed(lambda: holder.update(result=sinklab.explain(model, tok, seqs, model_name=MODEL)), cpu_explain)
    forward_after = _timed(plain, cpu_forward)
    forward = (forward_before + forward_after) / 2
    cpu_ratio = cpu_explain[0] / (sum(cpu_forward) / 2)
    per_probe = {
        name: _timed(lambda name=name: sinklab.explain(model, tok, seqs, probes=[name], progress=False))
        for name in (PROBES if args.per_probe else ())
    }
    twin = _timed(lambda: sinklab.explain(model, tok, seqs, fused=False, progress=False)) if args.twin else None
    load_after = os.getloadavg()
    result = holder["result"]
    idle = args.idle_forward or (IDLE_FORWARD_2048 if args.tokens == 2048 else None)
    estimate = None if idle is None else total / forward * idle
    cpu_estimate = None if idle is None else cpu_ratio * idle
    rows = [("plain forward (mean)", forward), ("explain (all probes)", total)]
    rows += [(f"  {name} alone", seconds) for name, seconds in per_probe.items()]
    rows += [("explain, twin path", twin)] if twin is not None else []
    print(f"explain {MODEL}, 1 x {args.tokens} tokens, {args.threads} threads, load {load_before[0]:.1f}")
    print(f"{'run':24s} {'seconds':>9s} {'x forward':>10s}")
    for name, seconds in rows:
        print(f"{name:24s} {seconds:9.1f} {seconds / forward:10.1f}")
    print(f"CPU time (all threads): explain / forward = {cpu_ratio:.1f}")
    if estimate is not None:
        print(f"idle estimate: {total / forward:.1f} x {idle:.2f} s = {estimate:.0f} s (goal < {GOAL_SECONDS} s)")
        print(f"idle estimate from CPU time: {cpu_ratio:.1f} x {idle:.2f} s = {cpu_estimate:.0f} s")
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
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "forward_seconds": round(forward, 2),
        "forward_seconds_before_after": [round(forward_before, 2), round(forward_after, 2)],
        "explain_seconds": round(total, 2),
        "explain_over_forward": round(total / forward, 1),
        "forward_cpu_seconds_before_after": [round(x, 2) for x in cpu_forward],
        "explain_cpu_seconds": round(cpu_explain[0], 2),
        "explain_over_forward_cpu": round(cpu_ratio, 1),
        "idle_forward_seconds": idle,
        "idle_estimate_seconds": None if estimate is None else round(estimate, 1),
        "idle_estimate_seconds_from_cpu_time": None if cpu_estimate is None else round(cpu_estimate, 1),
        "probe_alone_seconds": {k: round(v, 2) for k, v in per_probe.items()},
        "twin_seconds": None if twin is None else round(twin, 2),
        "twin_over_forward": None if twin is None else round(twin / forward, 1),
        "goal_seconds": GOAL_SECONDS,
        "goal_met_idle_estimate": None if estimate is None else estimate < GOAL_SECONDS,
        "goal_met_here": total < GOAL_SECONDS,
        "sink_rate": result.baseline["sink_rate"],
        "not_applicable": result.not_applicable,
        "provenance": result.provenance,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"explain-{args.hardware}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
