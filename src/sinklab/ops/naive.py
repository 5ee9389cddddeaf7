"""The definition of every attention variant, from the full [B, H, T, S] score matrix (materializes T x S).

    s = softcap(scale * q k^T) + float mask        (softcap: Gemma 2's s -> c tanh(s / c), optional)
    s = edit_logits(s)                              (optional, e.g. attention redistribution)
    A, slot = the variant's weights of s over the visible keys (``sinklab.ops.variants``):
              softmax family: softmax; slot family: softmax with one extra slot logit; rowwise: its rule
    A = edit_weights(A)                             (optional, e.g. ZeroTuning)
    out = A V + slot * slot value

A query row with no visible key gets zeros (slot included). Weights are computed in float32 at least (float64 for
float64 inputs). Statistics (``sinklab.ops.stats``) are computed from A itself; every fast path must match them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sinklab.ops._common import compute_dtype, full_logits, repeat_kv
from sinklab.ops.stats import AttentionStats, StatsRequest, query_validity
from sinklab.ops.variants import Variant

Edit = Callable[..., torch.Tensor]  # edit(block [B, H, R, K], rows=(r0, r1), keys=(lo, hi)) -> block


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    variant: Variant,
    params: dict,
    *,
    causal: bool,
    attn_mask: torch.Tensor | None,
    key_padding: torch.Tensor | None,
    scale: float,
    window: int | None,
    softcap: float | None = None,
    edit_logits: Edit | None = None,
    edit_weights: Edit | None = None,
    stats: StatsRequest | None = None,
) -> torch.Tensor | tuple[torch.Tensor, AttentionStats]:
    """q [B, H, T, D], k/v [B, Hkv, S, D], ``params`` resolved -> out [B, H, T, D] (and stats when requested)."""
    H, T, S = q.shape[1], q.shape[2], k.shape[2]
    dtype = compute_dtype(q.dtype)
    q32, k32, v32 = (x.to(dtype) for x in (q, k, v))
    s, keep = full_logits(
        q32, k32, causal=causal, attn_mask=attn_mask, scale=scale, window=window, key_padding=key_padding,
        softcap=softcap,
    )  # fmt: skip
    if edit_logits is not None:
        s = edit_logits(s, rows=(0, T), keys=(0, S))
    w = variant.rule(params, scale)(s, keep, q32)
    p = w.p  # [B, H, T, S]
    if edit_weights is not None:
        p = edit_weights(p, rows=(0, T), keys=(0, S))
    out = p @ repeat_kv(v32, H // k.shape[1])
    if w.out is not None:
        out = out + w.out
    out = out.to(q.dtype)
    if stats is None:
        return out
    return out, _stats(p, w.slot, w.lse, keep, key_padding, stats)


def _stats(p, slot, lse, keep, key_padding, request: StatsRequest) -> AttentionStats:
    """The statistics of weights p [B, H, T, S] (formulas: ``sinklab.ops.stats``) over the valid queries; ``keep``
    the visibility mask (None = all), the same for every head."""
    B, _, T, S = p.shape
    valid = query_validity(T, S, key_padding, B, p.device)  # [B, T]
    p_valid = p * valid[:, None, :, None]
    count = None
    if request.colsum:
        allowed = torch.ones(1, 1, T, S, dtype=torch.bool, device=p.device) if keep is None else keep[:, :1]
        count = (allowed.expand(B, 1, T, S) & valid[:, None, :, None]).sum(dim=(1, 2))
    return AttentionStats(
        colsum=p_valid.sum(dim=2) if request.colsum else None,
        count=count,
        entropy=-torch.special.xlogy(p_valid, p_valid).sum(dim=(-1, -2)) if request.entropy else None,
        rows=valid.sum(-1),
        pattern=p[..., : request.pattern, : request.pattern].clone() if request.pattern else None,
        slot=None if slot is None else (slot[..., 0] * valid[:, None]).sum(-1),
        lse=None if lse is None or not request.lse else lse[..., 0],
        columns=p[..., list(request.columns)] if request.columns else None,
    )
