"""Every attention implementation with and without sinks on one GPU, in the same run: speed only after a
correctness check against the fp32 reference.

    PYTHONPATH=src python benchmarks/time_kernels.py --tune --check --stats --out benchmarks/results/kernels-h200.json

Implementations (``impl`` in the rows): ``sdpa-cudnn`` and ``sdpa-flash`` (torch SDPA pinned to its cuDNN / flash
backend; ``sdpa`` the default dispatch, which is cuDNN on the H200), ``fa4`` and ``fa4-sink`` (FlashAttention-4's
``flash_attn_func``, native [B, T, H, D] layout, ``learnable_sink`` for the sink; when ``flash-attn-4`` is
installed), ``flex`` and ``flex-sink`` (FlexAttention, and the usual sink without a custom kernel: out *
sigmoid(lse - s_h)), ``sinklab`` (``sinklab.ops.attention``, impl auto: FA4 where it applies, else the Triton
kernels; the row says which ran) and ``sinklab-triton`` (the Triton kernels for every variant).

1. --tune: tile configs of the Triton kernels at T = 8192 (and of the column-sum kernel at T = 32768); the fastest
   per head dim are used below (recorded in the JSON; SINKLAB_TRITON_TILES=FILE keeps them for later processes).
2. --check: the Triton kernel modes against their float64 naive definition (tests/gpu/kernel_cases.py: every
   gradient and statistic, NaN-poisoned buffers).
3. Every (implementation, variant, shape) is first checked against the fp32 reference (``sinklab.ops.attention``,
   impl naive, float32 on the CPU) at the shape's heads and head dim and T <= 1024 (decode: 1 query, 2048 keys):
   output and every gradient within 1e-2 relative; a failing one is not timed. Then forward and forward+backward
   medians (CUDA events, >= 5 runs). TFLOP/s counts 4 B H D per visible (query, key) pair: T^2/2 pairs causal,
   T_q T_k otherwise, and 3.5x the forward for forward+backward; the decode row also reports GB/s of K and V read.
4. --stats: forward + statistics (colsum and entropy) against a plain SDPA forward at the Llama-3.2-1B attention
   shape (B=1, H=32, Hkv=8, D=64, bf16, causal), T = 8k, 32k, 64k, written to --stats-out.

Rows (``rows`` in the JSON): {impl, variant, shape, B, T, T_q, D, heads, kv_heads, pass: fwd | fwd_bwd, ms, tflops,
ratio_vs_sdpa (to sdpa-cudnn in the same run), ratio_vs_fa4_sink (where FA4 ran), check}. Prints a table, then ONE
JSON line last; partial results are written to --out after every measurement; --budget-s skips what is left.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gpu"))
import kernel_cases  # noqa: E402  (the same checks as tests/gpu)

import sinklab.ops  # noqa: E402
from sinklab.ops import _fa4  # noqa: E402
from sinklab.ops.stats import StatsRequest  # noqa: E402

VARIANTS = kernel_cases.VARIANTS
TOL = 1e-2
DEVICE = "cuda"
CHECK_T, TUNE_T, STATS_TUNE_T, STATS_ALL_T = 2048, 8192, 32768, 32768


@dataclass(frozen=True)
class Shape:
    """One timed problem: q [B, H, T_q, D], k/v [B, Hkv, T_k, D], bf16."""

    name: str
    B: int
    H: int
    Hkv: int
    Tq: int
    Tk: int
    D: int
    causal: bool = True
    backward: bool = True

    def pairs(self) -> float:
        """Visible (query, key) pairs per (batch, head): T^2 / 2 causal (the usual count), T_q T_k otherwise."""
        return self.Tq * self.Tk / 2 if self.causal and self.Tq == self.Tk else self.Tq * self.Tk

    def flops(self, backward: bool) -> float:
        return 4 * self.B * self.H * self.D * self.pairs() * (3.5 if backward else 1.0)

    def kv_bytes(self) -> int:
        return 2 * self.B * self.Hkv * self.Tk * self.D * 2  # K and V, bf16

    def small(self) -> Shape:
        """The shape the correctness check runs: same heads, head dim and mask, T <= 1024 (decode: 2048 keys)."""
        if self.Tq == 1:
            return Shape(self.name, 2, self.H, self.Hkv, 1, 2048, self.D, self.causal, self.backward)
        return Shape(self.name, 1, self.H, self.Hkv, 1024, 1024, self.D, self.causal, self.backward)


SHAPES = {
    s.name: s
    for s in (
        Shape("T4k-D64", 2, 16, 16, 4096, 4096, 64),
        Shape("T4k-D128", 2, 16, 16, 4096, 4096, 128),
        Shape("T16k-D64", 2, 16, 16, 16384, 16384, 64),
        Shape("T16k-D128", 2, 16, 16, 16384, 16384, 128),
        Shape("GQA32/8-T8k-D128", 2, 32, 8, 8192, 8192, 128),
        Shape("T32k-D64", 2, 16, 16, 32768, 32768, 64),
        Shape("T32k-D128", 2, 16, 16, 32768, 32768, 128),
        Shape("decode-T32k-D128", 64, 16, 16, 1, 32768, 128, causal=False, backward=False),
    )
}


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


def bench(fn, grads=None) -> float:
    """Median milliseconds of ``fn`` over >= 5 timed runs (and >= 100 ms of them), after warm-up."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est = (time.perf_counter() - t0) * 1e3
    return triton.testing.do_bench(fn, warmup=max(25, 2 * est), rep=max(100, 5 * est), grad_to_none=grads,
                                   return_mode="median")  # fmt: skip


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


