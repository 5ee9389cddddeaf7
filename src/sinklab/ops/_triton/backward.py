"""The backward kernels of every variant: the row preprocess, dK/dV per key block, dQ per query block.

dS by FAMILY (``tiles.py``), P = exp2(s - lse) with the forward's base-2 row statistic:
  SOFTMAX: dS = P (dP - delta), delta = rowsum(dO * O).
  SOFTPICK: dS = P ([x > 0] dP - sign(x) delta).
  CLIPPED: dS = P ((zeta - gamma) [0 < y < 1] dP - delta'), delta' from the forward kernel's DELTA_PASS.
  SIGMOID: dS = dP a (1 - a); the bias gradient is the sum of dS (per row here, summed by the caller).

The dK/dV kernel computes both accumulators (PART DKDV) or one of them per launch (DV_ONLY: QK^T and P^T dO;
DK_ONLY: QK^T, V dO^T and dS^T Q), so that two fp32 [BLOCK_N, D] tiles never live together at D = 128.
TMA: the looped-over rows (q and dO, or k and v) through tensor descriptors.
"""

from __future__ import annotations

import triton
import triton.language as tl

from sinklab.ops._triton.tiles import (
    CLIPPED,
    DK_ONLY,
    DV_ONLY,
    KV_SLOT,
    LOG2E,
    LOGIT_SLOT,
    SIGMOID,
    SOFTMAX,
    SOFTPICK,
    key_blocks,
    load_block,
    load_keep,
    load_rows,
    load_vec,
    query_blocks,
    row_scores,
    rows_source,
    segment,
    tile_mask,
)


