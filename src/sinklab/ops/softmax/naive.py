"""Softmax attention (Vaswani et al. 2017), the baseline: a_ij = exp(s_ij) / sum_j exp(s_ij), s = scale * q k^T."""

from __future__ import annotations

import torch

from sinklab.ops._common import full_logits, masked_softmax, repeat_kv


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
    """q [B, H, T, D], k/v [B, Hkv, S, D] -> [B, H, T, D]; rows with no visible key give 0."""
    s, keep = full_logits(q, k, causal=causal, attn_mask=attn_mask, scale=scale, window=window)  # [B, H, T, S]
    p = masked_softmax(s, keep)
    return p @ repeat_kv(v, q.shape[1] // k.shape[1])
