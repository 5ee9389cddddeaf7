"""Streaming quality on smollm2-135m: perplexity by cache policy (eval-stream) and passkey retention.

Part ``eval`` runs exactly what ``sinklab eval-stream`` runs (4096 tokens of the embedded corpus, 4 sinks + window
256, 32 tokens per forward call) and saves benchmarks/results/stream-<hardware>.json plus its two plots.
Part ``passkey`` hides a passkey at several depths of a ~1000-token prompt and asks for it through a sink cache
of 4 + 252 tokens and one of 4 + 1020 (the whole prompt fits): it shows what streaming keeps and what it loses —
a passkey that has left the window is gone, sinks or not. Saves benchmarks/results/stream-passkey-<hardware>.json.

    OMP_NUM_THREADS=1 python benchmarks/eval_stream.py --parts passkey      # ~5 min on 2 shared cores
    OMP_NUM_THREADS=1 python benchmarks/eval_stream.py --parts eval         # ~40 min on 2 shared cores

Prints a rich table, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sinklab.data.tasks import passkey
from sinklab.exploit.cache import SinkCache
from sinklab.exploit.stream import answer
from sinklab.models import load

RESULTS = Path(__file__).parent / "results"


def run_eval(hardware: str) -> dict:
    from typer.testing import CliRunner

    from sinklab.cli import app

    out = RESULTS / f".stream-{hardware}"
    args = ["eval-stream", "--model", "smollm2-135m", "--tokens", "4096", "--window", "256", "--sinks", "4"]
    args += ["--policies", "dense,window,sink,recompute,int4,int4-sinks", "--recompute-points", "32"]
    args += ["--chunk", "32", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    if res.exit_code:
        raise SystemExit(res.output)
    record = json.loads((out / "stream.json").read_text())
    (RESULTS / f"stream-{hardware}.json").write_text(json.dumps(record, indent=2))
    for png in ("ppl_vs_position", "sinks_sweep"):
        (out / f"{png}.png").replace(RESULTS / f"stream-{hardware}-{png}.png")
    shutil.rmtree(out)
    return record


def run_passkey(hardware: str, depths: list[float], num_tokens: int) -> dict:
    model, tok = load("smollm2-135m")
    caches = {"4+252": (4, 252), "4+1020": (4, 1020)}
    rows = []
    with Progress() as progress:
        task = progress.add_task("passkey", total=len(depths) * len(caches))
        for depth in depths:
            ex = passkey(tok, num_tokens, depth=depth, seed=1)
            for name, (sinks, window) in caches.items():
                out = answer(model, tok, ex.prompt, SinkCache(sinks, window, model=model), max_new_tokens=8)
                rows.append(
                    {
                        "cache": name,
                        "depth": depth,
                        "prompt_tokens": ex.num_tokens,
                        "needle_start": ex.needle_start,
                        "needle_in_cache": ex.in_window(sinks, window),
                        "correct": ex.correct(out),
                        "answer": ex.answer,
                        "generated": out,
                    }
                )
                progress.advance(task)
    table = Table(title=f"passkey retrieval through a sink cache, smollm2-135m, ~{num_tokens} tokens")
    for col in ("cache", "depth", "needle at token", "needle in cache", "correct", "generated"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["cache"],
            f"{r['depth']:.2f}",
            str(r["needle_start"]),
            str(r["needle_in_cache"]),
            str(r["correct"]),
            repr(r["generated"]),
        )
    Console().print(table)
    lost = [r for r in rows if not r["needle_in_cache"]]
    kept = [r for r in rows if r["needle_in_cache"]]
    result = {
        "benchmark": "stream-passkey",
        "model": "smollm2-135m",
        "hardware": hardware,
        "rows": rows,
        "accuracy_needle_in_cache": sum(r["correct"] for r in kept) / max(1, len(kept)),
        "accuracy_needle_evicted": sum(r["correct"] for r in lost) / max(1, len(lost)),
        "note": "greedy decoding; a passkey outside sinks + window cannot be retrieved: sinks do not extend context",
    }
    (RESULTS / f"stream-passkey-{hardware}.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="eval,passkey")
    parser.add_argument("--hardware", default="cpu2")
    parser.add_argument("--depths", default="0.05,0.25,0.5,0.75,0.95")
    parser.add_argument("--passkey-tokens", type=int, default=1000)
    args = parser.parse_args()
    start = time.time()
    summary: dict = {}
    if "passkey" in args.parts:
        depths = [float(d) for d in args.depths.split(",")]
        pk = run_passkey(args.hardware, depths, args.passkey_tokens)
        summary["passkey"] = {k: pk[k] for k in ("accuracy_needle_in_cache", "accuracy_needle_evicted")}
    if "eval" in args.parts:
        record = run_eval(args.hardware)
        summary["eval"] = {name: row["ppl"] for name, row in record["policies"].items()}
        summary["sweep"] = record["sweep"]
    summary["wall_s"] = time.time() - start
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
