"""Explicit key/value bias per head (Sun et al. 2024) on CUDA: the fused Triton kernels of ``sinklab.ops._triton``.

The running max, sum and output start at (q.k'_h + s_h, 1, v'_h); the bias slot's gradients are
row sums done beside the kernels.
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
    k_bias: torch.Tensor,
    v_bias: torch.Tensor,
    sink: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, H, T, D], k/v [B, Hkv, S, D] -> [B, H, T, D]; same contract as ``naive.attention``."""
    return flash_attention(
        q,
        k,
        v,
        variant="kv_bias",
        causal=causal,
        attn_mask=attn_mask,
        scale=scale,
        window=window,
        k_bias=k_bias,
        v_bias=v_bias,
        sink=sink,
    )
