"""Softmax attention, CPU fast path: the fused SDPA kernel (chunked over queries only when a mask is needed)."""

from __future__ import annotations

import torch

from sinklab.ops._common import check_qkv, default_scale
from sinklab.ops._sdpa import softmax_with_slot
from sinklab.ops.masks import mask_spec


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Same contract as ``sinklab.ops.softmax.naive.attention``."""
    check_qkv(q, k, v)
    spec = mask_spec(q, k, causal=causal, attn_mask=attn_mask, window=window)
    return softmax_with_slot(q, k, v, spec, default_scale(q, scale))
