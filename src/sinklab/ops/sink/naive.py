"""Learnable sink logit per head (gpt-oss, OpenAI 2025; the learnable-sink idea of Xiao et al. 2023):

    a_ij = exp(s_ij) / (exp(sink_h) + sum_j exp(s_ij))

gpt-oss appends the logit sink_h as an extra column of the score matrix, takes the softmax and drops the column;
this is the same thing in closed form. Equivalently out = out_softmax * sigmoid(lse - sink_h).
"""

from __future__ import annotations

import torch

from sinklab.ops._common import full_logits, head_param, masked_softmax, repeat_kv


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    window: int | None = None,
    sink: torch.Tensor,
) -> torch.Tensor:
    """q [B, H, T, D], k/v [B, Hkv, S, D], sink [H] logits -> [B, H, T, D]; rows with no visible key give 0."""
    s, keep = full_logits(q, k, causal=causal, attn_mask=attn_mask, scale=scale, window=window)  # [B, H, T, S]
    p = masked_softmax(s, keep, extra=head_param(sink, q.shape[1], s))
    return p @ repeat_kv(v, q.shape[1] // k.shape[1])
