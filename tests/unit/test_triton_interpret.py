"""Every Triton kernel under Triton's interpreter on the CPU, against the naive definitions: forward, every gradient
and every statistic of each kernel mode, and the byte histograms of the half-precision median.

``TRITON_INTERPRET=1`` must be set before triton is imported, so the kernels run in one subprocess (this file
with ``--worker``) that prints one JSON line per case; the tests below assert on those lines. Small shapes
(T <= 45, D 16/32, and D 24 zero-padded to 32) with 16 x 16 tiles, so every block kind (masked edges, unmasked
interior, GQA heads, padded rows with no key) is exercised, and again with other tiles pinned (``TILED``: dK/dV in
two launches, tensor descriptors, the decode tiles at one query). float32 must match to 1e-5 and float16 to 1e-2
(bfloat16 is not supported by the interpreter's numpy backend; it runs natively in tests/gpu). Skipped when triton
is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
CASES_DIR = HERE.parents[1] / "gpu"  # kernel_cases.py, shared with the native GPU tests

# (name, dtype, kwargs of make_case)
SHAPES = [
    ("causal-gqa-pad-fp32", "float32", dict(T=37, S=45, D=16, causal=True, pad="key_padding")),
    ("window-fp16-defaults", "float16", dict(B=1, T=33, S=33, D=32, causal=False, window=9, Hkv=4, defaults=True)),
    ("causal-bthd-maskpad-fp32", "float32", dict(T=29, S=29, D=16, causal=True, layout="bthd", pad="attn_mask")),
    (
        "window-causal-pad-kvcache-fp32",
        "float32",
        dict(B=1, T=21, S=40, D=16, causal=True, window=12, pad="key_padding"),
    ),
    ("causal-d24-zero-padded-fp32", "float32", dict(B=1, T=29, S=29, D=24, causal=True, Hkv=2)),
]
# (name, dtype, kwargs of make_case, pinned tiles {pass: Tiles kwargs}, with statistics): the launch variants
TILED = [
    ("split-dkdv", "float32", dict(T=37, S=45, D=16, causal=True, pad="key_padding"),
     {"dkdv": dict(m=16, n=16, warps=4, stages=1, split=True)}, False),
    ("tma", "float32", dict(T=29, S=29, D=16, causal=True, layout="bthd", pad="attn_mask"),
     {p: dict(m=16, n=16, warps=4, stages=1, tma=True) for p in ("fwd", "dkdv", "dq")}, False),
    ("decode", "float32", dict(T=1, S=70, D=16, causal=True, pad="key_padding"),
     {"decode": dict(m=16, n=32, warps=4, stages=1)}, True),
]  # fmt: skip
VARIANTS = ("softmax", "softmax1", "sink", "kv_bias", "softpick", "clipped", "sigmoid")
TOL = {"float32": 1e-5, "float16": 1e-2}


def _worker() -> None:
    import torch

    sys.path.insert(0, str(CASES_DIR))
    import kernel_cases

    torch.manual_seed(0)
    for name, dtype, kw in SHAPES:
        for variant in VARIANTS:
            case = kernel_cases.make_case(variant, dtype=getattr(torch, dtype), **kw)
            errs = kernel_cases.check(variant, case)
            print(json.dumps({"case": f"{variant}/{name}", "dtype": dtype, "errors": errs}), flush=True)
            errs = kernel_cases.check_stats(variant, case)
            print(json.dumps({"case": f"{variant}/{name}/stats", "dtype": dtype, "errors": errs}), flush=True)
    _tiled_cases()
    _histogram_cases()


def _tiled_cases() -> None:
    """The same checks with other tiles pinned: dK and dV in two launches, tensor descriptors, the decode tiles."""
    import kernel_cases
    import torch

    from sinklab.ops._triton import flash

    for name, dtype, kw, pins, stats in TILED:
        flash.TUNED.clear()
        for pass_, tiles in pins.items():
            flash.pin(kw["D"], pass_, flash.Tiles(**tiles))
        for variant in VARIANTS:
            case = kernel_cases.make_case(variant, dtype=getattr(torch, dtype), **kw)
            errs = kernel_cases.check(variant, case)
            print(json.dumps({"case": f"{variant}/{name}", "dtype": dtype, "errors": errs}), flush=True)
            if stats:
                errs = kernel_cases.check_stats(variant, case)
                print(json.dumps({"case": f"{variant}/{name}/stats", "dtype": dtype, "errors": errs}), flush=True)
    flash.TUNED.clear()


def _histogram_cases() -> None:
    """The byte-histogram kernels against torch.bincount (counts must be equal: error = mismatched bins)."""
    import torch

    from sinklab.ops._triton.histogram import BLOCK, byte_histogram

    for dtype, n in (("float16", 3 * BLOCK + 17), ("bfloat16", 1000)):
        x = torch.randn(n, dtype=torch.float32).mul(torch.logspace(-3, 4, n)).to(getattr(torch, dtype))
        bits = x.view(torch.int16)
        magnitude = bits.int() & 0x7FFF
        high = torch.bincount(magnitude >> 8, minlength=128)
        b = torch.searchsorted(high.cumsum(0), n // 2)  # a well-populated bin
        low = torch.bincount((magnitude & 0xFF)[(magnitude >> 8) == b], minlength=256)
        errs = {
            "high": float((byte_histogram(bits) != high).sum()),
            "low": float((byte_histogram(bits, b) != low).sum()),
        }
        print(json.dumps({"case": f"histogram/{dtype}", "dtype": "float32", "errors": errs}), flush=True)


def test_every_kernel_matches_naive_under_the_interpreter():
    """One test (one subprocess) for all cases, so ``pytest -n 2`` never runs the interpreter twice."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(HERE), "--worker"], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["case"]: r for r in map(json.loads, proc.stdout.splitlines()) if "case" in r}
    expected = {f"{v}/{name}{part}" for name, _, _ in SHAPES for v in VARIANTS for part in ("", "/stats")}
    parts = {name: ("", "/stats") if stats else ("",) for name, _, _, _, stats in TILED}
    expected |= {f"{v}/{name}{part}" for name in parts for v in VARIANTS for part in parts[name]}
    expected |= {"histogram/float16", "histogram/bfloat16"}
    assert set(results) == expected, f"missing cases: {sorted(expected - set(results))}"
    bad = {
        case: {k: e for k, e in r["errors"].items() if math.isnan(e) or e > TOL[r["dtype"]]}
        for case, r in results.items()
    }
    bad = {case: errs for case, errs in bad.items() if errs}
    assert not bad, f"relative errors above tolerance ({TOL}): {bad}"


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker()


def test_torch_compile_leaves_the_kernels_as_launched():
    """torch.compile (train --compile) runs sinklab's kernel entry eagerly rather than handing its Triton kernels to
    inductor, whose recompilation of the softmax kernel failed on the H200 (tests/gpu checks the compiled training)."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    from sinklab.ops._triton import flash

    assert flash.attention._torchdynamo_disable and "inductor" in flash.attention._torchdynamo_disable_msg
