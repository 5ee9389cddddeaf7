"""Key/value bias, CPU fast path: the fused SDPA kernel with the bias key/value as one extra slot per head."""

from __future__ import annotations

import torch

from sinklab.ops._common import check_qkv, default_scale
from sinklab.ops._sdpa import softmax_with_slot
from sinklab.ops.masks import mask_spec


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
    """Same contract as ``sinklab.ops.kv_bias.naive.attention``."""
    check_qkv(q, k, v)
    spec = mask_spec(q, k, causal=causal, attn_mask=attn_mask, window=window)
    scale = default_scale(q, scale)
    logit = scale * (q @ k_bias.to(q.dtype)[None, :, :, None]).squeeze(-1)  # [B, H, T]
    if sink is not None:
        logit = logit + sink.to(q.dtype).reshape(1, -1, 1)
    return softmax_with_slot(q, k, v, spec, scale, slot_logit=logit, slot_value=v_bias)
