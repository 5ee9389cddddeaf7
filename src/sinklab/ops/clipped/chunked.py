"""Clipped softmax, CPU fast path: query chunks holding whole rows, so each row's softmax normalizer is exact
(see ``ops/_rows.py``)."""

from __future__ import annotations

import torch

from sinklab.ops._common import check_qkv, default_scale
from sinklab.ops._rows import rowwise_attention
from sinklab.ops.clipped.naive import GAMMA, ZETA, weights
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
    gamma: float = GAMMA,
    zeta: float = ZETA,
) -> torch.Tensor:
    """Same contract as ``sinklab.ops.clipped.naive.attention``."""
    check_qkv(q, k, v)
    spec = mask_spec(q, k, causal=causal, attn_mask=attn_mask, window=window)
    fn = lambda s, keep: weights(s, keep, gamma=gamma, zeta=zeta)  # noqa: E731
    return rowwise_attention(q, k, v, spec, default_scale(q, scale), fn)
