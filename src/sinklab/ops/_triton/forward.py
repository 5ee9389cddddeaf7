"""The forward kernel of every variant, and the forward-shaped passes (clipped's lse pass and backward delta pass).

What a tile contributes, by FAMILY (``tiles.py``; ``lse`` is the per-row statistic, stored in base 2):
  SOFTMAX: running max ``m`` and sum ``l`` seeded by SLOT; lse = m + log2 l.
  SOFTPICK: p = e^{s-m} - e^{-m}, m clamped >= 0; numerator relu(p), denominator |p|, out = num / (den + eps e^{-m});
    lse = log2 of the true denominator, so P = exp2(s - lse) = e^x / den and the weight is relu(P - exp2(-lse)).
  CLIPPED: LSE_PASS writes the softmax lse, then OUT_PASS computes a = clip((zeta - gamma) P + gamma, 0, 1);
    DELTA_PASS (backward) accumulates delta' = (zeta - gamma) rowsum(P [0 < y < 1] dP).
  SIGMOID: a = sigmoid(x + b), no normalizer, no lse.
"""

from __future__ import annotations

import triton
import triton.language as tl

from sinklab.ops._triton.tiles import (
    CLIPPED,
    DELTA_PASS,
    KV_SLOT,
    LOG2E,
    LOGIT_SLOT,
    LSE_PASS,
    NO_SLOT,
    OUT_PASS,
    SIGMOID,
    SOFTMAX,
    SOFTPICK,
    key_blocks,
    load_block,
    load_rows,
    row_scores,
    rows_source,
    segment,
)


