"""Clipped softmax (Bondarenko et al. 2023) on CUDA: the fused Triton kernels of ``sinklab.ops._triton``.

Two passes: the row normalizer, then clip((zeta - gamma) p + gamma, 0, 1) V; its backward needs one more
pass over the keys for delta' = (zeta - gamma) sum_j p_ij [0 < y_ij < 1] dP_ij.
Inputs the kernels do not take (see ``sinklab.ops._triton.flash``) go to ``chunked.attention``.
"""

from __future__ import annotations

import torch

from sinklab.ops._triton.flash import attention as flash_attention
from sinklab.ops.clipped.naive import GAMMA, ZETA


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
    """q [B, H, T, D], k/v [B, Hkv, S, D] -> [B, H, T, D]; same contract as ``naive.attention``."""
    return flash_attention(
        q,
        k,
        v,
        variant="clipped",
        causal=causal,
        attn_mask=attn_mask,
        scale=scale,
        window=window,
        gamma=gamma,
        zeta=zeta,
    )
