"""The Triton kernels natively on CUDA against the naive definitions (float64): forward, every gradient, every
statistic, NaN-poisoned buffers, odd lengths, GQA, key padding (argument and attn_mask) with rows that see no key,
sliding windows, bf16 and fp16, D 64 and 128. Skipped without CUDA or triton."""

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
from sinklab.ops._triton import flash
from sinklab.ops.stats import StatsRequest

TOL = 1e-2  # bf16 / fp16 against float64
SHAPES = {
    # name: make_case kwargs
    "bf16-d64-causal-1000": dict(B=2, H=4, Hkv=4, T=1000, S=1000, D=64, dtype=torch.bfloat16, causal=True),
    "fp16-d128-causal-gqa-pad-1537": dict(
        B=2, H=8, Hkv=2, T=1537, S=1537, D=128, dtype=torch.float16, causal=True, pad="key_padding"
    ),
    "bf16-d128-window-gqa-maskpad-kvcache": dict(
        B=2, H=4, Hkv=2, T=1000, S=1100, D=128, dtype=torch.bfloat16, causal=True, window=256, pad="attn_mask"
    ),
    "fp16-d64-bidirectional-window-1537": dict(
        B=1, H=4, Hkv=4, T=1537, S=1537, D=64, dtype=torch.float16, causal=False, window=100
    ),
    # transformers' layout ([B, T, H, D] transposed) at the pre-training study's shape: clipped's backward read dO
    # with O's strides here and the study's clipped run diverged
    "bf16-d64-causal-bthd-256": dict(B=4, H=8, Hkv=8, T=256, S=256, D=64, dtype=torch.bfloat16, layout="bthd"),
    # the shapes benchmarks/time_kernels.py --check uses (same compiled kernels as the timed ones)
    "bf16-d64-causal-2048": dict(B=1, H=8, Hkv=8, T=2048, S=2048, D=64, dtype=torch.bfloat16, causal=True),
    "bf16-d128-causal-2048": dict(B=1, H=8, Hkv=8, T=2048, S=2048, D=128, dtype=torch.bfloat16, causal=True),
    # Gu et al.'s 60M model: D = 96 runs zero-padded to 128
    "bf16-d96-causal-2048": dict(B=1, H=8, Hkv=8, T=2048, S=2048, D=96, dtype=torch.bfloat16, causal=True),
}
STATS_SHAPES = ["fp16-d128-causal-gqa-pad-1537", "bf16-d128-window-gqa-maskpad-kvcache", "bf16-d64-causal-bthd-256"]


def _bad(errs: dict[str, float]) -> dict[str, float]:
    return {k: e for k, e in errs.items() if math.isnan(e) or e > TOL}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("variant", kernel_cases.VARIANTS)
def test_kernel_matches_naive(variant, shape):
    seed = zlib.crc32(f"{variant}/{shape}".encode())
    case = kernel_cases.make_case(variant, device="cuda", seed=seed, **SHAPES[shape])
    errs = kernel_cases.check(variant, case)
    assert not _bad(errs), f"{variant}/{shape}: relative errors above {TOL}: {_bad(errs)} (all: {errs})"


@pytest.mark.parametrize("shape", STATS_SHAPES)
@pytest.mark.parametrize("variant", kernel_cases.VARIANTS)
def test_stats_match_naive(variant, shape):
    seed = zlib.crc32(f"stats/{variant}/{shape}".encode())
    case = kernel_cases.make_case(variant, device="cuda", seed=seed, **SHAPES[shape])
    errs = kernel_cases.check_stats(variant, case)
    assert not _bad(errs), f"{variant}/{shape}: relative errors above {TOL}: {_bad(errs)} (all: {errs})"


CANDIDATES = [(p, D, t) for p in flash.PASSES for D in (64, 128) for t in flash.candidates(D, p)]


@pytest.mark.parametrize(("pass_", "D", "tiles"), CANDIDATES, ids=[f"{p}-d{D}-{i}" for i, (p, D, _) in
                                                                   enumerate(CANDIDATES)])  # fmt: skip
def test_every_candidate_tile_matches_naive(pass_, D, tiles):
    """Each tile candidate the tune step may pin (``flash.candidates``) computes the same thing: sink (the softmax
    family's slot) with GQA and key padding; one query for the decode tiles; statistics for the column-sum tiles."""
    saved = dict(flash.TUNED)
    try:
        flash.TUNED.clear()
        flash.pin(D, pass_, tiles)
        T = 1 if pass_ == "decode" else 777
        case = kernel_cases.make_case("sink", B=2, H=4, Hkv=2, T=T, S=1000, D=D, dtype=torch.bfloat16, device="cuda",
                                      pad="key_padding", seed=zlib.crc32(f"{pass_}/{D}/{tiles}".encode()))  # fmt: skip
        check = kernel_cases.check_stats if pass_ == "colsum" else kernel_cases.check
        errs = check("sink", case)
    finally:
        flash.TUNED.clear()
        flash.TUNED.update(saved)
    assert not _bad(errs), f"{pass_} D={D} {tiles}: relative errors above {TOL}: {_bad(errs)} (all: {errs})"


