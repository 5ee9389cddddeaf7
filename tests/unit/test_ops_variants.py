"""sinklab.ops.attention: every fast path against its naive definition, forward and backward."""

from __future__ import annotations

import math
import zlib
from collections import Counter

import pytest
import torch

import sinklab.ops._rows as rows_mod
import sinklab.ops._sdpa as sdpa_mod
from sinklab.errors import SinklabInputError
from sinklab.ops import VARIANTS, attention, attention_calls
from sinklab.ops.masks import causal_key_padding

VARS = list(VARIANTS)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny problems: one thread avoids OpenMP barriers that stall when other processes share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    err = ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
    assert not math.isnan(err)
    return err


def make_params(variant: str, H: int, D: int, dtype, gen: torch.Generator) -> dict:
    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()

    if variant == "sink":
        return {"sink": r(H)}
    if variant == "kv_bias":
        return {"k_bias": r(H, D), "v_bias": r(H, D), "sink": r(H)}
    if variant == "sigmoid":
        return {"bias": r(H)}
    if variant == "clipped":
        return {"gamma": -0.05, "zeta": 1.02}
    return {}


def make_mask(kind: str, B: int, T: int, S: int, gen: torch.Generator, dtype):
    if kind == "none":
        return None
    if kind == "bool":  # per-batch padding of keys plus random holes, one query row with nothing to see
        m = torch.rand(B, 1, T, S, generator=gen) > 0.25
        m[0, :, :, :2] = False
        m[-1, 0, T // 2] = False
        return m
    if kind == "float":  # additive, with -inf holes and an HF-style finfo.min row
        m = torch.randn(B, 1, T, S, generator=gen, dtype=torch.float64).to(dtype)
        m[0, 0, :, 1] = float("-inf")
        m[-1, 0, T - 1] = torch.finfo(dtype).min
        return m
    if kind == "keys":  # [B, S] -> [B, 1, 1, S] padding mask broadcast over queries
        m = torch.ones(B, 1, 1, S, dtype=torch.bool)
        m[0, ..., : S // 3] = False
        return m
    raise AssertionError(kind)


# (B, H, Hkv, T, S, D, causal, window, mask)
CASES = [
    (2, 4, 2, 37, 37, 16, True, None, "none"),  # GQA causal, T == S: one fused call
    (1, 4, 4, 37, 37, 8, False, None, "none"),  # bidirectional
    (2, 4, 1, 29, 45, 8, True, None, "bool"),  # S > T (KV cache), multi-query, padding rows
    (2, 4, 2, 33, 33, 16, True, 7, "float"),  # sliding window + additive float mask
    (1, 2, 2, 19, 19, 8, False, 5, "keys"),  # bidirectional window, key padding
    (2, 6, 3, 1, 23, 8, True, None, "none"),  # one query (decoding)
    (1, 2, 1, 40, 31, 4, True, 9, "bool"),  # S < T: first queries see nothing
]


@pytest.fixture
def small_blocks(monkeypatch):
    """Force several query chunks even at test sizes."""
    monkeypatch.setattr(sdpa_mod, "BLOCK_ELEMS", 300)
    monkeypatch.setattr(rows_mod, "BLOCK_ELEMS", 300)


def run(variant, q, k, v, params, impl, **kw):
    out = attention(q, k, v, variant=variant, impl=impl, **kw, **params)
    w = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view(out.shape).to(out.dtype)
    leaves = [q, k, v] + [p for p in params.values() if isinstance(p, torch.Tensor)]
    grads = torch.autograd.grad((out * w).sum(), leaves)
    return out, grads


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}H{}kv{}T{}S{}D{}-{}-w{}-{}".format(*c))
@pytest.mark.parametrize("variant", VARS)
def test_chunked_matches_naive_fp32(variant, case, small_blocks):
    B, H, Hkv, T, S, D, causal, window, kind = case
    gen = torch.Generator().manual_seed(zlib.crc32(repr((variant, case)).encode()))
    q = torch.randn(B, H, T, D, generator=gen).requires_grad_()
    k = torch.randn(B, Hkv, S, D, generator=gen).requires_grad_()
    v = torch.randn(B, Hkv, S, D, generator=gen).requires_grad_()
    params = make_params(variant, H, D, torch.float32, gen)
    kw = dict(causal=causal, window=window, attn_mask=make_mask(kind, B, T, S, gen, torch.float32))
    out_n, g_n = run(variant, q, k, v, params, "naive", **kw)
    out_c, g_c = run(variant, q, k, v, params, "chunked", **kw)
    assert rel(out_c, out_n) <= 1e-5
    for a, b in zip(g_c, g_n, strict=True):
        assert torch.isfinite(a).all()
        assert rel(a, b) <= 1e-5


@pytest.mark.parametrize("variant", VARS)
def test_chunked_bf16_matches_fp32_naive(variant, small_blocks):
    B, H, Hkv, T, S, D = 2, 4, 2, 41, 41, 16
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(B, h, T, D, generator=gen).bfloat16().requires_grad_() for h in (H, Hkv, Hkv))
    params = make_params(variant, H, D, torch.bfloat16, gen)
    mask = make_mask("bool", B, T, S, gen, torch.float32)
    out_c, g_c = run(variant, q, k, v, params, "chunked", causal=True, window=11, attn_mask=mask)
    up = {n: (p.detach().float().requires_grad_() if isinstance(p, torch.Tensor) else p) for n, p in params.items()}
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    out_n, g_n = run(variant, q32, k32, v32, up, "naive", causal=True, window=11, attn_mask=mask)
    assert out_c.dtype == torch.bfloat16
    assert rel(out_c, out_n) <= 1e-2
    for a, b in zip(g_c, g_n, strict=True):
        assert rel(a, b) <= 1e-2


