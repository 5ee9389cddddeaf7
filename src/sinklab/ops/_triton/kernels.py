"""One flash-attention kernel template for every sinklab variant; the variant is a compile-time constant.

Layout: q [B, H, T, D], k/v [B, Hkv, S, D] (GQA: query head h reads KV head h // G), last dim contiguous.
Scores are kept in base-2 units, s = q.k * scale * log2(e), so every exponential is an ``exp2``.

Masking (bottom-right alignment, as ``sinklab.ops.masks``): query row r sits at key position ``r + OFF``
with ``OFF = S - T``; causal keeps j <= pos, a window W adds j > pos - W (and j < pos + W without causality),
a key-padding vector removes keys. Each program visits only the key (or query) blocks that can be reached and
splits them into masked edge blocks and unmasked interior blocks (``_split``), so the interior runs with no
element-wise mask at all.

MODE (what a tile contributes; ``lse`` means the per-row statistic stored in base 2):
  0 softmax family: running max ``m`` and sum ``l`` seeded by SEED (0: m=-inf, l=0; 1: the sink logit,
    m=s_h, l=1 (softmax1 = sink 0, gpt-oss); 2: an explicit key/value bias, m=q.k_b, l=1, acc=v_b, Sun et al.
    2024); lse = m + log2 l; backward dS = P (dP - delta), delta = rowsum(dO * O).
  1 softpick (Zuhri et al. 2025): p = e^{s-m} - e^{-m}, m clamped >= 0; numerator relu(p), denominator |p|,
    out = num / (den + eps e^{-m}); lse = log2 of the true denominator, so P = exp2(s - lse) = e^x / den and
    dS = P ([x > 0] dP - sign(x) delta).
  2 clipped softmax (Bondarenko et al. 2023): needs the softmax normalizer first (PASS 1 writes only lse), then
    a = clip((zeta - gamma) P + gamma, 0, 1) (PASS 0); backward needs delta' = (zeta - gamma) rowsum(P [0<y<1] dP)
    (PASS 2, a pass over the keys like the forward) and dS = P ((zeta - gamma)[0<y<1] dP - delta').
  3 sigmoid attention (Ramapuram et al. 2024, FlashSigmoid): a = sigmoid(x + b), no normalizer, no lse;
    dS = dP a (1 - a); the bias gradient is the sum of dS (per row here, summed by the caller).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _split(lo, hi, full_lo, full_hi, BLOCK: tl.constexpr):
    """Blocks of BLOCK from ``lo`` (aligned down) to ``hi``: masked [a0, a1), interior [b0, b1), masked [b1, hi)."""
    a0 = (lo // BLOCK) * BLOCK
    b0 = tl.maximum(a0, ((full_lo + BLOCK - 1) // BLOCK) * BLOCK)
    b1 = b0 + (tl.maximum(full_hi - b0, 0) // BLOCK) * BLOCK
    a1 = tl.minimum(b0, hi)
    return a0, a1, b0, b1


@triton.jit
def _key_blocks(
    start_m, T, S, OFF, W, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr
):
    """Key blocks seen by query rows [start_m, start_m + BLOCK_M): see ``_split``; returns (..., hi)."""
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
def _query_blocks(
    start_n, T, S, OFF, W, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr
):
    """Query blocks that see keys [start_n, start_n + BLOCK_N): see ``_split``; returns (..., hi)."""
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
def _allowed(r, j, T, S, OFF, W, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Bool tile: query row r (broadcast) may attend key j (broadcast), before key padding."""
    pos = r + OFF
    ok = (j < S) & (r < T)
    if CAUSAL:
        ok = ok & (j <= pos)
    if HAS_WINDOW:
        ok = ok & (j > pos - W)
        if not CAUSAL:
            ok = ok & (j < pos + W)
    return ok


