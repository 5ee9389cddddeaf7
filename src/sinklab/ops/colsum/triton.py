"""Column sums on CUDA: the attention mass each key receives, colsum[b, h, j] = sum_i exp(s_ij - lse_i), from a
stored per-row logsumexp, in one Triton kernel that never materializes T x S.

Each program owns one block of keys of one query head and walks only the query blocks that can see it (causal,
sliding window), as the flash-attention backward's dK/dV pass does: one matrix product per tile. Same contract
as ``naive.colsum``; inputs the kernel does not take (float32/float64, other head dims) go to ``chunked.colsum``.
"""

from __future__ import annotations

import torch
import triton

from sinklab.ops._triton import kernels
from sinklab.ops._triton.flash import INTERPRET, unsupported
from sinklab.ops.colsum import chunked


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
    """q [B, H, T, D], k [B, Hkv, S, D], lse [B, H, T] (natural log) -> [B, H, S] in lse's dtype."""
    if unsupported(q, k, k) is not None:
        return chunked.colsum(q, k, lse, scale=scale, causal=causal, window=window, key_padding=key_padding)
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    q, k = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k))
    lse32 = lse.float().contiguous()
    out = torch.empty(B, H, S, dtype=torch.float32, device=q.device)
    if key_padding is None:
        kpm, skpm = torch.zeros(1, dtype=torch.int8, device=q.device), 0
    else:
        kpm = key_padding.to(torch.int8).expand(B, S).contiguous()
        skpm = S
    block_m, block_n, warps = (16, 16, 4) if INTERPRET else (64, 128, 8)
    kernels.colsum_kernel[(triton.cdiv(S, block_n), B * H)](
        q, k, lse32, out, kpm, *q.stride()[:3], *k.stride()[:3], *lse32.stride(), skpm,
        H, H // Hkv, T, S, S - T, window or 0, float(scale) * kernels.LOG2E,
        CAUSAL=causal, HAS_WINDOW=window is not None, HAS_PAD=key_padding is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_D=D, num_warps=warps, num_stages=3,
    )  # fmt: skip
    return out.to(lse.dtype)
