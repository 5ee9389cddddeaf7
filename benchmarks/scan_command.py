"""Benchmark: the whole `sinklab scan` command a user runs (load, measure, report, plots) against a whole process
that loads the same model and runs one plain forward over the same tokens (the floor), smollm2-135m, 8,192 tokens,
CPU. Each is a fresh process; wall time and peak RSS from the OS (``resource.getrusage`` of the child). Prints a
table, then one JSON line; saves benchmarks/results/scan-command-<hardware>.json.

    python benchmarks/scan_command.py [--tokens 8192] [--hardware cpu2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PLAIN = """
import torch
from sinklab.data import read_texts, token_sequences
from sinklab.models import load
model, tok = load("smollm2-135m")
ids = torch.tensor(token_sequences(tok, read_texts(None), {tokens}, 1, bos="auto"))
with torch.no_grad():
    model.model(input_ids=ids, use_cache=False)  # the base model, as scan runs it
"""


def timed(cmd: list[str]) -> dict:
    """Wall seconds and peak RSS (MB) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": seconds, "peak_rss_mb": max(peak, before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--hardware", default="cpu2")
    args = parser.parse_args()
    sinklab = str(Path(sys.executable).with_name("sinklab"))
    with tempfile.TemporaryDirectory() as out:
        plain = timed([sys.executable, "-c", PLAIN.format(tokens=args.tokens)])
        scan = timed([sinklab, "scan", "--model", "smollm2-135m", "--max-tokens", str(args.tokens), "--num-texts", "1",
                      "--out", out])  # fmt: skip
    ratio = scan["seconds"] / plain["seconds"]
    print(f"{'process':<34} {'wall s':>8} {'peak MB':>9}")
    print(f"{'load + one plain forward':<34} {plain['seconds']:8.1f} {plain['peak_rss_mb']:9.0f}")
    print(f"{'sinklab scan (whole command)':<34} {scan['seconds']:8.1f} {scan['peak_rss_mb']:9.0f}")
    print(f"scan command / plain process: {ratio:.2f}x")
    result = {
        "benchmark": "scan-command",
        "model": "smollm2-135m",
        "tokens": args.tokens,
        "hardware": args.hardware,
        "date": dt.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count()},
        "goal": {"time_ratio_max": 2.0},
        "note": "one run of each, in turn, on an idle machine; the ratio of whole processes",
        "plain_process": plain,
        "scan_command": scan,
        "time_ratio": ratio,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"scan-command-{args.hardware}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
