"""Byte histograms of half-precision magnitudes, without a host synchronization: the exact median of |x| on CUDA.

A float16/bfloat16 |x| is ordered as its 15 magnitude bits, so the median is found by counting: a histogram of the
high byte (128 bins) finds the bin b that holds the k-th smallest value, a histogram of the low byte over the values
whose high byte is b finds it inside. ``torch.bincount`` on CUDA reads its input's minimum and maximum back to the
host (two synchronizations per call), which stalls the GPU queue at every layer of a scan; these kernels take the
selected bin b as a device tensor and never synchronize. Each program accumulates ``tl.histogram`` over a
grid-strided range of blocks in registers and adds its counts to the output once (int32 atomics: exact).

Twin: ``torch.bincount`` of ``(bits & 0x7FFF) >> 8`` (high) or of ``bits & 0xFF`` where the high byte is b (low)
(``sinklab.measure.engine._byte_histogram`` on the CPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096
MAX_PROGRAMS = 1024


@triton.jit
def byte_histogram_kernel(BITS, HIGH, OUT, n, LOW_BYTE: tl.constexpr, BLOCK: tl.constexpr):
    # values outside the wanted set go to an overflow bin (BINS = 2 x the real bins: a power of two)
    BINS: tl.constexpr = 512 if LOW_BYTE else 256
    pid, programs = tl.program_id(0), tl.num_programs(0)
    acc = tl.zeros((BINS,), dtype=tl.int32)
    if LOW_BYTE:
        high = tl.load(HIGH)
    for start in tl.range(pid * BLOCK, n, programs * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < n
        bits = tl.load(BITS + offs, mask=inside, other=0).to(tl.int32) & 0x7FFF
        if LOW_BYTE:  # noqa: SIM108 (a constexpr branch)
            bin_ = tl.where(inside & ((bits >> 8) == high), bits & 0xFF, 256)
        else:
            bin_ = tl.where(inside, bits >> 8, 128)
        acc += tl.histogram(bin_, BINS)
    tl.atomic_add(OUT + tl.arange(0, BINS), acc)


def byte_histogram(bits: torch.Tensor, high: torch.Tensor | None = None) -> torch.Tensor:
    """int64 counts of the high magnitude byte of ``bits`` (int16 [N], a half-precision tensor's bit pattern):
    [128]; or, given ``high`` (a 0-d device tensor), of the low byte among the values whose high byte is ``high``:
    [256]."""
    bits = bits.reshape(-1).contiguous()
    low = high is not None
    out = torch.zeros(512 if low else 256, dtype=torch.int32, device=bits.device)
    n = bits.numel()
    if n:
        grid = (min(triton.cdiv(n, BLOCK), MAX_PROGRAMS),)
        target = high.reshape(1).to(torch.int32) if low else out  # HIGH is unused for the high byte
        byte_histogram_kernel[grid](bits, target, out, n, LOW_BYTE=low, BLOCK=BLOCK)
    return out[: 256 if low else 128].long()
