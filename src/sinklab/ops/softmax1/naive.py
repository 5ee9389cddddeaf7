"""Softmax-off-by-one (Miller 2023, "Attention is off by one"; Xiao et al. 2023 StreamingLLM Table 3):

    a_ij = exp(s_ij) / (1 + sum_j exp(s_ij))

a sink logit fixed at 0 (``sink`` variant with s_h = 0). Rows sum to < 1; the rest goes nowhere.
"""

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
    p = masked_softmax(s, keep, extra=torch.zeros_like(s[..., :1]))  # the "+1" is exp(0)
    return p @ repeat_kv(v, q.shape[1] // k.shape[1])
