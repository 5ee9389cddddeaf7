"""Fused Triton attention kernels of every sinklab variant against PyTorch SDPA on one GPU, in the same run.

    PYTHONPATH=src python benchmarks/kernels.py --check --tune --stats --out benchmarks/results/kernels-h200.json

On the H200 the tuning ran first in its own process (SINKLAB_TRITON_TILES=tiles.json ... --tune --tune-only), so
that the GPU tests and the timed run used the same tiles (benchmarks/KERNELS_NOTES.md has the exact command).

1. --tune: a few tile configs of the softmax kernels at T = 8192 (and of the column-sum kernel at T = 32768); the
   fastest forward, backward and column sums per head dim are used for every variant below (recorded in the JSON).
2. --check: every kernel mode against its naive definition in float64 (``ops.attention(impl="naive")``), forward,
   every gradient and every statistic, bf16, causal, T = 2048, D 64 and 128, NaN-poisoned buffers
   (tests/gpu/kernel_cases.py), with the very kernels (tiles, specializations) that get timed. A mode that fails is
   not timed.
3. Timing (triton.testing.do_bench medians): forward and forward+backward of SDPA, of every kernel mode through
   ``sinklab.ops._triton.flash.attention`` (parameters resolved, as the dispatcher hands them over), and of
   FlexAttention with the logsumexp rescale out * sigmoid(lse - s_h) for the sink logit (the usual way to get a sink
   without a custom kernel; shared/REFERENCES.md), B=2, H=16, bf16, causal. TFLOP/s counts 4 B H T^2 D / 2 for the
   causal forward and 3.5x that for forward+backward, for every variant.
4. --stats: forward + statistics (colsum and entropy, ``StatsRequest()``) against a plain SDPA forward at the
   Llama-3.2-1B attention shape (B=1, H=32, Hkv=8, D=64, bf16, causal), T = 8k, 32k, 64k, written to --stats-out.

Prints a rich table, then ONE JSON line last; partial results are written to --out after every measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gpu"))
import kernel_cases  # noqa: E402  (the same checks as tests/gpu)

from sinklab.ops.stats import StatsRequest  # noqa: E402

VARIANTS = kernel_cases.VARIANTS
TOL = 1e-2
DEVICE = "cuda"
CHECK_T, TUNE_T, STATS_TUNE_T, STATS_ALL_T = 2048, 8192, 32768, 32768


def params_for(variant: str, H: int, D: int, device: str) -> dict:
    if variant == "sink":
        return {"sink": torch.randn(H, device=device, requires_grad=True)}
    if variant == "kv_bias":
        return {
            "k_bias": torch.randn(H, D, device=device, requires_grad=True),
            "v_bias": torch.randn(H, D, device=device, requires_grad=True),
        }
    if variant == "sigmoid":
        return {"bias": torch.full((H,), -8.0, device=device, requires_grad=True)}
    return {}


def flops(B: int, H: int, T: int, D: int, backward: bool) -> float:
    fwd = 4 * B * H * T * T * D / 2
    return fwd * (3.5 if backward else 1.0)


def bench(fn, grads=None) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grads, return_mode="median")


def run_check(Ds: list[int], console: Console) -> dict:
    out = {}
    for D in Ds:
        for variant in VARIANTS:
            for part, fn, pad in (("", kernel_cases.check, None), ("stats", kernel_cases.check_stats, "key_padding")):
                case = kernel_cases.make_case(variant, B=1, H=8, Hkv=8, T=CHECK_T, S=CHECK_T, D=D, dtype=torch.bfloat16,
                                              device=DEVICE, causal=True, seed=D, pad=pad)  # fmt: skip
                errs = fn(variant, case)
                ok = all(not math.isnan(e) and e <= TOL for e in errs.values())
                name = f"{variant}/D{D}" + (f"/{part}" if part else "")
                out[name] = {"ok": ok, "max_rel_err": max(errs.values()), "errors": errs}
                console.print(f"check {name:22s}: {'ok ' if ok else 'FAIL'} max rel err {max(errs.values()):.2e}")
    return out


def run_tune(Ds: list[int], console: Console) -> dict:
    from sinklab.ops._triton import flash

    fwd_cands = {64: [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3)],
                 128: [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3)]}  # fmt: skip
    bwd_cands = [(64, 128, 128, 64, 8, 3), (32, 128, 128, 64, 8, 3), (64, 128, 128, 64, 8, 2)]
    col_cands = [(64, 128, 8, 3), (64, 64, 4, 3), (64, 64, 4, 4), (64, 64, 4, 2), (32, 64, 4, 3), (64, 32, 4, 3),
                 (64, 128, 4, 3), (128, 64, 4, 3)]  # fmt: skip
    B, H, T = 2, 16, TUNE_T
    chosen = {}
    for D in Ds:
        q, k, v = (torch.randn(B, H, T, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
        do = torch.randn_like(q)
        prob = flash.Problem(flash.MODES["softmax"], True, None, 1 / math.sqrt(D))
        heads = flash.Heads()
        best_f, best_b, best_c = None, None, None
        for m, n, w, s in fwd_cands[D]:
            cfg = flash.Config(m, n, w, s, *bwd_cands[0])
            ms = bench(partial(flash.forward, q, k, v, None, prob, heads, cfg=cfg))
            console.print(f"tune D={D} fwd {(m, n, w, s)}: {ms:.3f} ms")
            if best_f is None or ms < best_f[0]:
                best_f = (ms, (m, n, w, s))
        o, lse = flash.forward(q, k, v, None, prob, heads)
        for bc in bwd_cands:
            cfg = flash.Config(*best_f[1], *bc)
            ms = bench(partial(flash.backward, q, k, v, o, lse, do, None, prob, heads, cfg=cfg))
            console.print(f"tune D={D} bwd {bc}: {ms:.3f} ms")
            if best_b is None or ms < best_b[0]:
                best_b = (ms, bc)
        qs, ks = (torch.randn(1, 32, STATS_TUNE_T, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
        _, lse_s = flash.forward(qs, ks, ks, None, prob, heads)
        for cc in col_cands:
            cfg = flash.Config(*best_f[1], *best_b[1], *cc)
            ms = bench(partial(flash.column_stats, qs, ks, lse_s, None, None, prob, heads, entropy=True, cfg=cfg))
            console.print(f"tune D={D} colsum {cc}: {ms:.3f} ms (T={STATS_TUNE_T}, H=32)")
            if best_c is None or ms < best_c[0]:
                best_c = (ms, cc)
        flash.TUNED[D] = flash.Config(*best_f[1], *best_b[1], *best_c[1])
        chosen[str(D)] = {"config": list(best_f[1] + best_b[1] + best_c[1]), "fwd_ms": best_f[0], "bwd_ms": best_b[0],
                          "colsum_ms": best_c[0], "T": T, "B": B, "H": H}  # fmt: skip
    path = os.environ.get("SINKLAB_TRITON_TILES")
    if path:  # later processes (the GPU tests, the timed run) read it at import
        Path(path).write_text(json.dumps(chosen))
    return chosen


def flex_fns(B: int, H: int, T: int):
    """(plain flex, flex + sink rescale) callables; compiled once per shape."""
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

    for name in ("recompile_limit", "cache_size_limit"):  # one compile per shape; the default limit is 8
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    flex = torch.compile(flex_attention, dynamic=False)
    mask = create_block_mask(lambda b, h, i, j: j <= i, B=None, H=None, Q_LEN=T, KV_LEN=T, device=DEVICE)

    def plain(q, k, v):
        return flex(q, k, v, block_mask=mask)

    def rescale(q, k, v, sink):
        out, aux = flex(q, k, v, block_mask=mask, return_aux=AuxRequest(lse=True))
        return out * torch.sigmoid(aux.lse - sink[None, :, None])[..., None].to(out.dtype)

    return plain, rescale


def time_shape(B, H, T, D, variants, record) -> None:
    q, k, v = (torch.randn(B, H, T, D, device=DEVICE, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)

    def both(name, fwd, leaves):
        record(name, T, D, "fwd", bench(fwd))
        record(name, T, D, "fwd+bwd", bench(lambda: fwd().backward(do), grads=leaves))

    both("sdpa", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), [q, k, v])
    for variant in variants:
        params = params_for(variant, H, D, DEVICE)
        both(variant, lambda p=params, var=variant: kernel_cases.flash_attention(var, q, k, v, **p),
             [q, k, v, *(x for x in params.values() if isinstance(x, torch.Tensor))])  # fmt: skip


def time_stats(Ts: list[int], variants: list[str], console: Console, save) -> dict:
    """Forward + statistics (colsum, entropy) of each kernel mode and its parts (forward, column-sum kernel) against
    a plain SDPA forward, at the Llama-3.2-1B attention shape."""
    B, H, Hkv, D = 1, 32, 8, 64
    rows = []
    for T in Ts:
        q = torch.randn(B, H, T, D, device=DEVICE, dtype=torch.bfloat16)
        k, v = (torch.randn(B, Hkv, T, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
        kx, vx = (x.repeat_interleave(H // Hkv, dim=1) for x in (k, v))
        sdpa_gqa = bench(partial(F.scaled_dot_product_attention, q, k, v, is_causal=True, enable_gqa=True))
        sdpa_rep = bench(partial(F.scaled_dot_product_attention, q, kx, vx, is_causal=True))  # k, v pre-expanded
        plain = min(sdpa_gqa, sdpa_rep)
        for variant in variants if T == STATS_ALL_T else ["softmax"]:
            params = params_for(variant, H, D, DEVICE)
            params = {n: x.detach() if isinstance(x, torch.Tensor) else x for n, x in params.items()}
            with torch.no_grad():
                fused = bench(partial(kernel_cases.flash_attention, variant, q, k, v, stats=StatsRequest(), **params))
                fwd = bench(partial(kernel_cases.flash_attention, variant, q, k, v, **params))
            row = {"variant": variant, "tokens": T, "B": B, "H": H, "Hkv": Hkv, "D": D,
                   "sdpa_fwd_ms": plain, "sdpa_gqa_ms": sdpa_gqa, "sdpa_repeat_kv_ms": sdpa_rep,
                   "fwd_ms": fwd, "fwd_stats_ms": fused, "ratio_fwd_stats_vs_sdpa": fused / plain,
                   "ratio_fwd_vs_sdpa": fwd / plain}  # fmt: skip
            rows.append(row)
            console.print(f"stats T={T:6d} {variant:9s}: SDPA fwd {plain:.3f} ms (gqa {sdpa_gqa:.3f}, repeat_kv "
                          f"{sdpa_rep:.3f}); flash fwd {fwd:.3f} ms; fwd+stats {fused:.3f} ms "
                          f"= {fused / plain:.2f}x SDPA")  # fmt: skip
            save(rows)
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--D", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--check", action="store_true", help="check every kernel against naive first")
    ap.add_argument("--tune", action="store_true", help="pick tile configs at T=8192 first")
    ap.add_argument("--tune-only", action="store_true", help="stop after --tune (tiles go to $SINKLAB_TRITON_TILES)")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip the Flex baselines past this many seconds")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kernels-h200.json")
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG beside --out from its JSON and stop")
    ap.add_argument("--no-table", action="store_true", help="skip the kernel table (with --stats: statistics only)")
    ap.add_argument("--stats", action="store_true", help="time forward + statistics against SDPA (Llama-3.2-1B shape)")
    ap.add_argument("--stats-T", type=int, nargs="+", default=[8192, 32768, 65536])
    ap.add_argument("--stats-out", type=Path, default=ROOT / "benchmarks" / "results" / "kernels-stats-h200.json")
    args = ap.parse_args()
    console = Console()
    if args.plot_only:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return
    import triton

    props = torch.cuda.get_device_properties(0)
    result = {
        "benchmark": "kernels",
        "device": props.name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "shape": {"B": args.B, "H": args.H, "dtype": "bfloat16", "causal": True},
        "flops": "causal forward 4*B*H*T^2*D/2; forward+backward 3.5x that; same count for every variant",
        "note": "one GPU, nothing else running on it; medians of triton.testing.do_bench",
        "check": {},
        "tuned": {},
        "timings": {},
    }
    t0 = time.time()

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.out)

    variants = list(args.variants)
    if args.tune:  # first, so that the check below runs the very kernels that get timed
        result["tuned"] = run_tune(args.D, console)
        save()
        if args.tune_only:
            return
    elif os.environ.get("SINKLAB_TRITON_TILES") and Path(os.environ["SINKLAB_TRITON_TILES"]).exists():
        result["tuned"] = json.loads(Path(os.environ["SINKLAB_TRITON_TILES"]).read_text())
    from sinklab.ops._triton import flash

    result["tiles"] = {str(d): flash.config(d).__dict__ for d in args.D}
    if args.check:
        result["check"] = run_check(args.D, console)
        failed = {k.split("/")[0] for k, r in result["check"].items() if not r["ok"]}
        variants = [v for v in variants if v not in failed]
        result["not_timed_failed_check"] = sorted(failed)
        save()

    def record(name, T, D, kind, ms):
        key = f"T{T}/D{D}"
        entry = result["timings"].setdefault(key, {}).setdefault(name, {})
        if kind == "error":
            entry["error"] = ms
        else:
            entry[f"{kind}_ms"] = ms
            entry[f"{kind}_tflops"] = flops(args.B, args.H, T, D, kind == "fwd+bwd") / (ms * 1e-3) / 1e12
        console.print(
            f"[{time.time() - t0:6.1f}s] {key} {name:18s} {kind:8s} {ms if kind == 'error' else f'{ms:.3f} ms'}"
        )
        save()

    for T in [] if args.no_table else args.T:
        for D in args.D:
            time_shape(args.B, args.H, T, D, variants, record)
    if args.stats:
        stats = {"benchmark": "kernels-stats", "device": props.name, "torch": torch.__version__,
                 "triton": triton.__version__, "tiles": result["tiles"].get("64"),
                 "request": "StatsRequest(): colsum, count, entropy, rows (+ slot for slot modes)",
                 "baseline": "the faster of SDPA with enable_gqa and SDPA on pre-expanded k, v; causal bf16 forward",
                 "note": "medians of triton.testing.do_bench; every mode at T=32768, softmax at every T"}  # fmt: skip

        def save_stats(rows):
            stats["rows"] = rows
            args.stats_out.write_text(json.dumps(stats, indent=1))

        time_stats(args.stats_T, variants, console, save_stats)
    if not args.no_flex and not args.no_table:
        for T in args.T:
            for D in args.D:
                if time.time() - t0 > args.budget_s:
                    record("flex_sink_rescale", T, D, "error", "skipped: time budget of this run")
                    continue
                time_shape_flex(args.B, args.H, T, D, record)

    # ratios to SDPA (and to the Flex rescale path) in the same run
    table = Table(title=f"{props.name}: TFLOP/s fwd / fwd+bwd (ratio to SDPA fwd+bwd), B={args.B} H={args.H} bf16")
    table.add_column("variant")
    keys = list(result["timings"])
    for key in keys:
        table.add_column(key, justify="right")
    names = ["sdpa", *variants, "flex", "flex_sink_rescale"]
    for name in names:
        row = [name]
        for key in keys:
            e = result["timings"][key].get(name, {})
            sd = result["timings"][key].get("sdpa", {})
            if "fwd+bwd_tflops" in e and "fwd+bwd_ms" in sd:
                e["ratio_fwd_bwd_vs_sdpa"] = sd["fwd+bwd_ms"] / e["fwd+bwd_ms"]
                e["ratio_fwd_vs_sdpa"] = sd["fwd_ms"] / e["fwd_ms"]
                row.append(f"{e['fwd_tflops']:.0f} / {e['fwd+bwd_tflops']:.0f} ({e['ratio_fwd_bwd_vs_sdpa']:.2f}x)")
            else:
                row.append(e.get("error", "-")[:30] if isinstance(e.get("error"), str) else "-")
        table.add_row(*row)
    console.print(table)
    result["wall_s"] = time.time() - t0
    save()
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(result))


def plot(result: dict, path: Path) -> None:
    """Bars: forward+backward TFLOP/s of every implementation at every shape (SDPA and Flex as baselines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(result["timings"])
    names = ["sdpa", *VARIANTS, "flex", "flex_sink_rescale"]
    names = [n for n in names if any(n in result["timings"][k] for k in keys)]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [result["timings"][k].get(name, {}).get("fwd+bwd_tflops", 0.0) for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], vals, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], [k.replace("/", ", ") for k in keys])
    ax.set_ylabel("forward+backward TFLOP/s")
    ax.set_title(f"{result['device']}: causal attention, B={result['shape']['B']} H={result['shape']['H']} bf16")
    ax.legend(ncol=5, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def time_shape_flex(B, H, T, D, record) -> None:
    q, k, v = (torch.randn(B, H, T, D, device=DEVICE, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    try:
        plain, rescale = flex_fns(B, H, T)
        sink = torch.randn(H, device=DEVICE, requires_grad=True)
        for name, fn, leaves in (("flex", lambda: plain(q, k, v), [q, k, v]),
                                 ("flex_sink_rescale", lambda: rescale(q, k, v, sink), [q, k, v, sink])):  # fmt: skip
            record(name, T, D, "fwd", bench(fn))
            record(name, T, D, "fwd+bwd", bench(lambda fn=fn: fn().backward(do), grads=leaves))
    except Exception as e:  # a baseline that fails is recorded, not fatal
        record("flex_sink_rescale", T, D, "error", f"{type(e).__name__}: {str(e)[:300]}")


if __name__ == "__main__":
    main()
