"""Sigmoid attention, CPU fast path: query chunks against their visible key range (see ``ops/_rows.py``)."""

from __future__ import annotations

import torch

from sinklab.ops._common import check_qkv, default_scale
from sinklab.ops._rows import rowwise_attention
from sinklab.ops.masks import mask_spec
from sinklab.ops.sigmoid.naive import default_bias, weights


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    window: int | None = None,
    bias: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Same contract as ``sinklab.ops.sigmoid.naive.attention``."""
    check_qkv(q, k, v)
    spec = mask_spec(q, k, causal=causal, attn_mask=attn_mask, window=window)
    b = default_bias(k.shape[-2]) if bias is None else bias
    return rowwise_attention(q, k, v, spec, default_scale(q, scale), lambda s, keep: weights(s, keep, bias=b))
