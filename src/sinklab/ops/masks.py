"""Mask construction for every attention path: causal + sliding window + ``attn_mask`` + bottom-right alignment.

Positions: the T queries are the LAST T of the S keys (a KV cache), so query ``i`` sits at key position
``i + S - T``. With ``causal``, query i may attend key j iff ``j <= i + S - T``; a sliding window ``W`` (HF's
convention) adds ``j > i + S - T - W``; without ``causal`` the window is symmetric, ``|i + S - T - j| < W``.
``attn_mask`` follows SDPA: bool (True = may attend) or additive float, broadcastable to [B, H, T, S]; a float entry
of ``-inf`` or at most ``finfo.min`` (HF's eager masks) counts as masked, the other float entries are added to the
logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sinklab.errors import SinklabInputError


@dataclass(frozen=True)
class MaskSpec:
    """Everything that decides which key a query sees, for a [B, H, T, D] x [B, Hkv, S, D] problem."""

    T: int
    S: int
    causal: bool
    window: int | None
    keep: torch.Tensor | None  # bool, broadcastable to [B, H, T, S], True = may attend (from attn_mask)
    bias: torch.Tensor | None  # float, broadcastable to [B, H, T, S], added to the logits (from attn_mask)
    device: torch.device | None = None  # where the position masks are built: q's device

    def key_range(self, t0: int, t1: int) -> tuple[int, int]:
        """Keys [lo, hi) that queries t0..t1-1 can see at all (before ``attn_mask``)."""
        off = self.S - self.T
        hi = min(self.S, t1 + off) if self.causal else self.S
        lo = 0
        if self.window is not None:
            lo = max(0, t0 + off - self.window + 1)
            if not self.causal:
                hi = min(self.S, t1 + off + self.window - 1)
        return lo, max(lo, hi)

    def block(self, t0: int, t1: int, lo: int, hi: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(keep, bias) for queries [t0, t1) x keys [lo, hi): bool [B|1, H|1, t1-t0, hi-lo] (None = all visible)
        and the additive float part of ``attn_mask`` (None = none)."""
        keep = None
        if self.causal or self.window is not None:
            device = self.device
            i = torch.arange(t0, t1, device=device)[:, None] + (self.S - self.T)  # [Tc, 1] key position of query
            j = torch.arange(lo, hi, device=device)[None, :]  # [1, K]
            keep = torch.ones(t1 - t0, hi - lo, dtype=torch.bool, device=device)
            if self.causal:
                keep = j <= i
            if self.window is not None:
                keep = keep & (j > i - self.window) & (j < i + self.window)
            keep = keep[None, None]  # [1, 1, Tc, K]
        if self.keep is not None:
            user = _slice(self.keep, t0, t1, lo, hi)
            keep = user if keep is None else keep & user
        bias = None if self.bias is None else _slice(self.bias, t0, t1, lo, hi)
        return keep, bias


def causal_key_padding(attn_mask: torch.Tensor, T: int, S: int) -> torch.Tensor | None:
    """The key padding [B|1, 1, 1, S] (bool, True = real key) when bool ``attn_mask`` [B|1, 1, T, S] is exactly the
    causal rule (bottom-right, no window) AND that padding; None for any other mask. transformers hands such 4-D
    masks to custom attention functions; as ``causal=True`` + key padding they run on the fused kernels.
    The last query sees every key causality allows, so its row is the padding; one comparison checks the rest."""
    if attn_mask.dtype != torch.bool or attn_mask.dim() != 4 or attn_mask.shape[1] != 1:
        return None
    if tuple(attn_mask.shape[-2:]) != (T, S):
        return None
    padding = attn_mask[:, :, -1:, :]
    causal, _ = MaskSpec(T, S, True, None, padding, None, attn_mask.device).block(0, T, 0, S)
    return padding if torch.equal(attn_mask, causal.expand_as(attn_mask)) else None


def _slice(m: torch.Tensor, t0: int, t1: int, lo: int, hi: int) -> torch.Tensor:
    m = m if m.shape[-2] == 1 else m[..., t0:t1, :]
    return m if m.shape[-1] == 1 else m[..., lo:hi]


def mask_spec(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool,
    attn_mask: torch.Tensor | None,
    window: int | None,
    key_padding: torch.Tensor | None = None,
) -> MaskSpec:
    """Validate ``attn_mask``/``window``/``key_padding`` for q [B, H, T, D], k [B, Hkv, S, D] and split the mask into
    keep/bias; the key padding [B, S] (True = real token) joins keep."""
    B, H, T, _ = q.shape
    S = k.shape[-2]
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise SinklabInputError(f"window must be a positive int (sliding window size) or None, got {window!r}")
    keep = bias = None
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise SinklabInputError(f"attn_mask must be a torch.Tensor (bool or float), got {type(attn_mask).__name__}")
        shape = tuple(attn_mask.shape)
        target = (B, H, T, S)
        ok = attn_mask.dim() <= 4 and all(a in (1, b) for a, b in zip(reversed(shape), reversed(target), strict=False))
        if not ok:
            raise SinklabInputError(f"attn_mask {list(shape)} does not broadcast to [B, H, T, S]={list(target)}")
        m = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + shape)
        if m.dtype == torch.bool:
            keep = m
        elif m.is_floating_point():
            masked = torch.isneginf(m) | (m <= torch.finfo(m.dtype).min)
            keep = ~masked if bool(masked.any()) else None
            bias = m.masked_fill(masked, 0.0)
        else:
            raise SinklabInputError(f"attn_mask must be bool (True = may attend) or float (additive), got {m.dtype}")
    padding = check_key_padding(key_padding, B, S)
    if padding is not None:
        keep = padding[:, None, None, :] if keep is None else keep & padding[:, None, None, :]
    return MaskSpec(T, S, causal, window, keep, bias, q.device)


def check_key_padding(key_padding: torch.Tensor | None, B: int, S: int) -> torch.Tensor | None:
    """``key_padding`` validated as bool [B, S] (True = real token), or None."""
    if key_padding is None:
        return None
    if not isinstance(key_padding, torch.Tensor) or key_padding.dtype != torch.bool:
        got = key_padding.dtype if isinstance(key_padding, torch.Tensor) else type(key_padding).__name__
        raise SinklabInputError(f"key_padding must be a bool tensor [B, S] (True = real token), got {got}")
    if key_padding.dim() != 2 or key_padding.shape[1] != S or key_padding.shape[0] not in (1, B):
        raise SinklabInputError(f"key_padding must be [B, S] = [{B}, {S}], got {list(key_padding.shape)}")
    return key_padding.expand(B, S)
