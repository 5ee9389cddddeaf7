"""The FlashAttention-4 path (``impl="fa4"``, ``sinklab.ops._fa4``) natively on a Hopper/Blackwell GPU against the
naive definitions (float64 on the CPU): forward, every gradient (dsink included), every statistic, NaN-poisoned
buffers, GQA, a KV cache (S > T), sliding windows, bf16 and fp16; and ``auto`` choosing it where it applies.
Skipped without CUDA or without ``flash-attn-4``."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from sinklab.ops import _fa4

if not torch.cuda.is_available() or _fa4._interface() is None:
    pytest.skip("needs CUDA and flash-attn-4 (flash_attn.cute)", allow_module_level=True)
if torch.cuda.get_device_capability()[0] not in _fa4.ARCHS:
    pytest.skip("FlashAttention-4 needs a Hopper or Blackwell GPU", allow_module_level=True)

import kernel_cases  # tests/gpu/kernel_cases.py

import sinklab.ops

TOL = 1e-2  # bf16 / fp16 against float64, as for the Triton kernels
SHAPES = {
    "bf16-d64-causal-1000": dict(B=2, H=4, Hkv=4, T=1000, S=1000, D=64, dtype=torch.bfloat16),
    "fp16-d128-causal-gqa-1537": dict(B=2, H=8, Hkv=2, T=1537, S=1537, D=128, dtype=torch.float16),
    "bf16-d128-window-gqa-kvcache": dict(B=2, H=4, Hkv=2, T=1000, S=1100, D=128, dtype=torch.bfloat16, window=256),
    "bf16-d64-causal-bthd-256": dict(B=4, H=8, Hkv=8, T=256, S=256, D=64, dtype=torch.bfloat16, layout="bthd"),
}


def _fa4_attention(variant):
    def fn(q, k, v, **kw):
        return sinklab.ops.attention(q, k, v, variant=variant, impl="fa4", **kw)

    return fn


def _naive(variant):
    def fn(q, k, v, **kw):
        return kernel_cases.naive_attention(variant, q, k, v, **kw)

    return fn


def _bad(errs: dict[str, float]) -> dict[str, float]:
    return {k: e for k, e in errs.items() if math.isnan(e) or e > TOL}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("variant", _fa4.VARIANTS)
def test_fa4_matches_naive(variant, shape):
    case = kernel_cases.make_case(variant, device="cuda", seed=zlib.crc32(f"fa4/{variant}/{shape}".encode()),
                                  **SHAPES[shape])  # fmt: skip
    grad_out = torch.randn(case["q"].shape, generator=torch.Generator().manual_seed(1))
    with kernel_cases.poisoned():
        got = kernel_cases._run(_fa4_attention(variant), case, None, grad_out)
    ref = kernel_cases._run(_naive(variant), case, torch.float64, grad_out, device="cpu")
    errs = {name: kernel_cases.rel_err(got[name], ref[name]) for name in ref}
    assert not _bad(errs), f"{variant}/{shape}: relative errors above {TOL}: {_bad(errs)} (all: {errs})"


@pytest.mark.parametrize("shape", ["fp16-d128-causal-gqa-1537", "bf16-d128-window-gqa-kvcache"])
@pytest.mark.parametrize("variant", _fa4.VARIANTS)
def test_fa4_statistics_match_naive(variant, shape):
    case = kernel_cases.make_case(variant, device="cuda", seed=zlib.crc32(f"fa4-stats/{variant}/{shape}".encode()),
                                  **SHAPES[shape])  # fmt: skip
    request = kernel_cases.STATS
    _, leaves, kw = kernel_cases._inputs(case, None, "cuda", grad=False)
    with kernel_cases.poisoned(), torch.no_grad():
        out, got = sinklab.ops.attention(*leaves[:3], variant=variant, impl="fa4", stats=request, **kw)
    _, leaves, kw = kernel_cases._inputs(case, torch.float64, "cpu", grad=False)
    ref_out, ref = kernel_cases.naive_attention(variant, *leaves[:3], stats=request, **kw)
    errs = {"out": kernel_cases.rel_err(out, ref_out)}
    for name in kernel_cases.STAT_FIELDS:
        a, b = getattr(got, name), getattr(ref, name)
        if a is not None or b is not None:
            errs[name] = kernel_cases.rel_err(a, b) if a is not None and b is not None else math.nan
    assert not _bad(errs), f"{variant}/{shape}: relative errors above {TOL}: {_bad(errs)} (all: {errs})"


def test_auto_prefers_fa4_and_falls_back_for_what_it_lacks():
    """auto runs FA4 for softmax/softmax1/sink, the Triton kernels for key padding and for variants FA4 lacks;
    attention_calls() says which ran."""
    case = kernel_cases.make_case("sink", device="cuda", B=1, H=4, Hkv=4, T=128, S=128, D=64, dtype=torch.bfloat16)
    q, k, v, sink = case["q"], case["k"], case["v"], case["params"]["sink"]
    before = sinklab.ops.attention_calls()
    sinklab.ops.attention(q, k, v, variant="sink", sink=sink)
    sinklab.ops.attention(q, k, v, variant="softmax", key_padding=torch.ones(1, 128, dtype=torch.bool, device="cuda"))
    sinklab.ops.attention(q, k, v, variant="softpick")
    calls = sinklab.ops.attention_calls() - before
    assert calls == {"sink/fa4": 1, "softmax/triton": 1, "softpick/triton": 1}
