"""FlashAttention-4 (``flash-attn-4``, import ``flash_attn.cute``; Zadouri, Shah, Dao et al. 2025) for the variants it
has: softmax, and the gpt-oss learnable sink ``learnable_sink`` [H] (natural-log logit, not scaled: sinklab's
``sink`` convention), which also gives softmax1 (a sink logit fixed at 0, no gradient).

    a_ij = exp(s_ij) / (exp(sink_h) + sum_j exp(s_ij))

Optional (``pip install sinklab[fa4]``), Hopper and Blackwell only; the dispatcher (``sinklab.ops.attention``) tries
it before the Triton kernels and falls back on ``NotImplementedError(reason)``. Statistics come from FA4's row
logsumexp and the Triton column-sum kernel, so ``stats=`` works on this path too. Layout: sinklab's [B, H, T, D]
is a transposed view of FA4's [B, T, H, D] (no copy). Causal with S > T aligns the queries to the last keys in
both; sinklab's window W (i - W < j <= i) is FA4's ``window_size=(W - 1, 0)`` (``(W - 1, W - 1)`` non-causal).
"""

from __future__ import annotations

import functools
import math

import torch

from sinklab.ops.stats import AttentionStats, StatsRequest

VARIANTS = ("softmax", "softmax1", "sink")
ARCHS = (9, 10, 11)  # compute-capability majors FA4 builds for: Hopper (sm90), Blackwell (sm100/sm110)
DTYPES = (torch.float16, torch.bfloat16)


@functools.cache
def _interface():
    """``flash_attn.cute.flash_attn_func``, or None when FlashAttention-4 is not installed or does not import."""
    try:
        from flash_attn.cute import flash_attn_func
    except Exception:  # ImportError, or a CUDA/cutlass library it cannot load: either way, not available
        return None
    return flash_attn_func


@functools.cache
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: str, masked: bool) -> str | None:
    """Why FA4 cannot run this call (None if it can). Checked in the order that imports nothing on a CPU."""
    if variant not in VARIANTS:
        return f"variant {variant!r} (FlashAttention-4 has {', '.join(VARIANTS)})"
    if not q.is_cuda:
        return "not a CUDA tensor"
    if _capability(q.device)[0] not in ARCHS:
        return "not a Hopper or Blackwell GPU"
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype} (FlashAttention-4 takes bfloat16 and float16, equal for q, k, v)"
    if q.shape[-1] % 8 or not 8 <= q.shape[-1] <= 128 or v.shape[-1] != q.shape[-1]:
        return f"head dim {q.shape[-1]} (8..128, a multiple of 8, equal for q, k, v)"
    if masked:
        return "an attn_mask or key padding (FlashAttention-4 takes causal and window masks only)"
    if _interface() is None:
        return "flash_attn.cute is not installed (pip install sinklab[fa4])"
    return None


def _window(window: int | None, causal: bool) -> tuple[int | None, int | None]:
    if window is None:
        return (None, None)
    return (window - 1, 0 if causal else window - 1)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    variant: str,
    causal: bool,
    scale: float,
    window: int | None,
    stats: StatsRequest | None,
    masked: bool,
    sink: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, AttentionStats]:
    """FA4 on q [B, H, T, D], k/v [B, Hkv, S, D] -> out [B, H, T, D], or ``(out, AttentionStats)`` with ``stats``
    (computed without autograd from the row logsumexp; gradients flow through ``out``). ``sink`` [H] for the sink
    variant; ``masked``: an attn_mask or key padding was given (declined). NotImplementedError(reason) otherwise."""
    reason = unsupported(q, k, v, variant, masked)
    if reason is not None:
        raise NotImplementedError(reason)
    from sinklab.ops._triton import flash  # the column-sum kernel and the statistics of a row logsumexp

    heads, _, _ = flash._resolve(variant, {} if sink is None else {"sink": sink}, q)
    func = _interface()
    out, lse = func(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        softmax_scale=scale, causal=causal, window_size=_window(window, causal),
        learnable_sink=None if variant == "softmax" else heads.sink, return_lse=stats is not None,
    )  # fmt: skip
    out = out.transpose(1, 2)
    if stats is None:
        return out
    prob = flash.Problem(flash.MODES[variant], bool(causal), window, scale)
    detached = flash.Heads(*(None if x is None else x.detach() for x in heads))
    with torch.no_grad():
        base2 = lse.detach() * (1.0 / math.log(2.0))  # the Triton kernels' row statistic is in base 2
        return out, flash.statistics(q, k, base2, None, None, prob, detached, stats)
