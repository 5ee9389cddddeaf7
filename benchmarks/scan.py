"""Benchmark: `sinklab scan` against a plain SDPA forward (the floor) and eager `output_attentions` (the usual way).

smollm2-135m on the CPU, one sequence of T tokens of the embedded corpus, T from 512 to 16384 (past the model's
8192 trained positions the numbers measure compute and memory only). Each (method, T) runs in a fresh process so
peak memory is its own: RSS is sampled every 5 ms during the measured call. Eager is skipped where its stored
attentions (L x H x T x T floats) would not fit in memory. Prints a table, then one JSON line; saves
benchmarks/results/scan-<hardware>.json.

    python benchmarks/scan.py [--lengths 512,1024,...] [--hardware cpu2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2-135m"
EAGER_LIMIT_BYTES = 12 * 2**30


def _peak_rss_during(fn):
    """Run fn() while sampling this process's RSS; return (seconds, peak RSS bytes, RSS before)."""
    import psutil

    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    return seconds, max(peak[0], proc.memory_info().rss), before


def worker(method: str, length: int) -> dict:
    import torch

    from sinklab.data import read_texts, token_sequences
    from sinklab.measure import scan
    from sinklab.models import load

    model, tok = load(MODEL)
    ids = torch.tensor(token_sequences(tok, read_texts(None), length, 1, bos="never"))
    assert ids.shape[1] == length
    if method == "eager":
        model.set_attn_implementation("eager")

    @torch.no_grad()
    def run():
        if method == "scan":
            scan(model, tok, ids, max_tokens=length, progress=False, keep_pattern=0, allow_beyond_positions=True)
        else:
            model.model(input_ids=ids, use_cache=False, output_attentions=method == "eager")

    if length <= 1024:  # warm up small sizes, where one-off costs would dominate
        run()
    seconds, peak, before = _peak_rss_during(run)
    return {
        "method": method,
        "tokens": length,
        "seconds": seconds,
        "peak_rss_mb": peak / 2**20,
        "rss_before_mb": before / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="512,1024,2048,4096,8192,16384")
    parser.add_argument("--hardware", default="cpu2")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "T"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    import sinklab.models  # noqa: F401  (fails fast if the package is missing)

    lengths = [int(x) for x in args.lengths.split(",")]
    rows = []
    jobs = [(m, t) for t in lengths for m in ("plain", "scan", "eager")]
    with Progress() as progress:
        task = progress.add_task("scan benchmark", total=len(jobs))
        for method, length in jobs:
            if method == "eager" and 30 * 9 * length * length * 4 > EAGER_LIMIT_BYTES:
                rows.append({"method": method, "tokens": length, "skipped": "stored attentions would exceed 12 GB"})
            else:
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", method, str(length)],
                    capture_output=True,
                    text=True,
                    env=env,
                    stdin=subprocess.DEVNULL,
                )
                if out.returncode != 0:
                    rows.append({"method": method, "tokens": length, "failed": out.stderr.strip().splitlines()[-1:]})
                else:
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            progress.advance(task)

    by = {(r["method"], r["tokens"]): r for r in rows}
    table = Table(title=f"sinklab scan vs plain forward vs eager ({MODEL}, {args.hardware})")
    for col in (
        "T",
        "plain s",
        "scan s",
        "eager s",
        "scan/plain time",
        "plain MB",
        "scan MB",
        "eager MB",
        "scan/plain mem",
    ):
        table.add_column(col, justify="right")
    summary = []
    for t in lengths:
        p, s, e = by[("plain", t)], by[("scan", t)], by[("eager", t)]
        ok = "seconds" in p and "seconds" in s
        time_ratio = s["seconds"] / p["seconds"] if ok else None
        mem_ratio = s["peak_rss_mb"] / p["peak_rss_mb"] if ok else None
        summary.append({"tokens": t, "time_ratio": time_ratio, "mem_ratio": mem_ratio})
        table.add_row(
            str(t),
            f"{p.get('seconds', float('nan')):.2f}",
            f"{s.get('seconds', float('nan')):.2f}",
            f"{e['seconds']:.2f}" if "seconds" in e else "-",
            f"{time_ratio:.2f}x" if ok else "-",
            f"{p.get('peak_rss_mb', 0):.0f}",
            f"{s.get('peak_rss_mb', 0):.0f}",
            f"{e['peak_rss_mb']:.0f}" if "seconds" in e else "-",
            f"{mem_ratio:.2f}x" if ok else "-",
        )
    Console().print(table)
    result = {
        "benchmark": "scan",
        "model": MODEL,
        "hardware": args.hardware,
        "date": dt.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "goals": {"time_ratio_max": 2.0, "mem_ratio_max": 1.5},
        "note": "CPU shared with other processes during the run; ratios come from the same run",
        "summary": summary,
        "runs": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"scan-{args.hardware}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
