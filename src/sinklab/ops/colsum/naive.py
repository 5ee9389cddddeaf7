"""Attention statistics from the full score matrix: the definition the chunked and Triton paths must match.

For one layer, A = softmax(QK^T * scale + mask) row-wise, [B, H, T, S]. Queries are the last T of the S key
positions (bottom-right alignment). Statistics over *valid* queries only (a padded query never counts):

    colsum[b, h, j]  = sum_i A[b, h, i, j]                      attention mass key j receives
    count[b, j]      = #{valid i that may attend j}            so colsum / count is the mean received mass
    entropy[b, h]    = sum_i -sum_j A_ij log A_ij              summed over valid rows
    rows[b]          = number of valid query rows

alpha_k (Gu et al. 2024, "When Attention Sink Emerges in Language Models") is colsum[k] / count[k]: for full
causal attention count[k] = T - k + 1 (1-indexed), exactly Gu's 1/(T-k+1) sum_{t>=k} A_{t,k}.
"""

from __future__ import annotations

import torch

from sinklab.ops._common import repeat_kv
from sinklab.ops.colsum.types import AttentionStats
from sinklab.ops.masks import MaskSpec


def allowed_mask(
    q_len: int,
    kv_len: int,
    *,
    causal: bool,
    window: int | None = None,
    key_padding: torch.Tensor | None = None,
    rows: tuple[int, int] | None = None,
    keys: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Boolean [B or 1, 1, R, K] mask (True = may attend) for query ``rows`` and key range ``keys`` (default all),
    by ``sinklab.ops.masks``' rule (queries are the last ``q_len`` of ``kv_len`` positions; causal, window W in HF's
    convention); key_padding [B, S] (True = real token) removes padded keys."""
    r0, r1 = rows if rows is not None else (0, q_len)
    k0, k1 = keys if keys is not None else (0, kv_len)
    keep = None if key_padding is None else key_padding[:, None, None, :].bool()
    spec = MaskSpec(q_len, kv_len, causal, window, keep, None, torch.device(device))
    mask, _ = spec.block(r0, r1, k0, k1)
    return torch.ones(1, 1, r1 - r0, k1 - k0, dtype=torch.bool, device=device) if mask is None else mask


def query_validity(q_len: int, kv_len: int, key_padding: torch.Tensor | None, batch: int, device) -> torch.Tensor:
    """[B, T] bool: a query counts iff its own token is not padding."""
    if key_padding is None:
        return torch.ones(batch, q_len, dtype=torch.bool, device=device)
    return key_padding[:, kv_len - q_len :].bool()


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
) -> tuple[torch.Tensor, AttentionStats]:
    """Softmax attention and its statistics from the materialized [B, H, T, S] matrix (float64-safe reference).

    Returns ``(out [B, H, T, D], stats)``; rows with no allowed key give zeros.
    """
    B, H, T, _ = q.shape
    S = k.shape[2]
    k, v = repeat_kv(k, H // k.shape[1]), repeat_kv(v, H // v.shape[1])
    allowed = allowed_mask(T, S, causal=causal, window=window, key_padding=key_padding, device=q.device)
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = (q @ k.transpose(-1, -2)).to(compute_dtype) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked rows -> zeros
    out = (probs @ v.to(compute_dtype)).to(q.dtype)
    valid = query_validity(T, S, key_padding, B, q.device)  # [B, T]
    probs_valid = probs * valid[:, None, :, None]
    entropy = -torch.special.xlogy(probs_valid, probs_valid).sum(dim=(-1, -2))
    count = (allowed.expand(B, 1, T, S) & valid[:, None, :, None]).sum(dim=(1, 2))
    pattern = probs[..., :keep_pattern, :keep_pattern].clone() if keep_pattern else None
    stats = AttentionStats(
        colsum=probs_valid.sum(dim=2), count=count, entropy=entropy, rows=valid.sum(-1), pattern=pattern
    )
    return out, stats


def colsum(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    *,
    scale: float,
    causal: bool = True,
    window: int | None = None,
    key_padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mass each key receives given each row's logsumexp: colsum_j = sum_i exp(s_ij - lse_i), [B, H, S].

    ``lse`` [B, H, T] is the natural-log logsumexp of each row's masked scores (what flash attention returns).
    Padded query rows are excluded.
    """
    B, H, T, _ = q.shape
    S = k.shape[2]
    scores = (q @ repeat_kv(k, H // k.shape[1]).transpose(-1, -2)).to(lse.dtype) * scale
    allowed = allowed_mask(T, S, causal=causal, window=window, key_padding=key_padding, device=q.device)
    valid = query_validity(T, S, key_padding, B, q.device)[:, None, :, None]
    probs = torch.exp(scores - lse[..., None]).masked_fill(~(allowed & valid), 0.0)
    return probs.sum(dim=2)