# ---------------------------------------------------------------------------------------------------------------
# forward (and the forward-shaped passes: clipped's lse-only pass and its backward delta pass)
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_loop(
    acc,
    l_i,
    m_i,
    m_r,
    q,
    do,
    lse,
    k_base,
    v_base,
    sks,
    svs,
    kpm_base,
    offs_m,
    offs_d,
    lo,
    hi,
    T,
    S,
    OFF,
    W,
    qk_scale,
    b2,
    p0,
    p1,
    MODE: tl.constexpr,
    SEED: tl.constexpr,
    PASS: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_PAD: tl.constexpr,
    MASKED: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASKED:
            k = tl.load(k_base + offs_n[:, None] * sks + offs_d[None, :], mask=offs_n[:, None] < S, other=0.0)
        else:
            k = tl.load(k_base + offs_n[:, None] * sks + offs_d[None, :])
        s = tl.dot(q, tl.trans(k)) * qk_scale  # [BM, BN]
        if MASKED or HAS_PAD:
            if MASKED:
                ok = _allowed(offs_m[:, None], offs_n[None, :], T, S, OFF, W, CAUSAL, HAS_WINDOW)
                if HAS_PAD:
                    kp = tl.load(kpm_base + offs_n, mask=offs_n < S, other=0) != 0
                    ok = ok & kp[None, :]
            else:
                ok = (tl.load(kpm_base + offs_n) != 0)[None, :] & (offs_m[:, None] >= 0)
            s = tl.where(ok, s, float("-inf"))
        if PASS != 1:
            if MASKED:
                v = tl.load(v_base + offs_n[:, None] * svs + offs_d[None, :], mask=offs_n[:, None] < S, other=0.0)
            else:
                v = tl.load(v_base + offs_n[:, None] * svs + offs_d[None, :])
        if MODE == 0:
            m_blk = tl.max(s, 1)
            if SEED == 2:  # the bias slot counts only for rows that see a real key
                m_r = tl.maximum(m_r, m_blk)
            m_new = tl.maximum(m_i, m_blk)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new) if MASKED or HAS_PAD else m_new
            p = tl.math.exp2(s - m_use[:, None])
            alpha = tl.math.exp2(m_i - m_use)
            l_i = l_i * alpha + tl.sum(p, 1)
            if PASS == 0:
                acc = acc * alpha[:, None]
                acc = tl.dot(p.to(v.dtype), v, acc)
            m_i = m_new
        elif MODE == 1:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            e0 = tl.math.exp2(-m_new)
            d = tl.math.exp2(s - m_new[:, None]) - e0[:, None]
            num = tl.where(s > 0, d, 0.0)
            den = tl.where(ok, tl.abs(d), 0.0) if MASKED or HAS_PAD else tl.abs(d)
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(den, 1)
            acc = acc * alpha[:, None]
            acc = tl.dot(num.to(v.dtype), v, acc)
            m_i = m_new
        elif MODE == 2:
            p = tl.math.exp2(s - lse[:, None])
            y = (p1 - p0) * p + p0
            if PASS == 0:
                a = tl.minimum(tl.maximum(y, 0.0), 1.0)
                if MASKED or HAS_PAD:
                    a = tl.where(ok, a, 0.0)
                acc = tl.dot(a.to(v.dtype), v, acc)
            else:  # PASS 2: delta' = (zeta - gamma) * rowsum(P [0 < y < 1] dP)
                dp = tl.dot(do, tl.trans(v))
                l_i += tl.sum(tl.where((y > 0.0) & (y < 1.0), p * dp, 0.0), 1)
        else:
            a = 1.0 / (1.0 + tl.math.exp2(-(s + b2)))
            acc = tl.dot(a.to(v.dtype), v, acc)
    return acc, l_i, m_i, m_r


