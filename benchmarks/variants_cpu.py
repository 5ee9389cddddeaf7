"""CPU speed of every attention variant's fast path (``impl="chunked"``) against PyTorch SDPA, in one run.

    python benchmarks/variants_cpu.py                       # T = 1024 and 4096, 2 threads
    python benchmarks/variants_cpu.py --lengths 256 --repeats 1

Shape: B=1, H=8 (MHA), D=64, fp32, causal. Forward, and forward+backward (gradients to q, k, v and the variant's
parameters). Baseline: ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``. The naive definition
(materializes T x T) is timed at T <= --naive-max. A variant whose fast path does not match its naive twin on a
small problem is reported as failed, without timings. Median of --repeats after one warm-up.
Prints a rich table, then ONE JSON line last; saves benchmarks/results/variants_cpu-<hardware>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sinklab.ops import VARIANTS, attention

B, H, D = 1, 8, 64


def params_for(variant: str, requires_grad: bool) -> dict:
    """The variant's example parameters (``sinklab.ops.variants``), tensors learnable when timing backward."""
    params = VARIANTS[variant].example(H, D, "cpu", torch.float32)
    return {n: p.requires_grad_(requires_grad) if isinstance(p, torch.Tensor) else p for n, p in params.items()}


def inputs(T: int, requires_grad: bool):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(B, H, T, D, generator=gen).requires_grad_(requires_grad) for _ in range(3)]


def run_once(fn, T: int, backward: bool) -> float:
    q, k, v = inputs(T, backward)
    start = time.perf_counter()
    if backward:
        out, _ = fn(q, k, v)
        out.backward(torch.ones_like(out))
    else:
        with torch.no_grad():
            fn(q, k, v)
    return time.perf_counter() - start


def timed(fn, T: int, backward: bool, repeats: int) -> float:
    run_once(fn, T, backward)  # warm-up
    return statistics.median(run_once(fn, T, backward) for _ in range(repeats))


def make_fn(variant: str, impl: str):
    def fn(q, k, v):
        params = params_for(variant, q.requires_grad)
        return attention(q, k, v, variant=variant, impl=impl, causal=True, **params), params

    return fn


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True), {}


def check(variant: str) -> float:
    """Relative error of chunked fp32 vs naive fp64 (forward and q-gradient), causal T=600 (several query chunks)."""
    outs = []
    for impl, dtype in (("naive", torch.float64), ("chunked", torch.float32)):
        q, k, v = (x.detach().to(dtype).requires_grad_() for x in inputs(600, False))
        params = {n: p.to(dtype) if isinstance(p, torch.Tensor) else p for n, p in params_for(variant, False).items()}
        out = attention(q, k, v, variant=variant, impl=impl, **params)
        (gq,) = torch.autograd.grad(out.square().sum(), [q])
        outs.append(torch.cat([out.flatten(), gq.flatten()]).double())
    return ((outs[1] - outs[0]).norm() / outs[0].norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-max", type=int, default=1024)
    ap.add_argument("--hardware", default="cpu2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    jobs = [(T, v) for T in args.lengths for v in ["sdpa", *VARIANTS]]
    errors = {v: check(v) for v in VARIANTS}
    with Progress(transient=True) as progress:
        task = progress.add_task("timing", total=len(jobs))
        for T, variant in jobs:
            progress.update(task, description=f"T={T} {variant}")
            row = {"T": T, "variant": variant}
            if variant == "sdpa":
                row["fwd_s"] = timed(sdpa, T, False, args.repeats)
                row["fwd_bwd_s"] = timed(sdpa, T, True, args.repeats)
            elif errors[variant] > 1e-5:
                row["failed"] = f"chunked vs naive relative error {errors[variant]:.1e}"
            else:
                row["rel_err_vs_naive"] = errors[variant]
                row["fwd_s"] = timed(make_fn(variant, "chunked"), T, False, args.repeats)
                row["fwd_bwd_s"] = timed(make_fn(variant, "chunked"), T, True, args.repeats)
                if args.naive_max >= T:
                    row["naive_fwd_s"] = timed(make_fn(variant, "naive"), T, False, args.repeats)
                    row["naive_fwd_bwd_s"] = timed(make_fn(variant, "naive"), T, True, args.repeats)
            rows.append(row)
            progress.advance(task)

    base = {r["T"]: r for r in rows if r["variant"] == "sdpa"}
    for r in rows:
        if "fwd_s" in r and r["variant"] != "sdpa":
            r["fwd_vs_sdpa"] = r["fwd_s"] / base[r["T"]]["fwd_s"]
            r["fwd_bwd_vs_sdpa"] = r["fwd_bwd_s"] / base[r["T"]]["fwd_bwd_s"]
            if "naive_fwd_s" in r:
                r["naive_fwd_bwd_over_chunked"] = r["naive_fwd_bwd_s"] / r["fwd_bwd_s"]

    table = Table(title=f"attention variants on CPU ({args.threads} threads), B={B} H={H} D={D} fp32 causal")
    for col in ("T", "variant", "fwd ms", "x SDPA", "fwd+bwd ms", "x SDPA", "naive fwd+bwd ms", "naive / chunked"):
        table.add_column(col, justify="right")

    def ms(x):
        return f"{1000 * x:.1f}" if x is not None else "-"

    def ratio(x):
        return f"{x:.2f}" if x is not None else "-"

    for r in rows:
        if "failed" in r:
            table.add_row(str(r["T"]), r["variant"], r["failed"], "", "", "", "", "")
            continue
        table.add_row(
            str(r["T"]), r["variant"], ms(r["fwd_s"]), ratio(r.get("fwd_vs_sdpa")), ms(r["fwd_bwd_s"]),
            ratio(r.get("fwd_bwd_vs_sdpa")), ms(r.get("naive_fwd_bwd_s")), ratio(r.get("naive_fwd_bwd_over_chunked")),
        )  # fmt: skip
    Console().print(table)

    result = {
        "benchmark": "variants_cpu",
        "hardware": args.hardware,
        "shape": {"B": B, "H": H, "D": D, "dtype": "float32", "causal": True},
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "note": "CPU shared with other agents during the run (load average "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg())
        + "); ratios against SDPA measured in the same run are the figures to quote",
        "rows": rows,
    }
    out = Path(__file__).parent / "results" / f"variants_cpu-{args.hardware}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.rename(out)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
