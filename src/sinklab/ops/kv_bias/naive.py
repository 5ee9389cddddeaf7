"""Explicit key/value bias (Sun et al. 2024, "Massive Activations in LLMs", Sec. 5; Gu et al. 2024 Sec. 7):
one learnable key k'_h and value v'_h per head appended to every query's key/value set:

    out_i = sum_{j in visible(i) + {'}} softmax_j(scale * q_i . k_j [+ sink_h for j = ']) v_j

The optional ``sink`` [H] is a logit added to the bias slot only (default 0): with k_bias = v_bias = 0 and a very
negative ``sink`` the slot gets ~0 weight, which is how ``sinklab.remove.patch`` starts a pretrained model unchanged.
A row with no visible real key gives 0 (it is padding), not v'_h.
"""

from __future__ import annotations

import torch

from sinklab.ops._common import default_scale, full_logits, has_key, head_param, masked_softmax, repeat_kv


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    window: int | None = None,
    k_bias: torch.Tensor,
    v_bias: torch.Tensor,
    sink: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, H, T, D], k/v [B, Hkv, S, D], k_bias/v_bias [H, D], sink [H] or None -> [B, H, T, D]."""
    B, H, _, D = q.shape
    s, keep = full_logits(q, k, causal=causal, attn_mask=attn_mask, scale=scale, window=window)  # [B, H, T, S]
    s_bias = default_scale(q, scale) * (q @ k_bias.to(q.dtype)[None, :, :, None])  # [B, H, T, 1]
    if sink is not None:
        s_bias = s_bias + head_param(sink, H, s)  # [B, H, T, 1]
    s_all = torch.cat([s, s_bias], dim=-1)  # [B, H, T, S + 1]: the bias slot is the last key
    keep_all = None if keep is None else torch.cat([keep, keep.new_ones(*keep.shape[:-1], 1)], dim=-1)
    p = masked_softmax(s_all, keep_all)
    v_all = torch.cat([repeat_kv(v, H // k.shape[1]), v_bias.to(v.dtype)[None, :, None, :].expand(B, H, 1, D)], 2)
    out = p @ v_all  # [B, H, T, D]
    rows = has_key(keep)
    return out if rows is None else out * rows
