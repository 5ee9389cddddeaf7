"""Decode latency and memory by stream position: SinkCache (4 + 1020) vs transformers' DynamicCache vs recompute.

For each cache the script streams seeded random tokens (prefill in chunks of 510, half the window), and at each
checkpoint position times ``--steps`` single-token decode steps (median ms/token) and records the KV bytes the
cache holds and the process RSS. Both caches advance together and their decode steps are timed interleaved, so
that both see the same machine load (the CPU is shared). The sink cache's cost should be flat, the dense cache's
should grow. The dense cache stops at smollm2-135m's max_position_embeddings (8192); the sink cache
(positions="cache") never hands the model a position above 2046 (4 sinks + 2 x 1021 ring slots: the window and the
current token) and streams on. Sliding window with re-computation at window 1024 re-reads the last 1024 tokens for
every token: its per-token latency is one 1024-token forward (timed once at each checkpoint).

    OMP_NUM_THREADS=1 python benchmarks/stream.py            # ~15-20 min on 2 shared cores

Prints a rich table, then ONE JSON line; saves benchmarks/results/stream-decode-<hardware>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import psutil
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from transformers import DynamicCache

from sinklab.exploit.cache import SinkCache
from sinklab.exploit.stream import cache_kwarg, cache_nbytes
from sinklab.models import load


class Stream:
    """One cache fed with seeded random tokens; ``feed(n)`` advances it by n tokens (prefill chunks <= 510)."""

    def __init__(self, model, kind: str):
        self.model, self.kind, self.seen = model, kind, 0
        self.cache = SinkCache(4, 1020, model=model) if kind == "sink" else DynamicCache(config=model.config)
        self.gen = torch.Generator().manual_seed(0)
        self.name = cache_kwarg(model)

    @torch.no_grad()
    def feed(self, n: int) -> None:
        ids = torch.randint(100, self.model.config.vocab_size - 100, (1, n), generator=self.gen)
        sink = self.kind == "sink"
        pos = self.cache.position_ids(n) if sink else torch.arange(self.seen, self.seen + n).unsqueeze(0)
        self.model(input_ids=ids, position_ids=pos, use_cache=True, logits_to_keep=1, **{self.name: self.cache})
        self.seen += n

    def max_position_id(self) -> int:
        return self.seen - 1 if self.kind == "dense" else self.cache._next_position - 1


def recompute_step(model, window: int) -> float:
    """Seconds for one token of sliding window with re-computation: a forward over the last ``window`` tokens."""
    ids = torch.randint(100, model.config.vocab_size - 100, (1, window))
    start = time.perf_counter()
    with torch.no_grad():
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return time.perf_counter() - start


def run(model, points: dict[str, list[int]], steps: int, progress) -> list[dict]:
    """Advance both streams to each checkpoint, then time their decode steps interleaved (same load for both)."""
    streams = {kind: Stream(model, kind) for kind in points}
    task = progress.add_task("streams", total=sum(p[-1] + steps * len(p) for p in points.values()))
    rows = []
    for point in sorted({p for ps in points.values() for p in ps}):
        active = [s for kind, s in streams.items() if point in points[kind]]
        for s in active:
            while s.seen < point:
                n = min(510, point - s.seen)
                s.feed(n)
                progress.advance(task, n)
        times: dict[str, list[float]] = {s.kind: [] for s in active}
        for _ in range(steps):
            for s in active:
                start = time.perf_counter()
                s.feed(1)
                times[s.kind].append(time.perf_counter() - start)
                progress.advance(task, 1)
        recompute_ms = 1000 * recompute_step(model, 1024)
        for s in active:
            rows.append(
                {
                    "cache": s.kind,
                    "position": point,
                    "ms_per_token": 1000 * statistics.median(times[s.kind]),
                    "recompute_ms_per_token_same_time": recompute_ms,
                    "kv_mb": cache_nbytes(s.cache) / 2**20,
                    "rss_mb": psutil.Process().memory_info().rss / 2**20,
                    "max_position_id": s.max_position_id(),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sink-positions", default="1024,2048,4096,8176,16384,32768")
    parser.add_argument("--dense-positions", default="1024,2048,4096,8176")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--hardware", default="cpu2")
    args = parser.parse_args()
    model, _ = load(args.model)
    limit = model.config.max_position_embeddings
    sink_points = [int(p) for p in args.sink_positions.split(",")]
    dense_points = [int(p) for p in args.dense_positions.split(",") if int(p) + args.steps <= limit]
    console = Console()
    start = time.time()
    with Progress(console=console) as progress:
        rows = run(model, {"sink": sink_points, "dense": dense_points}, args.steps, progress)
    recompute_ms = statistics.median(r["recompute_ms_per_token_same_time"] for r in rows)
    table = Table(title=f"decode latency by position: {args.model}, threads={torch.get_num_threads()}")
    for col in ("cache", "position", "ms/token", "KV MB", "RSS MB", "max position id"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["cache"],
            str(r["position"]),
            f"{r['ms_per_token']:.1f}",
            f"{r['kv_mb']:.1f}",
            f"{r['rss_mb']:.0f}",
            str(r["max_position_id"]),
        )
    table.add_row("recompute (window 1024)", "any", f"{recompute_ms:.1f}", "-", "-", "1023")
    console.print(table)
    sink = {r["position"]: r for r in rows if r["cache"] == "sink"}
    dense = {r["position"]: r for r in rows if r["cache"] == "dense"}
    common = sorted(set(sink) & set(dense))

    def norm(by: dict, points: list[int]) -> float:
        """Latency ratio last/first checkpoint, each divided by the recompute latency timed with it (load drift)."""
        first, last = by[points[0]], by[points[-1]]
        return (last["ms_per_token"] / last["recompute_ms_per_token_same_time"]) / (
            first["ms_per_token"] / first["recompute_ms_per_token_same_time"]
        )

    result = {
        "benchmark": "stream-decode",
        "model": args.model,
        "hardware": args.hardware,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "rows": rows,
        "recompute_ms_per_token_window_1024": recompute_ms,
        "speedup_sink_over_recompute": statistics.median(
            r["recompute_ms_per_token_same_time"] / r["ms_per_token"] for r in sink.values()
        ),
        "dense_over_sink_latency_by_position": {
            str(p): dense[p]["ms_per_token"] / sink[p]["ms_per_token"] for p in common
        },
        "latency_over_recompute_by_position": {  # load-normalized: both timed within the same minute
            kind: {str(p): r["ms_per_token"] / r["recompute_ms_per_token_same_time"] for p, r in rows_by.items()}
            for kind, rows_by in (("sink", sink), ("dense", dense))
        },
        "sink_latency_ratio_last_over_first": sink[sink_points[-1]]["ms_per_token"]
        / sink[sink_points[0]]["ms_per_token"],
        "dense_latency_ratio_last_over_first": (
            dense[dense_points[-1]]["ms_per_token"] / dense[dense_points[0]]["ms_per_token"] if dense else None
        ),
        "sink_normalized_ratio_last_over_first": norm(sink, sink_points),
        "dense_normalized_ratio_last_over_first": norm(dense, dense_points) if dense else None,
        "dense_stops_at": f"{limit} positions (max_position_embeddings); the sink cache's position ids stay <= 2046",
        "wall_s": time.time() - start,
        "note": (
            "CPU shared with other agents (load varies): compare ratios within this run. Latency = median of "
            "single-token decode steps at each position after a 510-token-chunk prefill of random tokens; sink "
            "and dense steps interleaved; recompute timed once per checkpoint."
        ),
    }
    out = Path(__file__).parent / "results" / f"stream-decode-{args.hardware}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