@triton.jit
def attn_fwd(
    Q,
    K,
    V,
    O,
    LSE,
    DO,
    DELTA,
    KPM,
    SINK,
    KB,
    VB,
    BIAS,
    sqb,
    sqh,
    sqt,
    skb,
    skh,
    sks,
    svb,
    svh,
    svs,
    sob,
    soh,
    sot,
    skpm,
    H,
    G,
    T,
    S,
    OFF,
    W,
    qk_scale,
    p0,
    p1,
    MODE: tl.constexpr,
    SEED: tl.constexpr,
    PASS: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_D: tl.constexpr,
):
    """PASS 0: out and lse; PASS 1: lse only (MODE 0); PASS 2: clipped's delta' (MODE 2, reads DO [B, H, T, D]
    through the O stride arguments, which the caller sets to dO's strides)."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # the longest causal rows first
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    row_ok = offs_m < T
    q = tl.load(
        Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m[:, None] * sqt + offs_d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    kpm_base = KPM + b.to(tl.int64) * skpm
    o_offs = b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_m[:, None] * sot + offs_d[None, :]
    row_offs = bh.to(tl.int64) * T + offs_m
    acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_r = m_i + float("-inf")
    lse = m_i
    do = q
    b2 = 0.0
    if MODE == 0:
        if SEED == 0:
            m_i = m_i + float("-inf")
        elif SEED == 1:
            m_i = m_i + tl.load(SINK + h) * 1.4426950408889634
            l_i = l_i + 1.0
        else:
            kb = tl.load(KB + h * HEAD_D + offs_d)
            vb = tl.load(VB + h * HEAD_D + offs_d)
            m_i = tl.sum(q.to(tl.float32) * kb[None, :], 1) * qk_scale + tl.load(SINK + h) * 1.4426950408889634
            l_i = l_i + 1.0
            acc = acc + vb[None, :]
    elif MODE == 2:
        lse = tl.load(LSE + row_offs, mask=row_ok, other=float("inf"))
        if PASS == 2:
            do = tl.load(DO + o_offs, mask=row_ok[:, None], other=0.0)
    elif MODE == 3:
        b2 = tl.load(BIAS + h) * 1.4426950408889634

    a0, a1, b0, b1, hi = _key_blocks(start_m, T, S, OFF, W, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    if HAS_WINDOW:
        acc, l_i, m_i, m_r = _fwd_loop(
            acc,
            l_i,
            m_i,
            m_r,
            q,
            do,
            lse,
            k_base,
            v_base,
            sks,
            svs,
            kpm_base,
            offs_m,
            offs_d,
            a0,
            a1,
            T,
            S,
            OFF,
            W,
            qk_scale,
            b2,
            p0,
            p1,
            MODE,
            SEED,
            PASS,
            CAUSAL,
            HAS_WINDOW,
            HAS_PAD,
            True,
            BLOCK_N,
        )
    acc, l_i, m_i, m_r = _fwd_loop(
        acc,
        l_i,
        m_i,
        m_r,
        q,
        do,
        lse,
        k_base,
        v_base,
        sks,
        svs,
        kpm_base,
        offs_m,
        offs_d,
        b0,
        b1,
        T,
        S,
        OFF,
        W,
        qk_scale,
        b2,
        p0,
        p1,
        MODE,
        SEED,
        PASS,
        CAUSAL,
        HAS_WINDOW,
        HAS_PAD,
        False,
        BLOCK_N,
    )
    acc, l_i, m_i, m_r = _fwd_loop(
        acc,
        l_i,
        m_i,
        m_r,
        q,
        do,
        lse,
        k_base,
        v_base,
        sks,
        svs,
        kpm_base,
        offs_m,
        offs_d,
        b1,
        hi,
        T,
        S,
        OFF,
        W,
        qk_scale,
        b2,
        p0,
        p1,
        MODE,
        SEED,
        PASS,
        CAUSAL,
        HAS_WINDOW,
        HAS_PAD,
        True,
        BLOCK_N,
    )

    if PASS == 2:
        tl.store(DELTA + row_offs, (p1 - p0) * l_i, mask=row_ok)
    elif PASS == 1:
        tl.store(LSE + row_offs, tl.where(l_i == 0.0, float("inf"), m_i + tl.math.log2(l_i)), mask=row_ok)
    else:
        if MODE == 0:
            empty = l_i == 0.0
            if SEED == 2:
                empty = m_r == float("-inf")
            acc = tl.where(empty[:, None], 0.0, acc / tl.where(empty, 1.0, l_i)[:, None])
            tl.store(LSE + row_offs, tl.where(empty, float("inf"), m_i + tl.math.log2(l_i)), mask=row_ok)
        elif MODE == 1:
            den = l_i + p0 * tl.math.exp2(-m_i)
            empty = den == 0.0
            acc = acc / tl.where(empty, 1.0, den)[:, None]
            tl.store(LSE + row_offs, tl.where(empty, float("inf"), m_i + tl.math.log2(den)), mask=row_ok)
        tl.store(O + o_offs, acc.to(O.dtype.element_ty), mask=row_ok[:, None])


# ---------------------------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def bwd_preprocess(
    Q,
    O,
    DO,
    LSE,
    DELTA,
    SINK,
    KB,
    VB,
    AUX1,
    AUX2,
    sqb,
    sqh,
    sqt,
    sob,
    soh,
    sot,
    sdb,
    sdh,
    sdt,
    H,
    T,
    qk_scale,
    SEED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HEAD_D: tl.constexpr,
):
    """delta = rowsum(dO * O); SEED 1: AUX1 = p_sink * delta (d sink_h = -sum AUX1); SEED 2: AUX1 = dS of the
    bias key, p_b (dO.v_b - delta), AUX2 = p_b (dv_b = sum p_b dO)."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    row_ok = offs_m < T
    rows = offs_m[:, None]
    o = tl.load(
        O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + rows * sot + offs_d[None, :], mask=row_ok[:, None], other=0.0
    ).to(tl.float32)
    do = tl.load(
        DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + rows * sdt + offs_d[None, :], mask=row_ok[:, None], other=0.0
    ).to(tl.float32)
    delta = tl.sum(o * do, 1)
    row_offs = bh.to(tl.int64) * T + offs_m
    tl.store(DELTA + row_offs, delta, mask=row_ok)
    if SEED == 1:
        lse = tl.load(LSE + row_offs, mask=row_ok, other=float("inf"))
        p = tl.math.exp2(tl.load(SINK + h) * 1.4426950408889634 - lse)
        tl.store(AUX1 + row_offs, p * delta, mask=row_ok)
    elif SEED == 2:
        lse = tl.load(LSE + row_offs, mask=row_ok, other=float("inf"))
        q = tl.load(
            Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + rows * sqt + offs_d[None, :],
            mask=row_ok[:, None],
            other=0.0,
        ).to(tl.float32)
        kb = tl.load(KB + h * HEAD_D + offs_d)
        vb = tl.load(VB + h * HEAD_D + offs_d)
        p = tl.math.exp2(tl.sum(q * kb[None, :], 1) * qk_scale + tl.load(SINK + h) * 1.4426950408889634 - lse)
        tl.store(AUX1 + row_offs, p * (tl.sum(do * vb[None, :], 1) - delta), mask=row_ok)
        tl.store(AUX2 + row_offs, p, mask=row_ok)


