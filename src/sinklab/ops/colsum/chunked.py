"""Attention statistics in query chunks: O(T) memory, never a T x T matrix. Twin of ``naive.py``.

Each chunk of R queries builds only its [B, Hkv, G*R, S'] score block over the keys it can reach (S' <= S: causal
and sliding-window rows skip keys they cannot see), takes an exact row softmax, and accumulates the column sums,
counts and entropies. GQA is handled by folding the G query heads of one KV head into the row dimension, so keys
and values are never repeated.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sinklab.ops.colsum.naive import allowed_mask, query_validity
from sinklab.ops.colsum.types import AttentionStats
from sinklab.ops.masks import MaskSpec

RowWeights = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
DEFAULT_BLOCK_BYTES = 32 * 2**20  # score block budget per chunk; larger blocks amortize Python overhead
MASKED = -1e30  # logit of a key a query may not see


def chunk_rows(batch: int, heads: int, kv_len: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per chunk so that one float32 [B, H, R, S] score block stays within ``block_bytes``."""
    return max(16, block_bytes // max(1, batch * heads * kv_len * 4))


def _rule_free_keys(r0: int, r1: int, q_len: int, kv_len: int, causal: bool, window: int | None) -> tuple[int, int]:
    """Keys [a, b) that every query r0..r1-1 may see by position (only padding can hide them)."""
    off = kv_len - q_len
    a, b = 0, kv_len
    if causal:
        b = r0 + off + 1
    if window is not None:
        a = r1 - 1 + off - window + 1
        if not causal:
            b = min(b, r0 + off + window)
    return a, b


def attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    causal: bool = True,
    window: int | None = None,
    key_padding: torch.Tensor | None = None,
    keep_pattern: int = 0,
    rows_per_chunk: int | None = None,
    on_chunk: Callable[[torch.Tensor, tuple[int, int], tuple[int, int]], None] | None = None,
    weights: RowWeights | None = None,
) -> tuple[torch.Tensor, AttentionStats]:
    """Same contract as ``naive.attention_stats``: ``(out [B, H, T, D], AttentionStats)``, in query chunks.

    ``weights`` replaces the softmax for other attention variants: ``weights(scores, keep, q_rows)`` gets the
    [B, H, R, K] logits (-inf where masked), the matching bool mask and the [B, H, R, D] queries, and returns the
    weights on the real keys plus the output of any extra slot (a sink logit's value, a learned value bias) or None.

    The position rule is applied only to the few key columns where it bites (the causal diagonal, the window's
    edge); column sums are a matrix product with the row-validity vector. ``on_chunk(probs, rows, keys)`` sees
    each [B, H, R, K] probability block (padded query rows zeroed).
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    R = rows_per_chunk or chunk_rows(B, H, S)
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    valid = query_validity(T, S, key_padding, B, q.device)  # [B, T]
    valid_f = valid.to(compute_dtype)
    out = torch.empty_like(q)
    colsum = torch.zeros(B, H, S, dtype=compute_dtype, device=q.device)
    count = torch.zeros(B, S, dtype=torch.long, device=q.device)
    entropy = torch.zeros(B, H, dtype=compute_dtype, device=q.device)
    pattern = None
    qg = q.view(B, Hkv, G, T, D)
    for r0 in range(0, T, R):
        r1 = min(T, r0 + R)
        rows = r1 - r0
        lo, hi = MaskSpec(T, S, causal, window, None, None).key_range(r0, r1)
        K = hi - lo
        q_blk = (qg[:, :, :, r0:r1] * scale).reshape(B, Hkv, G * rows, D)
        scores = (q_blk @ k[:, :, lo:hi].transpose(-1, -2)).to(compute_dtype).view(B, H, rows, K)
        row_valid = valid[:, r0:r1]  # [B, R]
        chunk_count = row_valid.sum(1, keepdim=True).expand(B, K).clone()  # [B, K]
        free_a, free_b = _rule_free_keys(r0, r1, T, S, causal, window)
        for a, b in ((lo, min(hi, max(lo, free_a))), (max(lo, min(hi, free_b)), hi)):
            if b > a:  # the position rule bites only on these columns
                rule = allowed_mask(T, S, causal=causal, window=window, rows=(r0, r1), keys=(a, b), device=q.device)
                scores[..., a - lo : b - lo].masked_fill_(~rule, MASKED)
                chunk_count[:, a - lo : b - lo] = (rule[0, 0][None] & row_valid[:, :, None]).sum(1)
        if key_padding is not None:
            pad = key_padding[:, lo:hi].bool()
            scores.masked_fill_(~pad[:, None, None, :], MASKED)
            chunk_count *= pad
        # masked logits are a large finite negative: exp gives exactly 0 and 0 * logit stays 0 (no NaN)
        row_max = scores.amax(-1)  # [B, H, R]
        has_key = row_max > MASKED / 2  # only padded queries can see no key at all
        extra_out = None
        if weights is None:
            probs = torch.softmax(scores, dim=-1)
        else:
            probs, extra_out = weights(scores, scores > MASKED / 2, q[:, :, r0:r1].to(compute_dtype))
        if key_padding is not None:
            probs = probs * has_key[..., None]  # zeros, not a uniform spread over masked keys
        o_blk = (probs.view(B, Hkv, G * rows, K) @ v[:, :, lo:hi].to(compute_dtype)).view(B, H, rows, D)
        if extra_out is not None:
            o_blk = o_blk + extra_out
        out[:, :, r0:r1] = o_blk.to(q.dtype)
        if keep_pattern and r0 < keep_pattern:
            pattern = _keep_pattern(pattern, probs, r0, r1, lo, hi, keep_pattern, T, S)
        row_w = valid_f[:, None, None, r0:r1]  # [B, 1, 1, R]
        if weights is None:  # -sum p log p = lse - sum p s, with lse = max s - log max p (the argmax has p = 1/Z)
            lse = row_max - probs.amax(-1).clamp_min(torch.finfo(compute_dtype).tiny).log()
            row_entropy = torch.where(has_key, lse - torch.einsum("bhrk,bhrk->bhr", probs, scores), 0.0)
        else:
            row_entropy = -torch.special.xlogy(probs, probs).sum(-1)
        if key_padding is not None:
            probs = probs * row_w.transpose(-1, -2)
        if on_chunk is not None:
            on_chunk(probs, (r0, r1), (lo, hi))
        colsum[:, :, lo:hi] += (row_w @ probs)[:, :, 0]
        entropy += (row_entropy * row_w[:, :, 0]).sum(-1)
        count[:, lo:hi] += chunk_count
    return out, AttentionStats(colsum=colsum, count=count, entropy=entropy, rows=valid.sum(-1), pattern=pattern)


def _keep_pattern(pattern, probs, r0, r1, lo, hi, keep, T, S):
    """Copy the part of a chunk that falls in the first ``keep`` queries x keys into the [B, H, w, w] map."""
    B, H = probs.shape[:2]
    if pattern is None:
        pattern = torch.zeros(B, H, min(keep, T), min(keep, S), dtype=probs.dtype, device=probs.device)
    take = min(r1, pattern.shape[2]) - r0
    k_hi = min(hi, pattern.shape[3])
    if k_hi > lo:
        pattern[:, :, r0 : r0 + take, lo:k_hi] = probs[:, :, :take, : k_hi - lo]
    return pattern


def colsum(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    *,
    scale: float,
    causal: bool = True,
    window: int | None = None,
    key_padding: torch.Tensor | None = None,
    rows_per_chunk: int | None = None,
) -> torch.Tensor:
    """Same contract as ``naive.colsum``: mass each key receives given each row's logsumexp, in query chunks."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    R = rows_per_chunk or chunk_rows(B, H, S)
    valid = query_validity(T, S, key_padding, B, q.device)
    total = torch.zeros(B, H, S, dtype=lse.dtype, device=q.device)
    qg = q.view(B, Hkv, G, T, D)
    for r0 in range(0, T, R):
        r1 = min(T, r0 + R)
        lo, hi = MaskSpec(T, S, causal, window, None, None).key_range(r0, r1)
        rows = r1 - r0
        scores = (qg[:, :, :, r0:r1].reshape(B, Hkv, G * rows, D) @ k[:, :, lo:hi].transpose(-1, -2)).to(lse.dtype)
        scores = scores.view(B, H, rows, hi - lo) * scale
        allowed = allowed_mask(
            T, S, causal=causal, window=window, key_padding=key_padding, rows=(r0, r1), keys=(lo, hi), device=q.device
        )
        allowed = allowed & valid[:, None, r0:r1, None]
        probs = torch.exp(scores - lse[:, :, r0:r1, None]).masked_fill(~allowed, 0.0)
        total[:, :, lo:hi] += probs.sum(dim=2)
    return total
