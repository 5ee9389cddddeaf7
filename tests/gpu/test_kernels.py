"""The Triton kernels natively on CUDA against the naive definitions (float64): forward, every gradient, NaN-poisoned
buffers, odd lengths, GQA, key padding with rows that see no key, sliding windows, bf16 and fp16, D 64 and 128.
Skipped without CUDA or triton."""

from __future__ import annotations

import importlib.util
import math
import zlib

import pytest
import torch

if not torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
    pytest.skip("needs CUDA and triton", allow_module_level=True)

import kernel_cases  # tests/gpu/kernel_cases.py

import sinklab.ops
from sinklab.ops.colsum import naive as colsum_naive

TOL = 1e-2  # bf16 / fp16 against float64
SHAPES = {
    # name: make_case kwargs
    "bf16-d64-causal-1000": dict(B=2, H=4, Hkv=4, T=1000, S=1000, D=64, dtype=torch.bfloat16, causal=True),
    "fp16-d128-causal-gqa-pad-1537": dict(
        B=2, H=8, Hkv=2, T=1537, S=1537, D=128, dtype=torch.float16, causal=True, pad=True
    ),
    "bf16-d128-window-gqa-pad-kvcache": dict(
        B=2, H=4, Hkv=2, T=1000, S=1100, D=128, dtype=torch.bfloat16, causal=True, window=256, pad=True
    ),
    "fp16-d64-bidirectional-window-1537": dict(
        B=1, H=4, Hkv=4, T=1537, S=1537, D=64, dtype=torch.float16, causal=False, window=100
    ),
    # transformers' layout ([B, T, H, D] transposed) at the pre-training study's shape: clipped's backward read dO
    # with O's strides here and the study's clipped run diverged
    "bf16-d64-causal-bthd-256": dict(B=4, H=8, Hkv=8, T=256, S=256, D=64, dtype=torch.bfloat16, layout="bthd"),
    # the shapes benchmarks/kernels.py --check uses (same compiled kernels as the timed ones)
    "bf16-d64-causal-2048": dict(B=1, H=8, Hkv=8, T=2048, S=2048, D=64, dtype=torch.bfloat16, causal=True),
    "bf16-d128-causal-2048": dict(B=1, H=8, Hkv=8, T=2048, S=2048, D=128, dtype=torch.bfloat16, causal=True),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("variant", kernel_cases.VARIANTS)
def test_kernel_matches_naive(variant, shape):
    seed = zlib.crc32(f"{variant}/{shape}".encode())
    case = kernel_cases.make_case(variant, device="cuda", seed=seed, **SHAPES[shape])
    errs = kernel_cases.check(variant, case)
    bad = {k: e for k, e in errs.items() if math.isnan(e) or e > TOL}
    assert not bad, f"{variant}/{shape}: relative errors above {TOL}: {bad} (all: {errs})"


def test_dispatcher_routes_cuda_to_the_kernels():
    case = kernel_cases.make_case("sink", device="cuda", dtype=torch.bfloat16, T=300, S=300, D=64)
    q, k, v, sink = case["q"], case["k"], case["v"], case["params"]["sink"]
    from sinklab.ops.sink import triton as sink_triton

    before = sinklab.ops.attention_calls()
    auto = sinklab.ops.attention(q, k, v, variant="sink", sink=sink)
    direct = sink_triton.attention(q, k, v, sink=sink)
    assert torch.equal(auto, direct)
    assert sinklab.ops.attention_calls() - before == {"sink/triton": 2}


@pytest.mark.parametrize(
    ("dtype", "D", "mask"),
    [(torch.float32, 64, None), (torch.bfloat16, 96, None), (torch.bfloat16, 64, "float-bias")],
)
def test_unsupported_inputs_fall_back_and_stay_correct(dtype, D, mask):
    # causal=False: the CPU paths build causal masks on the CPU when attn_mask is None (sinklab.ops.masks)
    case = kernel_cases.make_case("softpick", device="cuda", dtype=dtype, T=200, S=200, D=D, causal=False)
    if mask == "float-bias":
        case["kw"]["attn_mask"] = torch.randn(1, 1, 200, 200, device="cuda")
    before = sinklab.ops.attention_calls()
    errs = kernel_cases.check("softpick", case)
    assert sinklab.ops.attention_calls() - before == {"softpick/chunked": 1}
    tol = 1e-5 if dtype == torch.float32 else TOL
    assert all(e <= tol for e in errs.values()), errs


@pytest.mark.parametrize("shape", ["fp16-d128-causal-gqa-pad-1537", "bf16-d128-window-gqa-pad-kvcache"])
def test_colsum_matches_naive(shape):
    case = kernel_cases.make_case("softmax", device="cuda", **SHAPES[shape])
    assert kernel_cases.check_colsum(case) <= 1e-3
    assert kernel_cases.check_lse(case) <= 1e-3


def test_colsum_mass_is_one_per_valid_row():
    """Each valid query row that sees a key gives exactly 1 to the column sums."""
    case = kernel_cases.make_case("softmax", device="cuda", dtype=torch.bfloat16, T=777, S=777, D=64, pad=True)
    from sinklab.ops.colsum import triton as colsum_triton

    q, k = case["q"], case["k"]
    kp = case["kw"]["attn_mask"][:, 0, 0, :]
    scale = 1 / 8
    s = (q.double() @ k.double().repeat_interleave(2, 1).transpose(-1, -2)) * scale
    allowed = colsum_naive.allowed_mask(777, 777, causal=True, key_padding=kp, device="cuda")
    lse = torch.logsumexp(s.masked_fill(~allowed, -math.inf), -1)
    got = colsum_triton.colsum(q, k, lse.float(), scale=scale, causal=True, key_padding=kp)
    rows = (allowed.any(-1) & colsum_naive.query_validity(777, 777, kp, 2, "cuda")[:, None]).sum(-1)  # [B, 1]
    assert torch.allclose(got.double().sum(-1), rows.double().expand(-1, q.shape[1]), rtol=1e-3)
