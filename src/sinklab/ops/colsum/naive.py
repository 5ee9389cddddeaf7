"""Column sums from a stored logsumexp on the full score matrix, colsum_j = sum_i exp(s_ij - lse_i), and the mask
and validity rules the statistics paths share. Every variant's statistics are defined in ``sinklab.ops.naive``."""

from __future__ import annotations

import torch

from sinklab.ops._common import repeat_kv
from sinklab.ops.masks import MaskSpec
from sinklab.ops.stats import query_validity

__all__ = ["allowed_mask", "colsum", "query_validity"]


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