@triton.jit
def bwd_preprocess(
    Q, O, DO, LSE, DELTA, SINK, KB, VB, AUX1, AUX2,
    sqb, sqh, sqt, sob, soh, sot, sdob, sdoh, sdot,
    H, T, qk_scale,
    SLOT: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_D: tl.constexpr,
):  # fmt: skip
    """delta = rowsum(dO * O); LOGIT_SLOT: AUX1 = p_sink * delta (d sink_h = -sum AUX1); KV_SLOT: AUX1 = dS of the
    bias key, p_b (dO.v_b - delta), AUX2 = p_b (dv_b = sum p_b dO)."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    row_ok = offs_m < T
    o = load_rows(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh, offs_m, sot, offs_d, T, True).to(tl.float32)
    do = load_rows(DO + b.to(tl.int64) * sdob + h.to(tl.int64) * sdoh, offs_m, sdot, offs_d, T, True).to(tl.float32)
    delta = tl.sum(o * do, 1)
    row_offs = bh.to(tl.int64) * T + offs_m
    tl.store(DELTA + row_offs, delta, mask=row_ok)
    if SLOT == LOGIT_SLOT:
        lse = tl.load(LSE + row_offs, mask=row_ok, other=float("inf"))
        p = tl.math.exp2(tl.load(SINK + h) * LOG2E - lse)
        tl.store(AUX1 + row_offs, p * delta, mask=row_ok)
    elif SLOT == KV_SLOT:
        lse = tl.load(LSE + row_offs, mask=row_ok, other=float("inf"))
        q = load_rows(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, offs_m, sqt, offs_d, T, True).to(tl.float32)
        kb = tl.load(KB + h * HEAD_D + offs_d)
        vb = tl.load(VB + h * HEAD_D + offs_d)
        p = tl.math.exp2(tl.sum(q * kb[None, :], 1) * qk_scale + tl.load(SINK + h) * LOG2E - lse)
        tl.store(AUX1 + row_offs, p * (tl.sum(do * vb[None, :], 1) - delta), mask=row_ok)
        tl.store(AUX2 + row_offs, p, mask=row_ok)


@triton.jit
def attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, KPM, BIAS,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdob, sdoh, sdot, sdkb, sdkh, sdkt, skpm,
    H, G, T, S, OFF, W, scale, qk_scale, p0, p1,
    FAMILY: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, PART: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """dK and/or dV (PART) for one block of keys of one KV head, summed over the G query heads that share it."""
    Hkv = H // G
    bhk = tl.program_id(1)
    b = bhk // Hkv
    hk = bhk % Hkv
    start_n = tl.program_id(0) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    col_ok = offs_n < S
    k = load_rows(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh, offs_n, skt, offs_d, S, True)  # [BN, D]
    if PART != DV_ONLY:
        v = load_rows(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh, offs_n, svt, offs_d, S, True)
    keep = load_keep(KPM + b.to(tl.int64) * skpm, offs_n, S, HAS_PAD, True)
    dk = tl.zeros([BLOCK_N, HEAD_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_D], dtype=tl.float32)
    a0, a1, b0, b1, hi = query_blocks(start_n, T, S, OFF, W, BLOCK_N, BLOCK_M, CAUSAL, HAS_WINDOW)
    for g in range(0, G):
        h = hk * G + g
        q_src = rows_source(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, T, sqt, BLOCK_M, HEAD_D, TMA)
        do_src = rows_source(DO + b.to(tl.int64) * sdob + h.to(tl.int64) * sdoh, T, sdot, BLOCK_M, HEAD_D, TMA)
        lse_base = LSE + (b * H + h).to(tl.int64) * T
        delta_base = DELTA + (b * H + h).to(tl.int64) * T
        b2 = 0.0
        if FAMILY == SIGMOID:
            b2 = tl.load(BIAS + h) * LOG2E
        for SEG in tl.static_range(3):
            if SEG != 0 or CAUSAL or HAS_WINDOW:  # full attention has no leading edge
                lo, end = segment(SEG, a0, a1, b0, b1, hi)
                for start_m in range(lo, end, BLOCK_M):
                    offs_m = start_m + tl.arange(0, BLOCK_M)
                    q = load_block(q_src, start_m, offs_m, sqt, offs_d, T, SEG != 1, TMA)
                    do = load_block(do_src, start_m, offs_m, sdot, offs_d, T, SEG != 1, TMA)
                    if FAMILY != SIGMOID:
                        lse = load_vec(lse_base, offs_m, T, float("inf"), SEG != 1)
                        delta = load_vec(delta_base, offs_m, T, 0.0, SEG != 1)
                    sT = tl.dot(k, tl.trans(q)) * qk_scale  # [BN, BM]
                    if SEG != 1 or HAS_PAD:
                        ok = tile_mask(offs_m[None, :], offs_n[:, None], keep[:, None], T, S, OFF, W, CAUSAL,
                                       HAS_WINDOW, HAS_PAD, SEG != 1)  # fmt: skip
                        sT = tl.where(ok, sT, float("-inf"))
                    if FAMILY == SIGMOID:
                        aT = 1.0 / (1.0 + tl.math.exp2(-(sT + b2)))
                    else:
                        pT = tl.math.exp2(sT - lse[None, :])
                    if FAMILY == SOFTMAX:
                        aT = pT
                    elif FAMILY == SOFTPICK:
                        pos = sT > 0
                        aT = tl.where(pos, pT - tl.math.exp2(-lse)[None, :], 0.0)
                    elif FAMILY == CLIPPED:
                        y = (p1 - p0) * pT + p0
                        aT = tl.minimum(tl.maximum(y, 0.0), 1.0)
                        if SEG != 1 or HAS_PAD:
                            aT = tl.where(ok, aT, 0.0)
                    if PART != DK_ONLY:
                        dv = tl.dot(aT.to(do.dtype), do, dv)
                    if PART != DV_ONLY:
                        dpT = tl.dot(v, tl.trans(do))  # [BN, BM]
                        if FAMILY == SOFTMAX:
                            dsT = pT * (dpT - delta[None, :])
                        elif FAMILY == SOFTPICK:
                            sgn = pos.to(tl.float32) - (sT < 0).to(tl.float32)
                            dsT = pT * (tl.where(pos, dpT, 0.0) - sgn * delta[None, :])
                        elif FAMILY == CLIPPED:
                            dsT = pT * (tl.where((y > 0.0) & (y < 1.0), (p1 - p0) * dpT, 0.0) - delta[None, :])
                        else:
                            dsT = dpT * aT * (1.0 - aT)
                        dk = tl.dot(dsT.to(q.dtype), q, dk)
    out_offs = b.to(tl.int64) * sdkb + hk.to(tl.int64) * sdkh + offs_n[:, None] * sdkt + offs_d[None, :]
    if PART != DV_ONLY:
        tl.store(DK + out_offs, (dk * scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    if PART != DK_ONLY:
        tl.store(DV + out_offs, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def attn_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ, KPM, KB, AUX1, BIAS, DBIAS,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdob, sdoh, sdot, sdqb, sdqh, sdqt, skpm,
    H, G, T, S, OFF, W, scale, qk_scale, p0, p1,
    FAMILY: tl.constexpr, SLOT: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """dQ for one block of query rows; KV_SLOT adds the bias key's term, SIGMOID writes per-row bias gradients."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    row_ok = offs_m < T
    q = load_rows(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, offs_m, sqt, offs_d, T, True)  # [BM, D]
    do = load_rows(DO + b.to(tl.int64) * sdob + h.to(tl.int64) * sdoh, offs_m, sdot, offs_d, T, True)
    row_offs = bh.to(tl.int64) * T + offs_m
    lse = tl.zeros([BLOCK_M], dtype=tl.float32)
    delta = lse
    b2 = 0.0
    if FAMILY == SIGMOID:
        b2 = tl.load(BIAS + h) * LOG2E
    else:
        lse = tl.load(LSE + row_offs, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + row_offs, mask=row_ok, other=0.0)
    k_src = rows_source(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh, S, skt, BLOCK_N, HEAD_D, TMA)
    v_src = rows_source(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh, S, svt, BLOCK_N, HEAD_D, TMA)
    kpm_base = KPM + b.to(tl.int64) * skpm
    dq = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_M], dtype=tl.float32)
    a0, a1, b0, b1, hi = key_blocks(start_m, T, S, OFF, W, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    for SEG in tl.static_range(3):
        if SEG != 0 or HAS_WINDOW:  # without a window the leading edge is empty
            lo, end = segment(SEG, a0, a1, b0, b1, hi)
            for start_n in range(lo, end, BLOCK_N):
                offs_n = start_n + tl.arange(0, BLOCK_N)
                k = load_block(k_src, start_n, offs_n, skt, offs_d, S, SEG != 1, TMA)
                v = load_block(v_src, start_n, offs_n, svt, offs_d, S, SEG != 1, TMA)
                s = row_scores(
                    q, k, qk_scale, kpm_base, offs_m, offs_n, T, S, OFF, W, CAUSAL, HAS_WINDOW, HAS_PAD, SEG != 1
                )  # fmt: skip  [BM, BN]
                dp = tl.dot(do, tl.trans(v))
                if FAMILY == SOFTMAX:
                    ds = tl.math.exp2(s - lse[:, None]) * (dp - delta[:, None])
                elif FAMILY == SOFTPICK:
                    pos = s > 0
                    sgn = pos.to(tl.float32) - (s < 0).to(tl.float32)
                    ds = tl.math.exp2(s - lse[:, None]) * (tl.where(pos, dp, 0.0) - sgn * delta[:, None])
                elif FAMILY == CLIPPED:
                    p = tl.math.exp2(s - lse[:, None])
                    y = (p1 - p0) * p + p0
                    ds = p * (tl.where((y > 0.0) & (y < 1.0), (p1 - p0) * dp, 0.0) - delta[:, None])
                else:
                    a = 1.0 / (1.0 + tl.math.exp2(-(s + b2)))
                    ds = dp * a * (1.0 - a)
                    dbias += tl.sum(ds, 1)
                dq = tl.dot(ds.to(k.dtype), k, dq)
    dq = dq * scale
    if SLOT == KV_SLOT:
        dsb = tl.load(AUX1 + row_offs, mask=row_ok, other=0.0)
        dq += (scale * dsb)[:, None] * tl.load(KB + h * HEAD_D + offs_d)[None, :]
    if FAMILY == SIGMOID:
        tl.store(DBIAS + row_offs, dbias, mask=row_ok)
    dq_ptrs = DQ + b.to(tl.int64) * sdqb + h.to(tl.int64) * sdqh + offs_m[:, None] * sdqt + offs_d[None, :]
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])
