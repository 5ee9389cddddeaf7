"""Sigmoid attention (Ramapuram et al. 2024, FlashSigmoid) on CUDA: the fused Triton kernels of ``sinklab.ops._triton``.

No normalizer: one pass forward, and no delta in the backward.
Inputs the kernels do not take (see ``sinklab.ops._triton.flash``) go to ``chunked.attention``.
"""

from __future__ import annotations

import torch

from sinklab.ops._triton.flash import attention as flash_attention


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
    """q [B, H, T, D], k/v [B, Hkv, S, D] -> [B, H, T, D]; same contract as ``naive.attention``."""
    return flash_attention(
        q, k, v, variant="sigmoid", causal=causal, attn_mask=attn_mask, scale=scale, window=window, bias=bias
    )
