"""What every kernel shares: the named modes, the block ranges each program visits, the tile mask, masked loads.

Layout: q [B, H, T, D], k/v [B, Hkv, S, D] (GQA: query head h reads KV head h // G), last dim contiguous.
Scores are kept in base-2 units, s = q.k * scale * log2(e), so every exponential is an ``exp2``.

Masking (bottom-right alignment, as ``sinklab.ops.masks``): query row r sits at key position ``r + OFF`` with
``OFF = S - T``; causal keeps j <= pos, a window W adds j > pos - W (and j < pos + W without causality), a
key-padding vector removes keys. Each program visits only the key (or query) blocks it can reach, in three
segments (``segment``): masked leading edge, unmasked interior, masked trailing edge, so the interior runs with no
element-wise mask at all. Kernels unroll ``for SEG in tl.static_range(3)``; ``SEG != 1`` (an edge) is the
compile-time MASKED of the helpers below (a local name would turn it into a runtime value).

FAMILY (what a tile contributes) and SLOT (how the softmax family's running max and sum start) are compile-time
constants; ``flash.MODES`` maps each kernel mode name ("softmax", "sink", ...) to them.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

LOG2E = tl.constexpr(1.4426950408889634)

# FAMILY
SOFTMAX = tl.constexpr(0)  # running max m and sum l; lse = m + log2 l; dS = P (dP - delta)
SOFTPICK = tl.constexpr(1)  # Zuhri et al. 2025: relu(e^x - 1) / (sum |e^x - 1| + eps), tiled with m clamped >= 0
CLIPPED = tl.constexpr(2)  # Bondarenko et al. 2023: clip((zeta - gamma) P + gamma, 0, 1), needs the softmax lse first
SIGMOID = tl.constexpr(3)  # Ramapuram et al. 2024: sigmoid(x + b), no normalizer
# SLOT of the softmax family: the extra key every query sees besides the real ones
NO_SLOT = tl.constexpr(0)  # m = -inf, l = 0
LOGIT_SLOT = tl.constexpr(1)  # a sink logit s_h (softmax1: s_h = 0; gpt-oss): m = s_h, l = 1
KV_SLOT = tl.constexpr(2)  # an explicit key/value (Sun et al. 2024): m = q.k_b + s_h, l = 1, acc = v_b
INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")
# PASS of the forward kernel
OUT_PASS = tl.constexpr(0)  # output and the row statistic
LSE_PASS = tl.constexpr(1)  # the softmax lse only (clipped's first pass)
DELTA_PASS = tl.constexpr(2)  # clipped's backward delta' = (zeta - gamma) rowsum(P [0 < y < 1] dP)
# PART of the dK/dV kernel: both accumulators in one launch, or one per launch (half the registers, one more QK^T)
DKDV = tl.constexpr(0)
DV_ONLY = tl.constexpr(1)
DK_ONLY = tl.constexpr(2)


@triton.jit
def _split(lo, hi, full_lo, full_hi, BLOCK: tl.constexpr):
    """Blocks of BLOCK from ``lo`` (aligned down) to ``hi``: masked [a0, a1), interior [b0, b1), masked [b1, hi)."""
    a0 = (lo // BLOCK) * BLOCK
    b0 = tl.maximum(a0, ((full_lo + BLOCK - 1) // BLOCK) * BLOCK)
    b1 = b0 + (tl.maximum(full_hi - b0, 0) // BLOCK) * BLOCK
    a1 = tl.minimum(b0, hi)
    return a0, a1, b0, b1


@triton.jit
def key_blocks(start_m, T, S, OFF, W, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_WINDOW: tl.constexpr):  # fmt: skip
    """Key blocks seen by query rows [start_m, start_m + BLOCK_M): (a0, a1, b0, b1, hi) as ``_split``."""
    lo = start_m * 0
    hi = lo + S
    full_lo = lo
    if CAUSAL:
        hi = tl.minimum(hi, start_m + BLOCK_M + OFF)
    if HAS_WINDOW:
        lo = tl.maximum(lo, start_m + OFF - W + 1)
        full_lo = tl.maximum(lo, start_m + BLOCK_M + OFF - W)
        if not CAUSAL:
            hi = tl.minimum(hi, start_m + BLOCK_M - 1 + OFF + W)
    full_hi = hi
    if CAUSAL:
        full_hi = tl.minimum(full_hi, start_m + OFF + 1)
    if HAS_WINDOW and not CAUSAL:
        full_hi = tl.minimum(full_hi, start_m + OFF + W)
    a0, a1, b0, b1 = _split(lo, hi, full_lo, full_hi, BLOCK_N)
    return a0, a1, b0, b1, hi


@triton.jit
def query_blocks(start_n, T, S, OFF, W, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr,
                 HAS_WINDOW: tl.constexpr):  # fmt: skip
    """Query blocks that see keys [start_n, start_n + BLOCK_N): (a0, a1, b0, b1, hi) as ``_split``."""
    lo = start_n * 0
    hi = lo + T
    if CAUSAL:
        lo = tl.maximum(lo, start_n - OFF)
    if HAS_WINDOW:
        hi = tl.minimum(hi, start_n + BLOCK_N - 1 - OFF + W)
        if not CAUSAL:
            lo = tl.maximum(lo, start_n - OFF - W + 1)
    full_lo = lo
    full_hi = tl.minimum(hi, (T // BLOCK_M) * BLOCK_M)
    if CAUSAL:
        full_lo = tl.maximum(full_lo, start_n + BLOCK_N - 1 - OFF)
    if HAS_WINDOW:
        full_hi = tl.minimum(full_hi, start_n - OFF + W)
        if not CAUSAL:
            full_lo = tl.maximum(full_lo, start_n + BLOCK_N - 1 - OFF - W + 1)
    a0, a1, b0, b1 = _split(lo, hi, full_lo, full_hi, BLOCK_M)
    return a0, a1, b0, b1, hi


@triton.jit
def segment(SEG: tl.constexpr, a0, a1, b0, b1, hi):
    """[lo, end) of segment SEG of a block range: 0 the masked leading edge, 1 the interior, 2 the trailing edge."""
    lo = b1
    end = hi
    if SEG == 0:
        lo = a0
        end = a1
    elif SEG == 1:
        lo = b0
        end = b1
    return lo, end


@triton.jit
def fast_log2(x):
    """log2 as one lg2.approx on the GPU (tl.math.log2 is libdevice's 12-FMA polynomial); the interpreter has only
    the plain one."""
    return tl.math.log2(x) if INTERPRET else libdevice.fast_log2f(x)


@triton.jit
def rows_source(base, n, stride, BLOCK: tl.constexpr, HEAD_D: tl.constexpr, TMA: tl.constexpr):
    """What ``load_block`` reads the [n, D] rows at ``base`` from: a TMA descriptor of [BLOCK, D] boxes (TMA; rows
    past n read as 0 in hardware) or the pointer itself."""
    src = base
    if TMA:
        src = tl.make_tensor_descriptor(base, [n, HEAD_D], [stride, 1], [BLOCK, HEAD_D])
    return src


@triton.jit
def load_block(src, start, offs, stride, offs_d, n, MASKED: tl.constexpr, TMA: tl.constexpr):
    """[len(offs), D] rows ``offs = start + arange`` of ``rows_source``'s source; rows >= n read as 0 when MASKED
    (always, through a descriptor)."""
    return src.load([start, 0]) if TMA else load_rows(src, offs, stride, offs_d, n, MASKED)


@triton.jit
def load_rows(base, offs, stride, offs_d, n, MASKED: tl.constexpr):
    """[len(offs), D] tile of rows ``offs`` (row stride ``stride``); rows >= n read as 0 when MASKED."""
    ptrs = base + offs[:, None] * stride + offs_d[None, :]
    return tl.load(ptrs, mask=offs[:, None] < n, other=0.0) if MASKED else tl.load(ptrs)


@triton.jit
def load_vec(base, offs, n, other, MASKED: tl.constexpr):
    """Vector at ``offs``; entries >= n read as ``other`` when MASKED."""
    return tl.load(base + offs, mask=offs < n, other=other) if MASKED else tl.load(base + offs)


@triton.jit
def load_keep(kpm_base, offs_n, S, HAS_PAD: tl.constexpr, MASKED: tl.constexpr):
    """Bool [len(offs_n)]: key is real (the padding vector with HAS_PAD, else just j < S)."""
    keep = offs_n < S
    if HAS_PAD:
        keep = load_vec(kpm_base, offs_n, S, 0, MASKED) != 0
    return keep


@triton.jit
def tile_mask(r, j, keep, T, S, OFF, W, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr,
              MASKED: tl.constexpr):  # fmt: skip
    """Bool tile: query row r may attend key j (index tensors broadcast against each other, either orientation);
    ``keep`` is the key padding broadcast like j. Interior tiles (not MASKED) need only the padding."""
    if MASKED:
        ok = (j < S) & (r < T)
        pos = r + OFF
        if CAUSAL:
            ok = ok & (j <= pos)
        if HAS_WINDOW:
            ok = ok & (j > pos - W)
            if not CAUSAL:
                ok = ok & (j < pos + W)
        if HAS_PAD:
            ok = ok & keep
    else:
        ok = keep & (r >= 0)
    return ok


@triton.jit
def row_scores(q, k, qk_scale, kpm_base, offs_m, offs_n, T, S, OFF, W, CAUSAL: tl.constexpr,
               HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """Base-2 scores [BM, BN] of a query block against a key block, -inf where a query may not attend (the
    forward and dQ passes, query-major). Interior tiles without padding (not MASKED, not HAS_PAD) skip the mask."""
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if MASKED or HAS_PAD:
        keep = load_keep(kpm_base, offs_n, S, HAS_PAD, MASKED)
        ok = tile_mask(offs_m[:, None], offs_n[None, :], keep[None, :], T, S, OFF, W, CAUSAL, HAS_WINDOW, HAS_PAD,
                       MASKED)  # fmt: skip
        s = tl.where(ok, s, float("-inf"))
    return s
