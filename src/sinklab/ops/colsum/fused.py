"""Softmax attention and its statistics from PyTorch's fused CPU kernel: two kernel calls, never a T x S matrix.

``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` returns the output and each row's logsumexp
lse_i = log sum_j exp(s_ij), s_ij = scale q_i . k_j. Column sums need sum over rows, which the same kernel gives on
the transposed problem: with queries [k_j, 1] and keys [q_i, -lse_i / scale],

    scale [k_j, 1] . [q_i, -lse_i / scale] = s_ij - lse_i = log A_ij,   so   colsum_j = sum_i A_ij = exp(LSE'_j),

the causal rule i >= j becomes the kernel's own once both sequences are reversed, and the values [q_i, 0] give
sum_i A_ij q_i = out'_j colsum_j, from which the entropy follows without a T x S matrix:

    sum_i H_i = sum_i (lse_i - sum_j A_ij s_ij) = sum_i lse_i - scale sum_j k_j . (sum_i A_ij q_i).

(Thanks to explain's probe passes, where the transposed trick first ran.) Twin: ``sinklab.ops.colsum.chunked``
(and ``naive``); ``applies`` says when this path computes exactly what they compute: float32 on the CPU, softmax,
causal over as many queries as keys or no mask at all, no padding, window, softcap or edit. Precision: column
sums and lse to float32 rounding; the entropy to about 1e-7 |lse| nats per row (the float32 logsumexp bounds it: a
head whose rows have almost zero entropy, all mass on a sink, gets a larger relative error than the chunked pass).
"""

from __future__ import annotations

import torch

from sinklab.ops.stats import AttentionStats, StatsRequest, key_counts


def cpu_kernel():
    """PyTorch's fused CPU attention kernel, which also returns each row's logsumexp (None where absent)."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def applies(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, request: StatsRequest, *, attn_mask, key_padding, window
) -> bool:
    """Whether the fused path computes this call's softmax attention and statistics exactly. Requested key columns
    go to the chunked path: exp(s - lse) with the kernel's float32 lse is off by |s| x 1e-7 relative (2e-5 at
    scores near 100), while column sums and entropy come out of the kernel's own reductions."""
    return (
        cpu_kernel() is not None
        and not request.columns
        and q.device.type == "cpu"
        and q.dtype == k.dtype == v.dtype == torch.float32
        and q.shape[-1] == v.shape[-1]
        and attn_mask is None
        and key_padding is None
        and (window is None or window >= k.shape[2])
        and q.shape[2] == k.shape[2]
        and not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)))
    )


def _weights_at(q, k, lse, scale: float, causal: bool, rows: int, keys: list[int]) -> torch.Tensor:
    """[B, H, rows, len(keys)] A_ij = exp(s_ij - lse_i) for the first ``rows`` queries (0 where i may not see j)."""
    G = q.shape[1] // k.shape[1]
    kc = k[:, :, keys].repeat_interleave(G, dim=1)  # [B, H, C, D]
    s = scale * (q[:, :, :rows] @ kc.transpose(-1, -2))
    weights = (s - lse[:, :, :rows, None]).exp()
    if causal:
        i = torch.arange(rows)[:, None]
        weights = weights.masked_fill(torch.tensor(keys)[None, :] > i, 0.0)
    return weights


def transposed(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, scale: float, causal: bool, values: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """colsum [B, H, S] = sum_i A_ij from the rows' logsumexp ``lse`` [B, H, T] (natural log), by the kernel on the
    transposed problem (module docstring); with ``values``, also sum_i A_ij q_i [B, H, S, D]."""
    B, H, T, D = q.shape
    keys = torch.cat([k.repeat_interleave(H // k.shape[1], dim=1), k.new_ones(*k.shape[:1], H, k.shape[2], 1)], -1)
    rows = torch.cat([q, (-lse / scale)[..., None].to(q.dtype)], dim=-1)
    vals = torch.cat([q, q.new_zeros(B, H, T, 1)], dim=-1) if values else torch.zeros_like(rows)
    if causal:  # reversed, "row i >= key j" is the kernel's causal rule
        keys, rows, vals = keys.flip(2), rows.flip(2), vals.flip(2)
    out_t, lse_t = cpu_kernel()(keys, rows, vals, 0.0, causal, scale=scale)
    if causal:
        out_t, lse_t = out_t.flip(2), lse_t.flip(2)
    mass = lse_t.exp()
    return mass, (out_t[..., :D] * mass[..., None] if values else None)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float, request: StatsRequest
) -> tuple[torch.Tensor, AttentionStats]:
    """q [B, H, T, D], k/v [B, Hkv, T, D] (``applies`` holds) -> (out [B, H, T, D], AttentionStats)."""
    flash = cpu_kernel()
    B, T = q.shape[0], q.shape[2]
    out, lse = flash(q, k, v, 0.0, causal, scale=scale)  # lse [B, H, T], natural log
    colsum = entropy = count = None
    if request.colsum or request.entropy:
        colsum, weighted_q = transposed(q, k, lse, scale, causal, values=request.entropy)
        if request.entropy:  # GQA: the G query heads of a KV head share its keys (no repeated copy)
            weighted_q = weighted_q.double().unflatten(1, (k.shape[1], -1))  # [B, Hkv, G, S, D]
            dots = torch.einsum("bkgsd,bksd->bkg", weighted_q, k.double()).flatten(1)  # [B, H]
            entropy = (lse.double().sum(-1) - scale * dots).to(q.dtype)
        if request.colsum:
            count = key_counts(T, T, causal=causal, window=None, key_padding=None, batch=B, device=q.device)
        else:
            colsum = None
    w = min(request.pattern, T)
    stats = AttentionStats(
        colsum=colsum,
        count=count,
        entropy=entropy,
        rows=torch.full((B,), T, dtype=torch.long),
        pattern=_weights_at(q, k, lse, scale, causal, w, list(range(w))) if w else None,
        lse=lse if request.lse else None,
    )
    return out, stats
