"""Benchmark: the overhead of an applied ACT or ZeroTuning on one forward pass, as a ratio to the plain forward.

smollm2-135m on CPU, one sequence of T tokens of the embedded corpus, the median of ``--repeats`` timed forwards
after one warm-up round; the methods alternate within each round, so a change in the shared machine's load hits
them alike. Methods: ZeroTuning and ACT on every head and on the heads of one layer, and their naive twins (full
matrix, eager) for scale. On CPU a statistics request runs the chunked path (ZeroTuning's first-token column, ACT's
column sums), which is where the overhead comes from; on CUDA ZeroTuning's column comes from the Triton kernel.
Prints a table, then one JSON line; saves benchmarks/results/redistribute-<hardware>.json.

    python benchmarks/redistribute.py [--lengths 256,1024] [--repeats 3] [--threads 1] [--hardware cpu2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from sinklab.data import read_texts, token_sequences
from sinklab.exploit.redistribute import ACT, ZeroTuning
from sinklab.exploit.redistribute.naive import ACTNaive, ZeroTuningNaive
from sinklab.models import load
from sinklab.ops import attention_calls

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2-135m"
ONE_LAYER = {14: list(range(9))}
METHODS = {
    "plain": None,
    "zerotuning all heads": lambda: ZeroTuning(gamma=1.5),
    "zerotuning layer 14": lambda: ZeroTuning(heads=ONE_LAYER, gamma=1.5),
    "act all heads": lambda: ACT(),
    "act layer 14": lambda: ACT(heads=ONE_LAYER),
    "naive zerotuning all heads": lambda: ZeroTuningNaive(gamma=1.5),
    "naive act all heads": lambda: ACTNaive(),
}


@torch.no_grad()
def timed(model, ids, repeats: int) -> dict[str, tuple[float, dict]]:
    """Per method: the median seconds of one forward with it attached and the attention implementations it ran.
    Methods alternate within each round."""
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    calls = {}
    for round_ in range(repeats + 1):  # round 0 warms up
        for name, make in METHODS.items():
            method = None if make is None else make().attach(model)
            before = attention_calls()
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            if round_:
                times[name].append(time.perf_counter() - start)
            calls[name] = dict(attention_calls() - before)
            if method is not None:
                method.detach()
    return {name: (statistics.median(times[name]), calls[name]) for name in METHODS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="256,1024")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--hardware", default="cpu2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load(MODEL)
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        ids = torch.tensor(token_sequences(tok, read_texts(None), length, 1, bos="never"))
        measured = timed(model, ids, args.repeats)
        plain = measured["plain"][0]
        for name, (seconds, calls) in measured.items():
            rows.append({"method": name, "tokens": length, "seconds": seconds, "ratio": seconds / plain,
                         "attention_calls": calls})  # fmt: skip
            print(f"{name:28s} T={length:5d} {seconds:8.3f} s  {seconds / plain:5.2f}x  {calls}", flush=True)
    print(f"\n{'method':28s} " + " ".join(f"T={n:>5s}" for n in args.lengths.split(",")))
    for name in METHODS:
        ratios = [f"{r['ratio']:6.2f}x" for r in rows if r["method"] == name]
        print(f"{name:28s} " + " ".join(ratios))
    result = {
        "benchmark": "redistribute",
        "model": MODEL,
        "hardware": args.hardware,
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "repeats": args.repeats,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"redistribute-{args.hardware}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