def run_tune(Ds: list[int], console: Console, budget_s: float) -> dict:
    """Time every candidate tile set of every pass (``flash.candidates``) on the softmax mode, B=2, H=16, bf16,
    causal, T = 8192 (column sums: B=1, H=32, T = 32768; decode: T_q = 1 against 32768 keys, B=64) and pin the
    fastest (``flash.pin``; written to $SINKLAB_TRITON_TILES for later processes). dK/dV and dQ are timed as the
    whole backward with the other pass at its default. A candidate that fails to compile is recorded and skipped."""
    from dataclasses import replace

    from sinklab.ops._triton import flash

    t0 = time.time()
    chosen: dict = {}
    for D in Ds:
        prob = flash.Problem(flash.MODES["softmax"], True, None, 1 / math.sqrt(D))
        heads = flash.Heads()
        q, k, v = (torch.randn(2, 16, TUNE_T, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
        do = torch.randn_like(q)
        o, lse = flash.forward(q, k, v, None, prob, heads)
        qs, ks = (torch.randn(1, 32, STATS_TUNE_T, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
        _, lse_s = flash.forward(qs, ks, ks, None, prob, heads)
        q1 = torch.randn(64, 16, 1, D, device=DEVICE, dtype=torch.bfloat16)
        kd = torch.randn(64, 16, STATS_TUNE_T, D, device=DEVICE, dtype=torch.bfloat16)
        dprob = flash.Problem(flash.MODES["softmax"], False, None, 1 / math.sqrt(D))
        timed = {  # pass -> (what to time, its arguments before the config)
            "fwd": (flash.forward, (q, k, v, None, prob, heads)),
            "dkdv": (flash.backward, (q, k, v, o, lse, do, None, prob, heads)),
            "dq": (flash.backward, (q, k, v, o, lse, do, None, prob, heads)),
            "colsum": (partial(flash.column_stats, entropy=True), (qs, ks, lse_s, None, None, prob, heads)),
            "decode": (flash.forward, (q1, kd, kd, None, dprob, heads)),
        }
        entry: dict = {}
        for pass_, (fn, fn_args) in timed.items():
            if D not in (64, 128) or (pass_ == "decode" and D != 128):
                continue
            results = []
            for tiles in flash.candidates(D, pass_):
                if time.time() - t0 > budget_s:
                    results.append({"tiles": asdict(tiles), "error": "skipped: tune budget"})
                    continue
                cfg = replace(flash.config(D), **{pass_: tiles})
                try:
                    ms = bench(partial(fn, *fn_args, cfg=cfg))
                    results.append({"tiles": asdict(tiles), "ms": ms})
                    console.print(f"tune D={D} {pass_:6s} {tiles}: {ms:.3f} ms")
                except Exception as e:  # a candidate this Triton cannot compile or launch
                    results.append({"tiles": asdict(tiles), "error": f"{type(e).__name__}: {str(e)[:160]}"})
                    console.print(f"tune D={D} {pass_:6s} {tiles}: {type(e).__name__}")
            best = min((r for r in results if "ms" in r), key=lambda r: r["ms"], default=None)
            if best is not None:
                flash.pin(D, pass_, flash.Tiles(**best["tiles"]))
            entry[pass_] = {"best": best, "candidates": results}
        chosen[str(D)] = entry
        del q, k, v, do, o, qs, ks, q1, kd, timed
        torch.cuda.empty_cache()
    path = os.environ.get("SINKLAB_TRITON_TILES")
    if path:  # later processes (the GPU tests, the timed run) read it at import
        Path(path).write_text(json.dumps(flash.tuned_json()))
    return {"pinned": flash.tuned_json(), "timings": chosen}


# ---------------------------------------------------------------- implementations: run(variant, q, k, v, params, shape)
@dataclass(frozen=True)
class Impl:
    """One implementation: the variants it has, the storage its timed inputs get ("bhtd", or "bthd" seen through
    transpose(1, 2): FA4's native layout), and why it cannot run here (None if it can)."""

    name: str
    variants: tuple[str, ...]
    run: Callable[..., torch.Tensor]  # (variant, q, k, v, params, shape) -> out
    layout: str = "bhtd"
    missing: Callable[[], str | None] | None = None

    def reason(self) -> str | None:
        return self.missing() if self.missing else None


def _sdpa(backend: str | None):
    def run(variant, q, k, v, params, shape):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        pin = sdpa_kernel([getattr(SDPBackend, backend)]) if backend else contextlib.nullcontext()
        with pin:
            return F.scaled_dot_product_attention(q, k, v, is_causal=shape.causal, enable_gqa=shape.Hkv != shape.H)

    return run


def _fa4_native(variant, q, k, v, params, shape):
    out, _ = _fa4._interface()(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=shape.causal,
        learnable_sink=params.get("sink"), num_splits=0 if _split_kv(shape) else 1,
    )  # fmt: skip
    return out.transpose(1, 2)


def _split_kv(shape: Shape) -> bool:
    """FA4's split-KV heuristic for a decode forward (num_splits=0); its sm90 kernels have no split-KV."""
    return shape.Tq == 1 and not torch.is_grad_enabled() and torch.cuda.get_device_capability()[0] >= 10


def _fa4_missing() -> str | None:
    if _fa4._interface() is None:
        return "flash-attn-4 not installed"
    if torch.cuda.get_device_capability()[0] not in _fa4.ARCHS:
        return "not a Hopper/Blackwell GPU"
    return None


def _sinklab(variant, q, k, v, params, shape):
    return sinklab.ops.attention(q, k, v, variant=variant, causal=shape.causal, **params)


def _triton(variant, q, k, v, params, shape):
    return kernel_cases.flash_attention(variant, q, k, v, causal=shape.causal, **params)


_FLEX: dict = {}


def _flex(variant, q, k, v, params, shape):
    """FlexAttention, compiled once per shape; the sink by the logsumexp rescale out * sigmoid(lse - s_h)."""
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

    if shape not in _FLEX:
        for name in ("recompile_limit", "cache_size_limit"):  # one compile per shape; the default limit is 8
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        mask = None
        if shape.causal:
            mask = create_block_mask(lambda b, h, i, j: j <= i, B=None, H=None, Q_LEN=shape.Tq, KV_LEN=shape.Tk,
                                     device=DEVICE)  # fmt: skip
        _FLEX[shape] = (torch.compile(flex_attention, dynamic=False), mask)
    flex, mask = _FLEX[shape]
    gqa = shape.Hkv != shape.H
    if variant == "softmax":
        return flex(q, k, v, block_mask=mask, enable_gqa=gqa)
    out, aux = flex(q, k, v, block_mask=mask, enable_gqa=gqa, return_aux=AuxRequest(lse=True))
    return out * torch.sigmoid(aux.lse - params["sink"][None, :, None])[..., None].to(out.dtype)


IMPLS = {
    i.name: i
    for i in (
        Impl("sdpa-cudnn", ("softmax",), _sdpa("CUDNN_ATTENTION")),
        Impl("sdpa-flash", ("softmax",), _sdpa("FLASH_ATTENTION")),
        Impl("sdpa", ("softmax",), _sdpa(None)),
        Impl("fa4", ("softmax",), _fa4_native, layout="bthd", missing=_fa4_missing),
        Impl("fa4-sink", ("sink",), _fa4_native, layout="bthd", missing=_fa4_missing),
        Impl("sinklab", _fa4.VARIANTS, _sinklab),
        Impl("sinklab-triton", VARIANTS, _triton),
        Impl("flex-sink", ("sink",), _flex),
    )
}
BASELINE, FA4_SINK = "sdpa-cudnn", "fa4-sink"


# ---------------------------------------------------------------- the check before the timing
def check_cell(impl: Impl, variant: str, shape: Shape, refs: dict) -> dict:
    """Relative errors of the output (and, where the shape is timed backward, of every gradient) against the fp32
    reference at ``shape.small()``; the reference is computed once per (variant, small shape, layout)."""
    small = shape.small()
    case = kernel_cases.make_case(variant, B=small.B, H=small.H, Hkv=small.Hkv, T=small.Tq, S=small.Tk, D=small.D,
                                  dtype=torch.bfloat16, device=DEVICE, causal=small.causal, seed=small.D,
                                  layout=impl.layout)  # fmt: skip

    def fn(q, k, v, causal, window, **params):
        return impl.run(variant, q, k, v, params, small)

    def ref_fn(q, k, v, **kw):
        return kernel_cases.naive_attention(variant, q, k, v, **kw)

    grad_out = torch.randn(case["q"].shape, generator=torch.Generator().manual_seed(1))
    key = (variant, small, impl.layout)  # make_case draws other inputs for another storage layout
    if small.backward:
        got = kernel_cases._run(fn, case, None, grad_out)
        if key not in refs:
            refs[key] = kernel_cases._run(ref_fn, case, torch.float32, grad_out, device="cpu")
    else:
        _, leaves, kw = kernel_cases._inputs(case, None, DEVICE, grad=False)
        with torch.no_grad():
            got = {"out": fn(*leaves[:3], **kw)}
        if key not in refs:
            _, leaves, kw = kernel_cases._inputs(case, torch.float32, "cpu", grad=False)
            refs[key] = {"out": ref_fn(*leaves[:3], **kw)}
    errs = {name: kernel_cases.rel_err(got[name], refs[key][name]) for name in refs[key]}
    return {"ok": all(not math.isnan(e) and e <= TOL for e in errs.values()), "errors": errs}


# ---------------------------------------------------------------- timing
class Inputs:
    """The timed tensors of one shape, per storage layout, made once and reused by every implementation."""

    def __init__(self, shape: Shape):
        self.shape, self.made = shape, {}

    def get(self, layout: str) -> tuple[torch.Tensor, ...]:
        if layout not in self.made:
            s = self.shape

            def heads(h, t):
                x = torch.randn(s.B, t, h, s.D, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2)
                return x if layout == "bthd" else x.contiguous()

            q, k, v = heads(s.H, s.Tq), heads(s.Hkv, s.Tk), heads(s.Hkv, s.Tk)
            self.made[layout] = (*(x.requires_grad_(s.backward) for x in (q, k, v)), torch.randn_like(q))
        return self.made[layout]


def time_cell(impl: Impl, variant: str, inputs: Inputs) -> dict[str, float | str]:
    """{"fwd": ms, "fwd_bwd": ms, "ran": which sinklab impl ran} of one implementation and variant."""
    shape = inputs.shape
    q, k, v, do = inputs.get(impl.layout)
    params = params_for(variant, shape.H, shape.D, DEVICE)
    if not shape.backward:
        params = {n: x.detach() for n, x in params.items()}
    leaves = [q, k, v, *(x for x in params.values() if isinstance(x, torch.Tensor))]

    def fwd():
        return impl.run(variant, q, k, v, params, shape)

    before = sinklab.ops.attention_calls()
    with torch.no_grad():
        out = {"fwd": bench(fwd)}
    ran = sinklab.ops.attention_calls() - before
    if ran:
        out["ran"] = ",".join(sorted({key.split("/")[1] for key in ran}))
    if shape.backward:
        out["fwd_bwd"] = bench(lambda: fwd().backward(do), grads=leaves)
    return out


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


# ---------------------------------------------------------------- the table
def ratios(rows: list[dict]) -> None:
    """ratio_vs_sdpa (sdpa-cudnn, or the default dispatch where cuDNN declined the shape) and ratio_vs_fa4_sink of
    every timed row, against the same shape and pass in the same run: baseline ms / row ms (> 1 = faster)."""
    ms = {(r["impl"], r["variant"], r["shape"], r["pass"]): r["ms"] for r in rows if r.get("ms")}
    for r in rows:
        if not r.get("ms"):
            continue
        cell = (r["shape"], r["pass"])
        base = ms.get((BASELINE, "softmax", *cell)) or ms.get(("sdpa", "softmax", *cell))
        fa4 = ms.get((FA4_SINK, "sink", *cell))
        r["ratio_vs_sdpa"] = base / r["ms"] if base else None
        r["ratio_vs_fa4_sink"] = fa4 / r["ms"] if fa4 else None


def print_table(rows: list[dict], shapes: list[str], kind: str, console: Console, title: str) -> None:
    table = Table(title=f"{title}: {kind} TFLOP/s (ratio to sdpa-cudnn)")
    table.add_column("impl / variant")
    for s in shapes:
        table.add_column(s, justify="right")
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        if r["pass"] == kind:
            text = r.get("error") or f"{r['tflops']:.0f} ({r['ratio_vs_sdpa'] or 0:.2f})"
            cells.setdefault((r["impl"], r["variant"]), {})[r["shape"]] = text[:24]
    for (impl, variant), by_shape in cells.items():
        table.add_row(f"{impl} / {variant}", *(by_shape.get(s, "-") for s in shapes))
    console.print(table)


def plot(result: dict, path: Path) -> None:
    """Left: forward+backward TFLOP/s per shape of the baselines and sinklab's sink; right: every (impl, variant)
    against sdpa-cudnn of its own run, one cell per shape and pass (forward+backward, forward), as a heat map with a
    colour bar. Rows of a merged file carry ``run``; an (impl, variant) timed in more than one run gets one heat-map
    row per run ("[run a]"), the bars take the last run's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in result["rows"] if r.get("ms")]
    if not timed:
        return
    runs_of: dict[str, set] = {}
    for r in timed:
        runs_of.setdefault(f"{r['impl']} / {r['variant']}", set()).add(r.get("run"))

    def label(r: dict) -> str:
        base = f"{r['impl']} / {r['variant']}"
        return f"{base} [run {r['run']}]" if len(runs_of[base]) > 1 else base

    rows = [r for r in timed if r["pass"] == "fwd_bwd"]
    shapes = [s for s in SHAPES if any(r["shape"] == s for r in rows)]
    cols = [(s, p) for s in SHAPES for p in ("fwd_bwd", "fwd") if any(r["shape"] == s and r["pass"] == p
                                                                      for r in timed)]  # fmt: skip
    labels = list(dict.fromkeys(label(r) for r in timed))
    fig, (ax, hm) = plt.subplots(1, 2, figsize=(22, 8), gridspec_kw={"width_ratios": [1, 1.3]})
    bars = [lab for lab in ("sdpa-cudnn / softmax", "sdpa-flash / softmax", "fa4 / softmax", "fa4-sink / sink",
                            "flex-sink / sink", "sinklab / sink", "sinklab-triton / sink",
                            "sinklab-triton / softpick") if lab in runs_of]  # fmt: skip
    width = 0.8 / max(len(bars), 1)
    value = {(f"{r['impl']} / {r['variant']}", r["shape"]): r for r in rows}
    for i, lab in enumerate(bars):
        ax.bar([j + i * width for j in range(len(shapes))],
               [value.get((lab, s), {}).get("tflops", 0.0) for s in shapes], width, label=lab)  # fmt: skip
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=20, fontsize=8)
    ax.set_xlabel("shape (B=2, H=16 unless named; bf16, causal)")
    ax.set_ylabel("forward+backward TFLOP/s")
    ax.legend(fontsize=7, ncol=2)
    cell = {(label(r), r["shape"], r["pass"]): r for r in timed}
    grid = [[(cell.get((lab, s, p), {}).get("ratio_vs_sdpa") or math.nan) for s, p in cols] for lab in labels]
    im = hm.imshow(grid, cmap="RdYlGn", vmin=0.4, vmax=1.2, aspect="auto")
    names = {"fwd_bwd": "fwd+bwd", "fwd": "fwd"}
    hm.set_xticks(range(len(cols)), [f"{s} {names[p]}" for s, p in cols], rotation=40, fontsize=7, ha="right")
    hm.set_yticks(range(len(labels)), labels, fontsize=7)
    hm.set_xlabel("shape, pass")
    hm.set_ylabel("implementation / variant")
    for i, line in enumerate(grid):
        for j, x in enumerate(line):
            if not math.isnan(x):
                hm.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=5.5)
    fig.colorbar(im, ax=hm, label="speed / sdpa-cudnn of the same run")
    fig.suptitle(f"{result['device']}: attention with and without sinks")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--check", action="store_true", help="check the Triton kernel modes against float64 first")
    ap.add_argument("--tune", action="store_true", help="pick Triton tile configs at T=8192 first")
    ap.add_argument("--tune-only", action="store_true", help="stop after --tune (tiles go to $SINKLAB_TRITON_TILES)")
    ap.add_argument("--tune-budget-s", type=float, default=240, help="stop timing tune candidates after this")
    ap.add_argument(
        "--flex-shapes",
        nargs="*",
        default=None,
        help="time flex-sink on these shapes only (it compiles once per shape)",
    )
    ap.add_argument("--append", action="store_true", help="keep the rows of --out (same machine) and add these")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip the cells left after this many seconds")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kernels-h200.json")
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG beside --out from its JSON and stop")
    ap.add_argument("--no-table", action="store_true", help="skip the implementation table")
    ap.add_argument("--stats", action="store_true", help="time forward + statistics against SDPA (Llama-3.2-1B shape)")
    ap.add_argument("--stats-T", type=int, nargs="+", default=[8192, 32768, 65536])
    ap.add_argument("--stats-out", type=Path, default=ROOT / "benchmarks" / "results" / "kernels-stats-h200.json")
    args = ap.parse_args()
    console = Console()
    if args.plot_only:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return
    import triton

    from sinklab.provenance import run_provenance

    props = torch.cuda.get_device_properties(0)
    t0 = time.time()
    result = {
        "benchmark": "kernels",
        "device": props.name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "flash_attn_4": _fa4_version(),
        "shapes": {name: asdict(s) for name, s in SHAPES.items()},
        "flops": "4*B*H*D per visible (query, key) pair (T^2/2 causal, T_q*T_k otherwise); forward+backward 3.5x",
        "note": "one GPU, nothing else running on it; medians of CUDA-event timings (triton.testing.do_bench); "
        "forward timed under no_grad; every row checked against the fp32 reference first",
        "provenance": {
            **run_provenance(seed=0),
            "command": "python benchmarks/time_kernels.py " + " ".join(sys.argv[1:]),
        },
        "check": {},
        "tuned": {},
        "rows": [],
    }
    if args.append and args.out.exists():
        old = json.loads(args.out.read_text())
        result["check"], result["tuned"] = old.get("check", {}), old.get("tuned", {})
        result["rows"] = [r for r in old.get("rows", []) if r["shape"] not in args.shapes]

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.out)

    if args.tune:  # first, so that every check below runs the very kernels that get timed
        result["tuned"] = run_tune(sorted({SHAPES[s].D for s in args.shapes}), console, args.tune_budget_s)
        save()
        if args.tune_only:
            return
    elif os.environ.get("SINKLAB_TRITON_TILES") and Path(os.environ["SINKLAB_TRITON_TILES"]).exists():
        result["tuned"] = json.loads(Path(os.environ["SINKLAB_TRITON_TILES"]).read_text())
    from sinklab.ops._triton import flash

    result["tiles"] = {str(d): asdict(flash.config(d)) for d in (64, 128)}
    variants = list(args.variants)
    if args.check:
        result["check"] = run_check([64, 128], console)
        failed = {k.split("/")[0] for k, r in result["check"].items() if not r["ok"]}
        variants = [v for v in variants if v not in failed]
        result["not_timed_failed_check"] = sorted(failed)
        save()
    refs: dict = {}
    checks: dict = {}
    for name in [] if args.no_table else args.shapes:
        shape, inputs = SHAPES[name], Inputs(SHAPES[name])
        for impl in (IMPLS[i] for i in args.impls):
            for variant in (v for v in impl.variants if v in variants):
                base = {"impl": impl.name, "variant": variant, "shape": name, "B": shape.B, "T": shape.Tk,
                        "T_q": shape.Tq, "D": shape.D, "heads": shape.H, "kv_heads": shape.Hkv}  # fmt: skip
                passes = ["fwd", "fwd_bwd"] if shape.backward else ["fwd"]
                reason = impl.reason()
                if impl.name == "flex-sink" and args.flex_shapes is not None and name not in args.flex_shapes:
                    reason = "skipped: not in --flex-shapes"
                if reason is None and time.time() - t0 > args.budget_s:
                    reason = "skipped: time budget of this run"
                if reason is None:
                    key = (impl.name, variant, shape.small())
                    try:
                        checks[key] = checks.get(key) or check_cell(impl, variant, shape, refs)
                        reason = None if checks[key]["ok"] else f"failed the check: {checks[key]['errors']}"
                    except Exception as e:  # an implementation that cannot run a shape is recorded, not fatal
                        reason = f"{type(e).__name__}: {str(e)[:200]}"
                timed: dict = {}
                if reason is None:
                    try:
                        timed = time_cell(impl, variant, inputs)
                    except Exception as e:
                        reason = f"{type(e).__name__}: {str(e)[:200]}"
                for kind in passes:
                    row = {**base, "pass": kind, "check": checks.get((impl.name, variant, shape.small()))}
                    if reason is not None:
                        row["error"] = reason
                    else:
                        row["ms"] = timed[kind]
                        row["tflops"] = shape.flops(kind == "fwd_bwd") / (timed[kind] * 1e-3) / 1e12
                        if shape.Tq == 1:
                            row["gbps"] = shape.kv_bytes() / (timed[kind] * 1e-3) / 1e9
                        if "ran" in timed:
                            row["ran"] = timed["ran"]
                    result["rows"].append(row)
                    done = row.get("error", f"{row.get('ms', 0):.3f} ms {row.get('tflops', 0):.0f} TFLOP/s")
                    console.print(f"[{time.time() - t0:6.1f}s] {name:18s} {impl.name:15s} {variant:9s} {kind:8s} "
                                  f"{done[:120]}")  # fmt: skip
                ratios(result["rows"])
                save()
        del inputs
        torch.cuda.empty_cache()
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
    shapes = [s for s in SHAPES if any(r["shape"] == s for r in result["rows"])]
    for kind in ("fwd_bwd", "fwd"):
        print_table(result["rows"], shapes, kind, console, props.name)
    result["wall_s"] = time.time() - t0
    save()
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(result))


def _fa4_version() -> str | None:
    if _fa4._interface() is None:
        return None
    from importlib.metadata import version

    return version("flash-attn-4")


if __name__ == "__main__":
    main()