@triton.jit
def _dkdv_loop(
    dk,
    dv,
    k,
    v,
    kp,
    q_base,
    do_base,
    lse_base,
    delta_base,
    sqt,
    sdt,
    offs_n,
    offs_d,
    lo,
    hi,
    T,
    S,
    OFF,
    W,
    qk_scale,
    b2,
    p0,
    p1,
    MODE: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_PAD: tl.constexpr,
    MASKED: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        if MASKED:
            rmask = offs_m < T
            q = tl.load(q_base + offs_m[:, None] * sqt + offs_d[None, :], mask=rmask[:, None], other=0.0)
            do = tl.load(do_base + offs_m[:, None] * sdt + offs_d[None, :], mask=rmask[:, None], other=0.0)
            if MODE != 3:
                lse = tl.load(lse_base + offs_m, mask=rmask, other=float("inf"))
                delta = tl.load(delta_base + offs_m, mask=rmask, other=0.0)
        else:
            q = tl.load(q_base + offs_m[:, None] * sqt + offs_d[None, :])
            do = tl.load(do_base + offs_m[:, None] * sdt + offs_d[None, :])
            if MODE != 3:
                lse = tl.load(lse_base + offs_m)
                delta = tl.load(delta_base + offs_m)
        sT = tl.dot(k, tl.trans(q)) * qk_scale  # [BN, BM]
        if MASKED or HAS_PAD:
            if MASKED:
                ok = _allowed(offs_m[None, :], offs_n[:, None], T, S, OFF, W, CAUSAL, HAS_WINDOW)
                if HAS_PAD:
                    ok = ok & kp[:, None]
            else:
                ok = kp[:, None] & (offs_m[None, :] >= 0)
            sT = tl.where(ok, sT, float("-inf"))
        if MODE == 3:
            aT = 1.0 / (1.0 + tl.math.exp2(-(sT + b2)))
        else:
            pT = tl.math.exp2(sT - lse[None, :])
        if MODE == 0:
            aT = pT
        elif MODE == 1:
            pos = sT > 0
            aT = tl.where(pos, pT - tl.math.exp2(-lse)[None, :], 0.0)
        elif MODE == 2:
            y = (p1 - p0) * pT + p0
            aT = tl.minimum(tl.maximum(y, 0.0), 1.0)
            if MASKED or HAS_PAD:
                aT = tl.where(ok, aT, 0.0)
        dv = tl.dot(aT.to(do.dtype), do, dv)
        dpT = tl.dot(v, tl.trans(do))  # [BN, BM]
        if MODE == 0:
            dsT = pT * (dpT - delta[None, :])
        elif MODE == 1:
            sgn = pos.to(tl.float32) - (sT < 0).to(tl.float32)
            dsT = pT * (tl.where(pos, dpT, 0.0) - sgn * delta[None, :])
        elif MODE == 2:
            dsT = pT * (tl.where((y > 0.0) & (y < 1.0), (p1 - p0) * dpT, 0.0) - delta[None, :])
        else:
            dsT = dpT * aT * (1.0 - aT)
        dk = tl.dot(dsT.to(q.dtype), q, dk)
    return dk, dv


@triton.jit
def attn_bwd_dkdv(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    KPM,
    BIAS,
    sqb,
    sqh,
    sqt,
    skb,
    skh,
    sks,
    svb,
    svh,
    svs,
    sdb,
    sdh,
    sdt,
    sdkb,
    sdkh,
    sdks,
    skpm,
    H,
    G,
    T,
    S,
    OFF,
    W,
    scale,
    qk_scale,
    p0,
    p1,
    MODE: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_D: tl.constexpr,
):
    """dK, dV for one block of keys of one KV head, summed over the G query heads that share it (GQA)."""
    Hkv = H // G
    bhk = tl.program_id(1)
    b = bhk // Hkv
    hk = bhk % Hkv
    start_n = tl.program_id(0) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    col_ok = offs_n < S
    k = tl.load(
        K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + offs_n[:, None] * sks + offs_d[None, :],
        mask=col_ok[:, None],
        other=0.0,
    )
    v = tl.load(
        V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh + offs_n[:, None] * svs + offs_d[None, :],
        mask=col_ok[:, None],
        other=0.0,
    )
    kp = col_ok
    if HAS_PAD:
        kp = tl.load(KPM + b.to(tl.int64) * skpm + offs_n, mask=col_ok, other=0) != 0
    dk = tl.zeros([BLOCK_N, HEAD_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_D], dtype=tl.float32)
    a0, a1, b0, b1, hi = _query_blocks(start_n, T, S, OFF, W, BLOCK_N, BLOCK_M, CAUSAL, HAS_WINDOW)
    for g in range(0, G):
        h = hk * G + g
        q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        do_base = DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
        lse_base = LSE + (b * H + h).to(tl.int64) * T
        delta_base = DELTA + (b * H + h).to(tl.int64) * T
        b2 = 0.0
        if MODE == 3:
            b2 = tl.load(BIAS + h) * 1.4426950408889634
        if CAUSAL or HAS_WINDOW:
            dk, dv = _dkdv_loop(
                dk,
                dv,
                k,
                v,
                kp,
                q_base,
                do_base,
                lse_base,
                delta_base,
                sqt,
                sdt,
                offs_n,
                offs_d,
                a0,
                a1,
                T,
                S,
                OFF,
                W,
                qk_scale,
                b2,
                p0,
                p1,
                MODE,
                CAUSAL,
                HAS_WINDOW,
                HAS_PAD,
                True,
                BLOCK_M,
            )
        dk, dv = _dkdv_loop(
            dk,
            dv,
            k,
            v,
            kp,
            q_base,
            do_base,
            lse_base,
            delta_base,
            sqt,
            sdt,
            offs_n,
            offs_d,
            b0,
            b1,
            T,
            S,
            OFF,
            W,
            qk_scale,
            b2,
            p0,
            p1,
            MODE,
            CAUSAL,
            HAS_WINDOW,
            HAS_PAD,
            False,
            BLOCK_M,
        )
        dk, dv = _dkdv_loop(
            dk,
            dv,
            k,
            v,
            kp,
            q_base,
            do_base,
            lse_base,
            delta_base,
            sqt,
            sdt,
            offs_n,
            offs_d,
            b1,
            hi,
            T,
            S,
            OFF,
            W,
            qk_scale,
            b2,
            p0,
            p1,
            MODE,
            CAUSAL,
            HAS_WINDOW,
            HAS_PAD,
            True,
            BLOCK_M,
        )
    out_offs = b.to(tl.int64) * sdkb + hk.to(tl.int64) * sdkh + offs_n[:, None] * sdks + offs_d[None, :]
    tl.store(DK + out_offs, (dk * scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + out_offs, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _dq_loop(
    dq,
    dbias,
    q,
    do,
    lse,
    delta,
    k_base,
    v_base,
    sks,
    svs,
    kpm_base,
    offs_m,
    offs_d,
    lo,
    hi,
    T,
    S,
    OFF,
    W,
    qk_scale,
    b2,
    p0,
    p1,
    MODE: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_PAD: tl.constexpr,
    MASKED: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASKED:
            kmask = offs_n[:, None] < S
            k = tl.load(k_base + offs_n[:, None] * sks + offs_d[None, :], mask=kmask, other=0.0)
            v = tl.load(v_base + offs_n[:, None] * svs + offs_d[None, :], mask=kmask, other=0.0)
        else:
            k = tl.load(k_base + offs_n[:, None] * sks + offs_d[None, :])
            v = tl.load(v_base + offs_n[:, None] * svs + offs_d[None, :])
        s = tl.dot(q, tl.trans(k)) * qk_scale  # [BM, BN]
        if MASKED or HAS_PAD:
            if MASKED:
                ok = _allowed(offs_m[:, None], offs_n[None, :], T, S, OFF, W, CAUSAL, HAS_WINDOW)
                if HAS_PAD:
                    kp = tl.load(kpm_base + offs_n, mask=offs_n < S, other=0) != 0
                    ok = ok & kp[None, :]
            else:
                ok = (tl.load(kpm_base + offs_n) != 0)[None, :] & (offs_m[:, None] >= 0)
            s = tl.where(ok, s, float("-inf"))
        dp = tl.dot(do, tl.trans(v))
        if MODE == 0:
            ds = tl.math.exp2(s - lse[:, None]) * (dp - delta[:, None])
        elif MODE == 1:
            pos = s > 0
            sgn = pos.to(tl.float32) - (s < 0).to(tl.float32)
            ds = tl.math.exp2(s - lse[:, None]) * (tl.where(pos, dp, 0.0) - sgn * delta[:, None])
        elif MODE == 2:
            p = tl.math.exp2(s - lse[:, None])
            y = (p1 - p0) * p + p0
            ds = p * (tl.where((y > 0.0) & (y < 1.0), (p1 - p0) * dp, 0.0) - delta[:, None])
        else:
            a = 1.0 / (1.0 + tl.math.exp2(-(s + b2)))
            ds = dp * a * (1.0 - a)
            dbias += tl.sum(ds, 1)
        dq = tl.dot(ds.to(k.dtype), k, dq)
    return dq, dbias


@triton.jit
def attn_bwd_dq(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    KPM,
    KB,
    AUX1,
    BIAS,
    DBIAS,
    sqb,
    sqh,
    sqt,
    skb,
    skh,
    sks,
    svb,
    svh,
    svs,
    sdb,
    sdh,
    sdt,
    sdqb,
    sdqh,
    sdqt,
    skpm,
    H,
    G,
    T,
    S,
    OFF,
    W,
    scale,
    qk_scale,
    p0,
    p1,
    MODE: tl.constexpr,
    SEED: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_D: tl.constexpr,
):
    """dQ for one block of query rows; SEED 2 adds the bias key's term, MODE 3 writes per-row bias gradients."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    row_ok = offs_m < T
    q = tl.load(
        Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m[:, None] * sqt + offs_d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    do = tl.load(
        DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + offs_m[:, None] * sdt + offs_d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    row_offs = bh.to(tl.int64) * T + offs_m
    lse = tl.zeros([BLOCK_M], dtype=tl.float32)
    delta = lse
    b2 = 0.0
    if MODE == 3:
        b2 = tl.load(BIAS + h) * 1.4426950408889634
    else:
        lse = tl.load(LSE + row_offs, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + row_offs, mask=row_ok, other=0.0)
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    kpm_base = KPM + b.to(tl.int64) * skpm
    dq = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_M], dtype=tl.float32)
    a0, a1, b0, b1, hi = _key_blocks(start_m, T, S, OFF, W, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    if HAS_WINDOW:
        dq, dbias = _dq_loop(
            dq,
            dbias,
            q,
            do,
            lse,
            delta,
            k_base,
            v_base,
            sks,
            svs,
            kpm_base,
            offs_m,
            offs_d,
            a0,
            a1,
            T,
            S,
            OFF,
            W,
            qk_scale,
            b2,
            p0,
            p1,
            MODE,
            CAUSAL,
            HAS_WINDOW,
            HAS_PAD,
            True,
            BLOCK_N,
        )
    dq, dbias = _dq_loop(
        dq,
        dbias,
        q,
        do,
        lse,
        delta,
        k_base,
        v_base,
        sks,
        svs,
        kpm_base,
        offs_m,
        offs_d,
        b0,
        b1,
        T,
        S,
        OFF,
        W,
        qk_scale,
        b2,
        p0,
        p1,
        MODE,
        CAUSAL,
        HAS_WINDOW,
        HAS_PAD,
        False,
        BLOCK_N,
    )
    dq, dbias = _dq_loop(
        dq,
        dbias,
        q,
        do,
        lse,
        delta,
        k_base,
        v_base,
        sks,
        svs,
        kpm_base,
        offs_m,
        offs_d,
        b1,
        hi,
        T,
        S,
        OFF,
        W,
        qk_scale,
        b2,
        p0,
        p1,
        MODE,
        CAUSAL,
        HAS_WINDOW,
        HAS_PAD,
        True,
        BLOCK_N,
    )
    dq = dq * scale
    if SEED == 2:
        dsb = tl.load(AUX1 + row_offs, mask=row_ok, other=0.0)
        dq += (scale * dsb)[:, None] * tl.load(KB + h * HEAD_D + offs_d)[None, :]
    if MODE == 3:
        tl.store(DBIAS + row_offs, dbias, mask=row_ok)
    tl.store(
        DQ + b.to(tl.int64) * sdqb + h.to(tl.int64) * sdqh + offs_m[:, None] * sdqt + offs_d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=row_ok[:, None],
    )


# ---------------------------------------------------------------------------------------------------------------
# column sums: the attention mass each key receives, from a stored logsumexp
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _colsum_loop(
    acc,
    k,
    kp,
    q_base,
    lse_base,
    kpm_base,
    sqt,
    offs_n,
    offs_d,
    lo,
    hi,
    T,
    S,
    OFF,
    W,
    qk_scale,
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_PAD: tl.constexpr,
    MASKED: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        if MASKED:
            rmask = offs_m < T
            q = tl.load(q_base + offs_m[:, None] * sqt + offs_d[None, :], mask=rmask[:, None], other=0.0)
            lse = tl.load(lse_base + offs_m, mask=rmask, other=float("inf"))
        else:
            q = tl.load(q_base + offs_m[:, None] * sqt + offs_d[None, :])
            lse = tl.load(lse_base + offs_m)
        pT = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :] * 1.4426950408889634)  # [BN, BM]
        if MASKED or HAS_PAD:
            if MASKED:
                ok = _allowed(offs_m[None, :], offs_n[:, None], T, S, OFF, W, CAUSAL, HAS_WINDOW)
            else:
                ok = offs_m[None, :] >= 0
            if HAS_PAD:  # padded keys, and padded query rows (a query's own token is key r + OFF)
                qv = tl.load(kpm_base + offs_m + OFF, mask=(offs_m < T) & (offs_m + OFF >= 0), other=0) != 0
                ok = ok & kp[:, None] & qv[None, :]
            pT = tl.where(ok, pT, 0.0)
        acc += tl.sum(pT, 1)
    return acc


@triton.jit
def colsum_kernel(
    Q,
    K,
    LSE,
    OUT,
    KPM,
    sqb,
    sqh,
    sqt,
    skb,
    skh,
    sks,
    slb,
    slh,
    slt,
    skpm,
    H,
    G,
    T,
    S,
    OFF,
    W,
    qk_scale,
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_D: tl.constexpr,
):
    """OUT[b, h, j] = sum over allowed valid rows i of exp(s_ij - lse_i), for one block of keys of one head."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G
    start_n = tl.program_id(0) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    col_ok = offs_n < S
    k = tl.load(
        K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + offs_n[:, None] * sks + offs_d[None, :],
        mask=col_ok[:, None],
        other=0.0,
    )
    kpm_base = KPM + b.to(tl.int64) * skpm
    kp = col_ok
    if HAS_PAD:
        kp = tl.load(kpm_base + offs_n, mask=col_ok, other=0) != 0
    q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    lse_base = LSE + b.to(tl.int64) * slb + h.to(tl.int64) * slh
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    a0, a1, b0, b1, hi = _query_blocks(start_n, T, S, OFF, W, BLOCK_N, BLOCK_M, CAUSAL, HAS_WINDOW)
    if CAUSAL or HAS_WINDOW:
        acc = _colsum_loop(
            acc,
            k,
            kp,
            q_base,
            lse_base,
            kpm_base,
            sqt,
            offs_n,
            offs_d,
            a0,
            a1,
            T,
            S,
            OFF,
            W,
            qk_scale,
            CAUSAL,
            HAS_WINDOW,
            HAS_PAD,
            True,
            BLOCK_M,
        )
    acc = _colsum_loop(
        acc,
        k,
        kp,
        q_base,
        lse_base,
        kpm_base,
        sqt,
        offs_n,
        offs_d,
        b0,
        b1,
        T,
        S,
        OFF,
        W,
        qk_scale,
        CAUSAL,
        HAS_WINDOW,
        HAS_PAD,
        False,
        BLOCK_M,
    )
    acc = _colsum_loop(
        acc,
        k,
        kp,
        q_base,
        lse_base,
        kpm_base,
        sqt,
        offs_n,
        offs_d,
        b1,
        hi,
        T,
        S,
        OFF,
        W,
        qk_scale,
        CAUSAL,
        HAS_WINDOW,
        HAS_PAD,
        True,
        BLOCK_M,
    )
    tl.store(OUT + bh.to(tl.int64) * S + offs_n, acc, mask=col_ok)
