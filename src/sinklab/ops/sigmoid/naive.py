"""Sigmoid attention (Ramapuram et al. 2024, "Theory, Analysis, and Best Practices for Sigmoid Self-Attention"):

    a_ij = sigmoid(s_ij + b),   b = -log S by default (S = the number of keys, their Sec. 3)

no normalization across keys, so there is nothing to dump attention into. ``bias`` is a float, or a [H] tensor
(one per head, learnable in ``sinklab.remove.patch``). Masked entries give 0.
"""

from __future__ import annotations

import math

import torch

from sinklab.ops._common import full_logits, head_param, repeat_kv


def default_bias(S: int) -> float:
    return -math.log(max(S, 1))


def weights(s: torch.Tensor, keep: torch.Tensor | None, *, bias: torch.Tensor | float) -> torch.Tensor:
    """sigmoid(s + bias) on logits s [B, H, T, S] where keep is True (None = all), 0 elsewhere."""
    b = head_param(bias, s.shape[1], s) if isinstance(bias, torch.Tensor) else bias
    a = torch.sigmoid(s + b)
    return a if keep is None else a.masked_fill(~keep, 0.0)


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
    """q [B, H, T, D], k/v [B, Hkv, S, D], bias float or [H] (default -log S) -> [B, H, T, D]."""
    s, keep = full_logits(q, k, causal=causal, attn_mask=attn_mask, scale=scale, window=window)  # [B, H, T, S]
    bias = default_bias(k.shape[-2]) if bias is None else bias
    return weights(s, keep, bias=bias) @ repeat_kv(v, q.shape[1] // k.shape[1])
