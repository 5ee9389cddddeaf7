"""Benchmark: `sinklab scan` against a plain SDPA forward (the floor) and eager `output_attentions` (the usual way).

CPU: smollm2-135m, one sequence of T tokens of the embedded corpus, T from 512 to 16384 (past the model's 8192
trained positions the numbers measure compute and memory only). Each (method, T) runs in a fresh process so peak
memory is its own: RSS is sampled every 5 ms during the measured call. Eager is skipped where its stored attentions
(L x H x T x T floats) would not fit in memory.

CUDA (``--device cuda``): a random-init model shaped like Llama-3.2-1B (16 layers, 32 heads, 8 KV heads, head dim
64, bf16), one sequence of random tokens, T = 8k, 32k, 64k, 128k; plain SDPA forward against scan in one process
(peak = torch.cuda.max_memory_allocated during the call), which attention implementation ran
(``sinklab.ops.attention_calls``), and at the shortest T scan's metrics on the fused path against the chunked path.

Prints a table, then one JSON line; saves benchmarks/results/scan-<hardware>.json.

    python benchmarks/scan.py [--lengths 512,1024,...] [--hardware cpu2]
    python benchmarks/scan.py --device cuda --lengths 8192,32768,65536,131072 --hardware h200 [--profile 32768]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings
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


LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0)  # fmt: skip


def _cuda_model(max_len: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sinklab.models.tiny import byte_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(**LLAMA_1B, max_position_embeddings=max_len, attn_implementation="sdpa")
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    return model, byte_tokenizer()


def _chunked_scan(scan, model, tok, ids):
    """scan with every attention call forced onto the chunked path (the reference the fused path must match)."""
    import sinklab.hf.site as site_module

    real = site_module.ops_attention

    def chunked(*args, **kwargs):
        return real(*args, impl="chunked", **kwargs)

    site_module.ops_attention = chunked
    try:
        return scan(model, tok, ids, max_tokens=ids.shape[1], progress=False, keep_pattern=0)
    finally:
        site_module.ops_attention = real


def cuda_main(args) -> None:
    import torch

    from sinklab.measure import scan
    from sinklab.ops import attention_calls
    from sinklab.testing import rel_err

    lengths = [int(x) for x in args.lengths.split(",")]
    model, tok = _cuda_model(max(lengths))
    rows, check = [], None
    for T in lengths:
        ids = torch.randint(10, 120000, (1, T), generator=torch.Generator().manual_seed(T))

        def plain(ids=ids):
            model.model(input_ids=ids.cuda(), use_cache=False)

        def scanned(ids=ids, T=T):
            return scan(model, tok, ids, max_tokens=T, progress=False, keep_pattern=0)

        row = {"tokens": T}
        repeats = 5 if T <= 32768 else 1  # the median of several runs where one run is short
        try:
            with torch.no_grad():
                for name, fn in (("plain", plain), ("scan", scanned)):
                    fn()  # warm-up (kernel compilation, allocator)
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    before = attention_calls()
                    times = []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        result = fn()
                        torch.cuda.synchronize()
                        times.append(time.perf_counter() - start)
                    row[f"{name}_s"] = statistics.median(times)
                    row[f"{name}_runs"] = len(times)
                    row[f"{name}_peak_gb"] = (torch.cuda.max_memory_allocated() - base) / 2**30 + base / 2**30
                    if name == "scan":
                        row["attention_calls"] = {k: v // repeats for k, v in (attention_calls() - before).items()}
                if check is None:
                    reference = _chunked_scan(scan, model, tok, ids)
                    check = {
                        "tokens": T,
                        "first_token_mass_rel_err": rel_err(result.first_token_mass, reference.first_token_mass),
                        "entropy_rel_err": rel_err(result.entropy, reference.entropy),
                        "sink_rate": [result.sink_rate, reference.sink_rate],
                        "layer_max_abs_rel_err": rel_err(result.layer_max_abs, reference.layer_max_abs),
                    }
        except torch.OutOfMemoryError as err:
            row["failed"] = f"out of memory: {str(err).splitlines()[0]}"
        if "scan_s" in row:
            row["time_ratio"] = row["scan_s"] / row["plain_s"]
            row["memory_ratio"] = row["scan_peak_gb"] / row["plain_peak_gb"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.sync_check:  # operations that make the host wait for the GPU during one scan, by source line
        ids = torch.randint(10, 120000, (1, lengths[0]), generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            scan(model, tok, ids, max_tokens=lengths[0], progress=False, keep_pattern=0)
            torch.cuda.set_sync_debug_mode("default")
        where = collections.Counter(
            f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
        )
        sync_points = {"tokens": lengths[0], "total": sum(where.values()), "by_line": dict(where.most_common())}
        print(json.dumps({"sync_points": sync_points}), flush=True)
    if args.profile:  # where scan's time goes beyond the plain forward, by CUDA kernel
        ids = torch.randint(10, 120000, (1, args.profile), generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            scan(model, tok, ids, max_tokens=args.profile, progress=False, keep_pattern=0)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    table = "T        plain s   scan s   time    plain GB  scan GB  memory\n"
    for r in rows:
        if "time_ratio" in r:
            table += (f"{r['tokens']:<8} {r['plain_s']:8.3f} {r['scan_s']:8.3f} {r['time_ratio']:6.2f}x "
                      f"{r['plain_peak_gb']:8.2f} {r['scan_peak_gb']:8.2f} {r['memory_ratio']:6.2f}x\n")  # fmt: skip
        else:
            table += f"{r['tokens']:<8} {r.get('failed', '')}\n"
    print(table)
    result = {
        "benchmark": "scan",
        "model": "random-init Llama-3.2-1B shape (16 x 32 heads / 8 KV, D 64), bf16, one sequence",
        "hardware": args.hardware,
        "date": dt.date.today().isoformat(),
        "versions": {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()},
        "goals": {"time_ratio_max": 2.0, "memory_ratio_max": 1.2},
        "check_vs_chunked": check,
        "sync_points": sync_points if args.sync_check else None,
        "rows": rows,
    }
    out = Path(os.environ.get("OUT", RESULTS))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"scan-{args.hardware}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="512,1024,2048,4096,8192,16384")
    parser.add_argument("--hardware", default="cpu2")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "T"))
    parser.add_argument("--sync-check", action="store_true", help="CUDA: list host synchronizations of one scan")
    parser.add_argument("--profile", type=int, default=0, metavar="T", help="CUDA: profile one scan at T tokens")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return
    if args.device == "cuda":
        cuda_main(args)
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
        "load_average_after": os.getloadavg(),  # 1, 5, 15 min: how busy the cores were (other jobs inflate ratios)
        "note": "each run in its own process; ratios come from the same run",
        "summary": summary,
        "runs": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"scan-{args.hardware}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
