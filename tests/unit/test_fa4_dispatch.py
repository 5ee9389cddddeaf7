"""The FlashAttention-4 path on a machine without it: CPU calls never import flash_attn or triton, ``impl="fa4"``
is refused with its reason, and the wrapper's conventions (layout, causal alignment with a KV cache, window, sink
logit, GQA) against a stand-in that computes what FA4's ``flash_attn_func`` documents, in its own [B, T, H, D]
terms. The real kernel is checked against the naive definitions in tests/gpu/test_fa4.py."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import sinklab.ops
from sinklab.errors import SinklabInputError
from sinklab.ops import _fa4


def test_cpu_attention_imports_neither_flash_attn_nor_triton():
    code = (
        "import sys, torch, sinklab.ops\n"
        "q = torch.randn(1, 2, 8, 16)\n"
        "for variant, params in (('softmax', {}), ('sink', {'sink': torch.zeros(2)}), ('softpick', {})):\n"
        "    sinklab.ops.attention(q, q, q, variant=variant, stats=True, **params)\n"
        "print(sorted(m for m in ('flash_attn', 'triton', 'cutlass') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_impl_fa4_is_refused_with_its_reason_off_gpu():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(SinklabInputError, match="impl='fa4' cannot run this call: not a CUDA tensor"):
        sinklab.ops.attention(q, q, q, impl="fa4")
    with pytest.raises(SinklabInputError, match="variant 'softpick'"):
        sinklab.ops.attention(q, q, q, variant="softpick", impl="fa4")
    with pytest.raises(SinklabInputError, match="softcap"):
        sinklab.ops.attention(q, q, q, impl="fa4", softcap=30.0)


def _documented_fa4(q, k, v, *, softmax_scale, causal, window_size, learnable_sink, return_lse):
    """What flash_attn.cute.flash_attn_func computes ([B, T, H, D] in and out): causal and window masks aligned to
    the bottom-right (query i sits at key position i + S - T), key j visible iff i' - left <= j <= i' + right, the
    learnable sink an extra logit of the softmax with no value; lse [B, H, T] includes it."""
    B, T, H, _ = q.shape
    S, G = k.shape[1], H // k.shape[2]
    kk, vv = (x.repeat_interleave(G, dim=2) for x in (k, v))
    s = torch.einsum("bthd,bshd->bhts", q.double(), kk.double()) * softmax_scale
    pos = torch.arange(T)[:, None] + S - T
    j = torch.arange(S)[None, :]
    left, right = window_size
    right = 0 if causal else right
    visible = torch.ones(T, S, dtype=torch.bool)
    if right is not None:
        visible &= j <= pos + right
    if left is not None:
        visible &= j >= pos - left
    s = s.masked_fill(~visible, -math.inf)
    if learnable_sink is not None:
        s = torch.cat([s, learnable_sink.double()[None, :, None, None].expand(B, H, T, 1)], dim=-1)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])[..., :S]
    out = torch.einsum("bhts,bshd->bthd", p, vv.double()).to(q.dtype)
    return out, (lse.float() if return_lse else None)


@pytest.mark.parametrize("variant", _fa4.VARIANTS)
@pytest.mark.parametrize("causal,window,T,S", [(True, None, 9, 9), (True, 4, 7, 12), (False, 3, 10, 10)])
def test_wrapper_conventions_match_the_naive_definition(monkeypatch, variant, causal, window, T, S):
    pytest.importorskip("triton")  # the wrapper reads the kernel modes from sinklab.ops._triton.flash
    monkeypatch.setattr(_fa4, "_interface", lambda: _documented_fa4)
    monkeypatch.setattr(_fa4, "unsupported", lambda *args: None)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, T, 16, generator=g)
    k, v = torch.randn(2, 2, S, 16, generator=g), torch.randn(2, 2, S, 16, generator=g)
    params = {"sink": torch.randn(4, generator=g)} if variant == "sink" else {}
    got = _fa4.attention(q, k, v, variant=variant, causal=causal, scale=0.25, window=window, stats=None,
                         masked=False, sink=params.get("sink"))  # fmt: skip
    ref = sinklab.ops.attention(q, k, v, variant=variant, causal=causal, scale=0.25, window=window, impl="naive",
                                **params)  # fmt: skip
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
