"""Softpick (Zuhri et al. 2025) on CUDA: the fused Triton kernels of ``sinklab.ops._triton``.

Tiled form relu(e^{s-m} - e^{-m}) / (sum |e^{s-m} - e^{-m}| + eps e^{-m}), m clamped >= 0.
Inputs the kernels do not take (see ``sinklab.ops._triton.flash``) go to ``chunked.attention``.
"""

from __future__ import annotations

import torch

from sinklab.ops._triton.flash import attention as flash_attention
from sinklab.ops.softpick.naive import EPS


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    window: int | None = None,
    eps: float = EPS,
) -> torch.Tensor:
    """q [B, H, T, D], k/v [B, Hkv, S, D] -> [B, H, T, D]; same contract as ``naive.attention``."""
    return flash_attention(
        q, k, v, variant="softpick", causal=causal, attn_mask=attn_mask, scale=scale, window=window, eps=eps
    )
