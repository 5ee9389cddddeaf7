"""Clipped softmax (Bondarenko, Nagel and Blankevoort 2023, "Quantizable Transformers: Removing Outliers by Helping
Attention Heads Do Nothing", Eq. 4.1):

    a_ij = clip((zeta - gamma) * softmax(s_i)_j + gamma, 0, 1),   gamma < 0, zeta >= 1

so small probabilities become exact zeros. Defaults gamma = -0.03, zeta = 1.0: the best BERT-base setting of their
Table 1 (they also suggest gamma = -alpha / T with alpha in [2, 4]). Masked entries and empty rows give 0.
"""

from __future__ import annotations

import torch

from sinklab.ops._common import full_logits, masked_softmax, repeat_kv

GAMMA = -0.03
ZETA = 1.0


def weights(s: torch.Tensor, keep: torch.Tensor | None, *, gamma: float = GAMMA, zeta: float = ZETA) -> torch.Tensor:
    """Clipped softmax of logits s [..., S] over the entries where keep is True (None = all)."""
    a = torch.clamp((zeta - gamma) * masked_softmax(s, keep) + gamma, 0.0, 1.0)
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
    gamma: float = GAMMA,
    zeta: float = ZETA,
) -> torch.Tensor:
    """q [B, H, T, D], k/v [B, Hkv, S, D] -> [B, H, T, D]; rows with no visible key give 0."""
    s, keep = full_logits(q, k, causal=causal, attn_mask=attn_mask, scale=scale, window=window)  # [B, H, T, S]
    return weights(s, keep, gamma=gamma, zeta=zeta) @ repeat_kv(v, q.shape[1] // k.shape[1])