def test_naive_sink_equals_gpt_oss_reference_fp64():
    """gpt-oss: append the sink logit as a column, softmax over S + 1, drop the column."""
    gen = torch.Generator().manual_seed(3)
    B, H, Hkv, T, D = 2, 4, 2, 13, 8
    q = torch.randn(B, H, T, D, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(B, Hkv, T, D, generator=gen, dtype=torch.float64) for _ in range(2))
    sink = torch.randn(H, generator=gen, dtype=torch.float64) * 3
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = q @ kk.transpose(-1, -2) / math.sqrt(D)
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    s = torch.cat([s, sink.view(1, H, 1, 1).expand(B, H, T, 1)], dim=-1)
    ref = torch.softmax(s, dim=-1)[..., :-1] @ vv
    out = attention(q, k, v, variant="sink", impl="naive", sink=sink)
    assert rel(out, ref) <= 1e-10
    # and the closed form out_softmax * sigmoid(lse - sink) of DESIGN.md
    lse = s[..., :-1].logsumexp(-1, keepdim=True)
    soft = attention(q, k, v, variant="softmax", impl="naive")
    assert rel(out, soft * torch.sigmoid(lse - sink.view(1, H, 1, 1))) <= 1e-10


@pytest.mark.parametrize("impl", ["naive", "chunked"])
@pytest.mark.parametrize("variant", VARS)
def test_fully_masked_rows_give_zeros_and_finite_grads(variant, impl):
    gen = torch.Generator().manual_seed(5)
    B, H, T, D = 1, 2, 6, 4
    q, k, v = (torch.randn(B, H, T, D, generator=gen).requires_grad_() for _ in range(3))
    params = make_params(variant, H, D, torch.float32, gen)
    mask = torch.ones(B, 1, T, T, dtype=torch.bool)
    mask[..., 2, :] = False  # query 2 sees nothing
    for m in (mask, torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))):
        out, grads = run(variant, q, k, v, params, impl, causal=False, attn_mask=m)
        assert torch.equal(out[..., 2, :], torch.zeros_like(out[..., 2, :]))
        assert all(torch.isfinite(g).all() for g in grads)
        assert torch.isfinite(out).all()


