"""Row-wise attention weights (softpick, clipped, sigmoid) computed over query chunks.

Each chunk of Tc queries forms only its [Tc, K] logits against the keys it can see (causal and window ranges are
cut off, not masked), applies the variant's ``weights`` (the same function naive.py defines it with, which needs
whole rows: all of a row's visible keys are in the chunk) and multiplies by V. With gradients on, each chunk is
recomputed in backward (activation checkpointing), so memory stays O(Tc * S), never O(T * S).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from sinklab.ops._common import block_rows, compute_dtype, repeat_kv
from sinklab.ops.masks import MaskSpec

BLOCK_ELEMS = 1 << 21  # logits per query chunk (all heads)


def rowwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: MaskSpec,
    scale: float,
    weights: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
) -> torch.Tensor:
    """q [B, H, T, D], k/v [B, Hkv, S, D] -> [B, H, T, D] with attention weights ``weights(logits, keep)``."""
    B, H, T, D = q.shape
    k, v = repeat_kv(k, H // k.shape[1]), repeat_kv(v, H // v.shape[1])  # [B, H, S, D]

    compute = compute_dtype(q.dtype)

    def block(qc, kc, vc, keep, bias):
        s = scale * (qc.to(compute) @ kc.to(compute).transpose(-1, -2))  # [B, H, Tc, K]
        if bias is not None:
            s = s + bias.to(compute)
        return (weights(s, keep) @ vc.to(compute)).to(q.dtype)

    chunks = []
    step = block_rows(spec, BLOCK_ELEMS, B * H)
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        lo, hi = spec.key_range(t0, t1)
        if hi == lo:
            chunks.append(q.new_zeros(B, H, t1 - t0, D))
            continue
        keep, bias = spec.block(t0, t1, lo, hi)
        args = (q[:, :, t0:t1], k[:, :, lo:hi], v[:, :, lo:hi], keep, bias)
        if torch.is_grad_enabled() and step < T:
            chunks.append(checkpoint(block, *args, use_reentrant=False))
        else:
            chunks.append(block(*args))
    return torch.cat(chunks, dim=2)