@triton.jit
def attn_fwd(
    Q, K, V, O, LSE, DO, DELTA, KPM, SINK, KB, VB, BIAS,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot, skpm,
    H, G, T, S, OFF, W, qk_scale, p0, p1,
    FAMILY: tl.constexpr, SLOT: tl.constexpr, PASS: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """One block of query rows of one head: out [BLOCK_M, D] and lse (OUT_PASS), lse only (LSE_PASS), or delta'
    (DELTA_PASS, reading DO [B, H, T, D] through the O stride arguments, which the caller sets to dO's strides).
    p0, p1: softpick's eps; clipped's gamma and zeta. TMA: q, k, v through tensor descriptors."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # the longest causal rows first
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    row_ok = offs_m < T
    q_src = rows_source(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, T, sqt, BLOCK_M, HEAD_D, TMA)
    q = load_block(q_src, start_m, offs_m, sqt, offs_d, T, True, TMA)  # [BM, D]
    k_src = rows_source(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh, S, skt, BLOCK_N, HEAD_D, TMA)
    v_src = rows_source(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh, S, svt, BLOCK_N, HEAD_D, TMA)
    kpm_base = KPM + b.to(tl.int64) * skpm
    o_base = b.to(tl.int64) * sob + h.to(tl.int64) * soh
    row_offs = bh.to(tl.int64) * T + offs_m
    acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_r = m_i + float("-inf")  # KV_SLOT: max over the real keys only (a row with none is padding: zeros)
    lse = m_i
    do = q
    b2 = 0.0
    if FAMILY == SOFTMAX:
        if SLOT == NO_SLOT:
            m_i = m_i + float("-inf")
        elif SLOT == LOGIT_SLOT:
            m_i = m_i + tl.load(SINK + h) * LOG2E
            l_i = l_i + 1.0
        else:
            kb = tl.load(KB + h * HEAD_D + offs_d)
            vb = tl.load(VB + h * HEAD_D + offs_d)
            m_i = tl.sum(q.to(tl.float32) * kb[None, :], 1) * qk_scale + tl.load(SINK + h) * LOG2E
            l_i = l_i + 1.0
            acc = acc + vb[None, :]
    elif FAMILY == CLIPPED:
        lse = tl.load(LSE + row_offs, mask=row_ok, other=float("inf"))
        if PASS == DELTA_PASS:
            do = load_rows(DO + o_base, offs_m, sot, offs_d, T, True)
    elif FAMILY == SIGMOID:
        b2 = tl.load(BIAS + h) * LOG2E

    a0, a1, b0, b1, hi = key_blocks(start_m, T, S, OFF, W, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    for SEG in tl.static_range(3):
        if SEG != 0 or HAS_WINDOW:  # without a window the leading edge is empty
            lo, end = segment(SEG, a0, a1, b0, b1, hi)
            for start_n in range(lo, end, BLOCK_N):
                offs_n = start_n + tl.arange(0, BLOCK_N)
                k = load_block(k_src, start_n, offs_n, skt, offs_d, S, SEG != 1, TMA)
                s = row_scores(
                    q, k, qk_scale, kpm_base, offs_m, offs_n, T, S, OFF, W, CAUSAL, HAS_WINDOW, HAS_PAD, SEG != 1
                )  # fmt: skip  [BM, BN]
                if PASS != LSE_PASS:
                    v = load_block(v_src, start_n, offs_n, svt, offs_d, S, SEG != 1, TMA)
                if FAMILY == SOFTMAX:
                    m_blk = tl.max(s, 1)
                    if SLOT == KV_SLOT:  # the bias slot counts only for rows that see a real key
                        m_r = tl.maximum(m_r, m_blk)
                    m_new = tl.maximum(m_i, m_blk)
                    m_use = m_new
                    if SEG != 1 or HAS_PAD:  # a row with no key yet: exp2(-inf - 0) = 0, not NaN
                        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
                    p = tl.math.exp2(s - m_use[:, None])
                    alpha = tl.math.exp2(m_i - m_use)
                    l_i = l_i * alpha + tl.sum(p, 1)
                    if PASS == OUT_PASS:
                        acc = acc * alpha[:, None]
                        acc = tl.dot(p.to(v.dtype), v, acc)
                    m_i = m_new
                elif FAMILY == SOFTPICK:
                    m_new = tl.maximum(m_i, tl.max(s, 1))
                    e0 = tl.math.exp2(-m_new)
                    d = tl.math.exp2(s - m_new[:, None]) - e0[:, None]
                    num = tl.where(s > 0, d, 0.0)
                    den = tl.abs(d)
                    if SEG != 1 or HAS_PAD:  # a masked key (score -inf) adds nothing to the denominator
                        den = tl.where(s != float("-inf"), den, 0.0)
                    alpha = tl.math.exp2(m_i - m_new)
                    l_i = l_i * alpha + tl.sum(den, 1)
                    acc = acc * alpha[:, None]
                    acc = tl.dot(num.to(v.dtype), v, acc)
                    m_i = m_new
                elif FAMILY == CLIPPED:
                    p = tl.math.exp2(s - lse[:, None])
                    y = (p1 - p0) * p + p0
                    if PASS == OUT_PASS:
                        a = tl.minimum(tl.maximum(y, 0.0), 1.0)
                        if SEG != 1 or HAS_PAD:  # clip(gamma) > 0 must not reach a masked key
                            a = tl.where(s != float("-inf"), a, 0.0)
                        acc = tl.dot(a.to(v.dtype), v, acc)
                    else:  # DELTA_PASS
                        dp = tl.dot(do, tl.trans(v))
                        l_i += tl.sum(tl.where((y > 0.0) & (y < 1.0), p * dp, 0.0), 1)
                else:  # SIGMOID
                    a = 1.0 / (1.0 + tl.math.exp2(-(s + b2)))
                    acc = tl.dot(a.to(v.dtype), v, acc)

    if PASS == DELTA_PASS:
        tl.store(DELTA + row_offs, (p1 - p0) * l_i, mask=row_ok)
    elif PASS == LSE_PASS:
        tl.store(LSE + row_offs, tl.where(l_i == 0.0, float("inf"), m_i + tl.math.log2(l_i)), mask=row_ok)
    else:
        if FAMILY == SOFTMAX:
            empty = l_i == 0.0
            if SLOT == KV_SLOT:
                empty = m_r == float("-inf")
            acc = tl.where(empty[:, None], 0.0, acc / tl.where(empty, 1.0, l_i)[:, None])
            tl.store(LSE + row_offs, tl.where(empty, float("inf"), m_i + tl.math.log2(l_i)), mask=row_ok)
        elif FAMILY == SOFTPICK:
            den = l_i + p0 * tl.math.exp2(-m_i)
            empty = den == 0.0
            acc = acc / tl.where(empty, 1.0, den)[:, None]
            tl.store(LSE + row_offs, tl.where(empty, float("inf"), m_i + tl.math.log2(den)), mask=row_ok)
        o_ptrs = O + o_base + offs_m[:, None] * sot + offs_d[None, :]
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None])