def test_window_follows_hf_convention():
    """Causal window W: query i sees keys i-W+1..i (softmax over exactly those)."""
    T, W, D = 9, 3, 4
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, T, D, generator=gen, dtype=torch.float64) for _ in range(3))
    i = torch.arange(T)
    allowed = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - W)
    ref = attention(q, k, v, causal=False, attn_mask=allowed, impl="naive")
    for impl in ("naive", "chunked"):
        assert rel(attention(q, k, v, causal=True, window=W, impl=impl), ref) <= 1e-12


@pytest.mark.parametrize(("T", "S"), [(6, 6), (3, 7), (1, 5)])  # prefill, chunk after a cache, one decode step
def test_causal_key_padding_splits_exactly_causal_and_padding_masks(T, S):
    gen = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(2, 2, n, 4, generator=gen, dtype=torch.float64) for n in (T, S, S))
    padding = torch.ones(2, 1, 1, S, dtype=torch.bool)
    padding[1, ..., :2] = False
    causal = torch.arange(S)[None, :] <= torch.arange(T)[:, None] + (S - T)
    mask = causal & padding  # [2, 1, T, S]: what transformers builds
    assert torch.equal(causal_key_padding(mask, T, S), padding)
    ref = attention(q, k, v, variant="softpick", causal=False, attn_mask=mask, impl="naive")
    got = attention(q, k, v, variant="softpick", causal=True, attn_mask=padding, impl="naive")
    assert torch.equal(got, ref)
    if T > 1:
        windowed = mask & (torch.arange(S)[None, :] > torch.arange(T)[:, None] + (S - T) - 2)
        assert causal_key_padding(windowed, T, S) is None
    assert causal_key_padding(mask.float(), T, S) is None
    assert causal_key_padding(mask.expand(2, 2, T, S), T, S) is None  # per-head masks are not split


def test_auto_on_cpu_is_chunked_and_triton_refused():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=gen) for _ in range(3))
    before = attention_calls()
    assert torch.equal(attention(q, k, v, variant="softpick"), attention(q, k, v, variant="softpick", impl="chunked"))
    attention(q, k, v, impl="naive")
    assert attention_calls() - before == Counter({"softpick/chunked": 2, "softmax/naive": 1})
    with pytest.raises(SinklabInputError, match="impl='triton' needs CUDA"):
        attention(q, k, v, impl="triton")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variant": "softmax2"}, "unknown attention variant 'softmax2'; accepted: softmax, softmax1, sink"),
        ({"variant": "sink"}, "needs parameter 'sink'"),
        ({"variant": "sink", "sink": torch.zeros(3)}, r"'sink' must be a tensor of shape \('H',\) = \[2\]"),
        ({"variant": "kv_bias", "k_bias": torch.zeros(2, 4), "v_bias": torch.zeros(4)}, "'v_bias' must be a tensor"),
        ({"variant": "softpick", "gamma": 1.0}, "unknown parameter 'gamma'; accepted: eps"),
        ({"variant": "clipped", "gamma": 0.1}, "needs gamma < 0 and zeta >= 1"),
        ({"impl": "cuda"}, "unknown impl 'cuda'; accepted: auto, naive, chunked, fused, triton"),
        ({"attn_mask": torch.ones(3, 5, dtype=torch.bool)}, r"does not broadcast to \[B, H, T, S\]"),
        ({"attn_mask": torch.ones(5, 5, dtype=torch.int64)}, "must be bool .* or float"),
        ({"window": 0}, "window must be a positive int"),
    ],
)
def test_bad_input_one_clear_line(kwargs, match):
    q, k, v = (torch.zeros(1, 2, 5, 4) for _ in range(3))
    with pytest.raises(SinklabInputError, match=match) as info:
        attention(q, k, v, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_shapes_one_clear_line():
    with pytest.raises(SinklabInputError, match="H=4 a multiple of Hkv"):
        attention(torch.zeros(1, 4, 5, 8), torch.zeros(1, 3, 5, 8), torch.zeros(1, 3, 5, 8))
    with pytest.raises(SinklabInputError, match="share one floating dtype"):
        attention(torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8).double(), torch.zeros(1, 2, 5, 8))