def test_dispatcher_routes_cuda_to_the_kernels():
    case = kernel_cases.make_case("sink", device="cuda", dtype=torch.bfloat16, T=300, S=300, D=64)
    q, k, v, sink = case["q"], case["k"], case["v"], case["params"]["sink"]
    before = sinklab.ops.attention_calls()
    auto = sinklab.ops.attention(q, k, v, variant="sink", sink=sink)
    direct = flash.attention(q, k, v, variant="sink", sink=sink)
    assert torch.equal(auto, direct)
    assert sinklab.ops.attention_calls() - before == {"sink/triton": 1}
    _, st = sinklab.ops.attention(q, k, v, variant="sink", sink=sink, stats=StatsRequest())
    assert sinklab.ops.attention_calls() - before == {"sink/triton": 2}
    assert st.colsum.is_cuda and st.slot is not None


@pytest.mark.parametrize(
    ("dtype", "D", "mask"),
    [(torch.float32, 64, None), (torch.bfloat16, 160, None), (torch.bfloat16, 64, "float-bias")],
)
def test_unsupported_inputs_raise_and_the_dispatcher_falls_back(dtype, D, mask):
    # causal=False: the CPU paths build causal masks on the CPU when attn_mask is None (sinklab.ops.masks)
    case = kernel_cases.make_case("softpick", device="cuda", dtype=dtype, T=200, S=200, D=D, causal=False)
    if mask == "float-bias":
        case["kw"]["attn_mask"] = torch.randn(1, 1, 200, 200, device="cuda")
    with pytest.raises(NotImplementedError):
        kernel_cases.flash_attention("softpick", case["q"], case["k"], case["v"], **case["kw"])
    before = sinklab.ops.attention_calls()
    out = sinklab.ops.attention(case["q"], case["k"], case["v"], variant="softpick", **case["kw"])
    assert sinklab.ops.attention_calls() - before == {"softpick/chunked": 1}
    kw = {n: x.cpu() if isinstance(x, torch.Tensor) else x for n, x in case["kw"].items()}
    ref = kernel_cases.naive_attention("softpick", *(case[n].double().cpu() for n in "qkv"), **kw)
    assert kernel_cases.rel_err(out, ref) <= (1e-5 if dtype == torch.float32 else TOL)


def test_stats_with_gradients_raise():
    case = kernel_cases.make_case("softmax", device="cuda", dtype=torch.bfloat16, T=64, S=64, D=64)
    q = case["q"].requires_grad_()
    with pytest.raises(NotImplementedError):
        flash.attention(q, case["k"], case["v"], variant="softmax", stats=StatsRequest())


def test_colsum_mass_is_one_per_valid_row():
    """Each valid query row that sees a key gives exactly 1 to the column sums (softmax)."""
    case = kernel_cases.make_case("softmax", device="cuda", dtype=torch.bfloat16, T=777, S=777, D=64, pad="key_padding")
    _, st = flash.attention(case["q"], case["k"], case["v"], variant="softmax", key_padding=case["kw"]["key_padding"],
                            stats=StatsRequest(entropy=False))  # fmt: skip
    assert torch.allclose(st.colsum.double().sum(-1), st.rows.double()[:, None].expand(-1, 4), rtol=1e-3)
    assert st.entropy is None and torch.equal(st.count.sum(-1) > 0, st.rows > 0)


@pytest.mark.parametrize("variant", ["gated", "sigmoid"])
def test_compiled_training_runs_the_kernels_as_launched(variant):
    """train --compile with a kernel variant: torch.compile leaves sinklab's Triton kernels alone (inductor's
    recompilation of the softmax kernel failed on the H200 with torch 2.11: 'acc' dtype in tl.dot), and the steps
    train like eager's up to bf16 rounding."""
    from sinklab.remove.train import TrainConfig, train

    kw = dict(variant=variant, preset="tiny", steps=4, eval_every=2, quant_eval=False, device="cuda")
    eager = train(TrainConfig(**kw))
    compiled = train(TrainConfig(**kw, compile=True))
    assert compiled.attention_calls == eager.attention_calls  # the kernels ran at every layer of every step
    for a, b in zip(eager.history[1:], compiled.history[1:], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=2e-2)
