"""Chunked attention statistics vs the naive definition, and the definition vs Gu et al.'s formula."""

import zlib

import pytest
import torch

import sinklab.ops.colsum.chunked as chunked_mod
from sinklab.ops import StatsRequest, attention
from sinklab.ops._common import repeat_kv
from sinklab.ops.colsum import chunked, naive
from sinklab.testing import assert_close


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Several 16-row query chunks even at test sizes."""
    monkeypatch.setattr(chunked_mod, "DEFAULT_BLOCK_BYTES", 1)


def stats(q, k, v, impl, keep_pattern=0, **kw):
    return attention(q, k, v, impl=impl, stats=StatsRequest(pattern=keep_pattern), **kw)


CASES = [
    # B, H, Hkv, T, S, causal, window, padding
    (2, 4, 2, 37, 37, True, None, False),
    (2, 4, 1, 37, 50, True, 8, True),
    (1, 6, 3, 33, 33, False, None, True),
    (2, 4, 4, 40, 40, False, 5, False),
    (2, 2, 1, 65, 65, True, None, True),
    (1, 3, 3, 1, 29, True, None, False),  # one decode step against a cache
]


def _inputs(B, H, Hkv, T, S, pad, dtype, gen):
    q = torch.randn(B, H, T, 16, generator=gen).to(dtype)
    k = (2 * torch.randn(B, Hkv, S, 16, generator=gen)).to(dtype)
    v = torch.randn(B, Hkv, S, 16, generator=gen).to(dtype)
    padding = None
    if pad:
        padding = torch.ones(B, S, dtype=torch.bool)
        padding[0, : S // 7] = False  # left padding
        padding[-1, -3:] = False  # right padding
    return q, k, v, padding


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_chunked_matches_naive(case, dtype):
    B, H, Hkv, T, S, causal, window, pad = case
    gen = torch.Generator().manual_seed(zlib.crc32(repr((case, str(dtype))).encode()))
    q, k, v, padding = _inputs(B, H, Hkv, T, S, pad, dtype, gen)
    kw = dict(scale=0.25, causal=causal, window=window, key_padding=padding, keep_pattern=20)
    out_ref, ref = stats(q, k, v, "naive", **kw)
    out, got = stats(q, k, v, "chunked", **kw)
    stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    valid_rows = naive.query_validity(T, S, padding, B, q.device)[:, None, :, None]
    assert_close(out * valid_rows, out_ref * valid_rows, dtype, "out")
    assert_close(got.colsum, ref.colsum, stat_dtype if dtype != torch.bfloat16 else torch.bfloat16, "colsum")
    assert_close(got.entropy, ref.entropy, stat_dtype if dtype != torch.bfloat16 else torch.bfloat16, "entropy")
    assert_close(got.pattern, ref.pattern, stat_dtype if dtype != torch.bfloat16 else torch.bfloat16, "pattern")
    assert torch.equal(got.count, ref.count)
    assert torch.equal(got.rows, ref.rows)
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("case", CASES)
def test_colsum_from_lse(case):
    """colsum from a stored logsumexp equals the column sums of the softmax matrix (naive and chunked)."""
    B, H, Hkv, T, S, causal, window, pad = case
    gen = torch.Generator().manual_seed(7)
    q, k, v, padding = _inputs(B, H, Hkv, T, S, pad, torch.float64, gen)
    allowed = naive.allowed_mask(T, S, causal=causal, window=window, key_padding=padding)
    scores = (q @ repeat_kv(k, H // k.shape[1]).transpose(-1, -2) * 0.25).masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    kw = dict(scale=0.25, causal=causal, window=window, key_padding=padding)
    _, ref = stats(q, k, v, "naive", **kw)
    expected = naive.colsum(q, k, lse, **kw)
    assert_close(expected, ref.colsum, torch.float64, "naive colsum")
    assert_close(chunked.colsum(q, k, lse, rows_per_chunk=5, **kw), expected, torch.float64, "chunked colsum")


def test_alpha_is_gu_et_al():
    """Full causal attention: colsum_k / count_k == 1/(T-k+1) sum_{t>=k} A_{t,k} (Gu et al. 2024, 1-indexed)."""
    gen = torch.Generator().manual_seed(3)
    T = 64
    q, k, v, _ = _inputs(1, 2, 2, T, T, False, torch.float64, gen)
    _, st = stats(q, k, v, "chunked", scale=0.25, causal=True)
    A = torch.softmax((q @ k.transpose(-1, -2) * 0.25).masked_fill(~torch.ones(T, T).tril().bool(), float("-inf")), -1)
    for key in (0, 5, 63):
        gu = A[0, :, key:, key].sum(-1) / (T - key)
        assert_close(st.colsum[0, :, key] / st.count[0, key], gu, torch.float64)
    assert st.count[0].tolist() == list(range(T, 0, -1))


def test_fully_masked_rows_give_zeros():
    q = torch.randn(1, 2, 6, 8)
    k = torch.randn(1, 2, 6, 8)
    padding = torch.tensor([[False, False, True, True, True, True]])  # left padding: queries 0, 1 see nothing
    out, st = stats(q, k, k, "chunked", scale=1.0, causal=True, key_padding=padding)
    assert torch.equal(out[:, :, :2], torch.zeros_like(out[:, :, :2]))
    assert not torch.isnan(st.colsum).any() and st.rows.tolist() == [4]
    assert st.colsum[0, :, :2].abs().max() == 0
