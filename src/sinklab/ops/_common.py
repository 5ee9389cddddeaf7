"""Small pieces shared by every attention path: shapes, scale, GQA expansion, masked softmax, full logits."""

from __future__ import annotations

import math

import torch

from sinklab.ops.masks import MaskSpec, mask_spec


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q [B, H, T, D], k and v [B, Hkv, S, D] with H % Hkv == 0, one floating dtype and device."""
    from sinklab.errors import SinklabInputError

    if not all(isinstance(x, torch.Tensor) for x in (q, k, v)):
        raise SinklabInputError("q, k, v must be torch.Tensors of layout [B, H, T, D], [B, Hkv, S, D], [B, Hkv, S, D]")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise SinklabInputError(
            f"q, k, v must be 4-D [B, H, T, D] / [B, Hkv, S, D]; got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}"
        )
    B, H, _, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[-1] != D or k.shape[1] < 1 or H % k.shape[1]:
        raise SinklabInputError(
            f"k and v must be [B, Hkv, S, D] with B={B}, D={D} and H={H} a multiple of Hkv; "
            f"got k {list(k.shape)}, v {list(v.shape)}"
        )
    if not (q.is_floating_point() and q.dtype == k.dtype == v.dtype):
        raise SinklabInputError(f"q, k, v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.numel() == 0 or k.numel() == 0:
        raise SinklabInputError(
            f"q, k, v must not be empty (B, H, T, S, D >= 1); got q {list(q.shape)}, k {list(k.shape)}"
        )


def default_scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, Hkv, S, D] -> [B, Hkv * groups, S, D]: each KV head serves ``groups`` consecutive query heads (GQA)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def head_param(x: torch.Tensor | float, H: int, like: torch.Tensor) -> torch.Tensor:
    """A per-head scalar parameter ([H], 0-d or float) as [1, H, 1, 1] in ``like``'s dtype."""
    x = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return x.reshape(1, -1, 1, 1).expand(1, H, 1, 1)


def slot_softmax(
    s: torch.Tensor, keep: torch.Tensor | None, extra: torch.Tensor | float | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Softmax over the last dim of logits s [..., K] where keep is True (None = all), plus an optional extra slot.

    ``extra`` (logits broadcastable to [..., 1]) joins the normalizer: p_j = exp(s_j - lse), slot = exp(extra - lse),
    lse = log(exp(extra) + sum_kept exp(s_j)). Returns (p [..., K], slot [..., 1] or None, lse [..., 1]). A row with
    no kept entry has p = 0 and slot = 0 (it attends nothing); its lse is the extra logit (-inf without one).
    """
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    m = s.amax(-1, keepdim=True)
    if extra is not None:
        extra = torch.as_tensor(extra, dtype=s.dtype, device=s.device).expand_as(m)
        m = torch.maximum(m, extra)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    e = torch.exp(s - m)
    den = e.sum(-1, keepdim=True)
    slot = None
    if extra is not None:
        slot = torch.exp(extra - m)
        den = den + slot
    lse = m + den.log()
    den = torch.where(den > 0, den, torch.ones_like(den))
    if slot is not None:
        slot = slot / den
        if keep is not None:
            slot = slot * keep.any(-1, keepdim=True)
    return e / den, slot, lse


def masked_softmax(s: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim, masked entries (keep False) get 0, rows with nothing to attend get all 0."""
    return slot_softmax(s, keep)[0]


def softcapped(s: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Logit soft-capping (Gemma 2, Gemma Team 2024): s -> softcap * tanh(s / softcap); None = unchanged."""
    return s if softcap is None else softcap * torch.tanh(s / softcap)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Weights are computed in float32 at least: float64 stays, float32 stays, half types go to float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def full_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool,
    attn_mask: torch.Tensor | None,
    scale: float | None,
    window: int | None,
    key_padding: torch.Tensor | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The whole score matrix softcap(scale * q k^T) + float mask, [B, H, T, S], and keep (bool, broadcastable,
    or None = every key visible)."""
    check_qkv(q, k, k)
    spec = mask_spec(q, k, causal=causal, attn_mask=attn_mask, window=window, key_padding=key_padding)
    k = repeat_kv(k, q.shape[1] // k.shape[1])  # [B, H, S, D]
    s = softcapped(default_scale(q, scale) * (q @ k.transpose(-1, -2)), softcap)  # [B, H, T, S]
    keep, bias = spec.block(0, spec.T, 0, spec.S)
    if bias is not None:
        s = s + bias.to(s.dtype)
    return s, keep


def block_rows(spec: MaskSpec, rows_per_elems: int, batch_heads: int) -> int:
    """Query-chunk length so that one [batch_heads, Tc, S] block stays near ``rows_per_elems`` elements."""
    return max(16, min(spec.T, rows_per_elems // max(1, batch_heads * spec.S)))
