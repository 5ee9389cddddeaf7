"""Column sums and entropy of every variant from the forward's row statistic, in one kernel that never stores T x S.

For weights A (the variant's, on the real keys; ``sinklab.ops.stats``) over valid query rows i (VALID [B, T]: a
query whose own token is padding does not count):

    colsum[b, h, j] = sum_i A_ij          entropy[b, h] = sum_i -sum_j A_ij log A_ij

A from the base-2 row statistic ``lse`` of ``forward.attn_fwd``, P = exp2(s - lse): SOFTMAX A = P (so
-log2 A = lse - s, no logarithm per element); SOFTPICK A = relu(P - exp2(-lse)) where s > 0; CLIPPED
A = clip((zeta - gamma) P + gamma, 0, 1); SIGMOID A = sigmoid(x + b) (no row statistic).

Each program owns one block of keys of one query head and walks only the query blocks that can see it (causal,
sliding window), as the dK/dV backward does: one matrix product per tile. Entropy is written per program (in
bits) and summed by the caller, so the result does not depend on the order of atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl

from sinklab.ops._triton.tiles import (
    CLIPPED,
    LOG2E,
    SIGMOID,
    SOFTMAX,
    SOFTPICK,
    fast_log2,
    load_keep,
    load_rows,
    load_vec,
    query_blocks,
    segment,
    tile_mask,
)


@triton.jit
def colsum_kernel(
    Q, K, LSE, BIAS, OUT, ENT, KPM, VALID,
    sqb, sqh, sqt, skb, skh, skt, skpm, svalid,
    H, G, T, S, OFF, W, qk_scale, p0, p1,
    FAMILY: tl.constexpr, ENTROPY: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_PAD: tl.constexpr, HAS_VALID: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
):  # fmt: skip
    """OUT[b, h, j] = sum of A_ij over allowed valid rows i for one block of keys of one head; with ENTROPY,
    ENT[b * H + h, block] = sum of -A_ij log2 A_ij over the same entries. LSE [B, H, T] base 2, BIAS [H] natural;
    KPM int8 [B, S] masks keys (HAS_PAD), VALID int8 [B, T] the rows that count (HAS_VALID, which needs HAS_PAD)."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G
    start_n = tl.program_id(0) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    k = load_rows(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh, offs_n, skt, offs_d, S, True)  # [BN, D]
    keep = load_keep(KPM + b.to(tl.int64) * skpm, offs_n, S, HAS_PAD, True)
    valid_base = VALID + b.to(tl.int64) * svalid
    q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    lse_base = LSE + bh.to(tl.int64) * T
    b2 = 0.0
    if FAMILY == SIGMOID:
        b2 = tl.load(BIAS + h) * LOG2E
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    ent = tl.zeros([BLOCK_N], dtype=tl.float32)
    a0, a1, b0, b1, hi = query_blocks(start_n, T, S, OFF, W, BLOCK_N, BLOCK_M, CAUSAL, HAS_WINDOW)
    for SEG in tl.static_range(3):
        if SEG != 0 or CAUSAL or HAS_WINDOW:  # full attention has no leading edge
            lo, end = segment(SEG, a0, a1, b0, b1, hi)
            for start_m in range(lo, end, BLOCK_M):
                offs_m = start_m + tl.arange(0, BLOCK_M)
                q = load_rows(q_base, offs_m, sqt, offs_d, T, SEG != 1)
                sT = tl.dot(k, tl.trans(q)) * qk_scale  # [BN, BM]
                if FAMILY == SIGMOID:
                    aT = 1.0 / (1.0 + tl.math.exp2(-(sT + b2)))
                else:
                    lse = load_vec(lse_base, offs_m, T, float("inf"), SEG != 1)
                    pT = tl.math.exp2(sT - lse[None, :])
                if FAMILY == SOFTMAX:
                    aT = pT
                elif FAMILY == SOFTPICK:
                    aT = tl.where(sT > 0, pT - tl.math.exp2(-lse)[None, :], 0.0)
                elif FAMILY == CLIPPED:
                    aT = tl.minimum(tl.maximum((p1 - p0) * pT + p0, 0.0), 1.0)
                if SEG != 1 or HAS_PAD:
                    ok = tile_mask(offs_m[None, :], offs_n[:, None], keep[:, None], T, S, OFF, W, CAUSAL, HAS_WINDOW,
                                   HAS_PAD, SEG != 1)  # fmt: skip
                    if HAS_VALID:
                        ok = ok & (load_vec(valid_base, offs_m, T, 0, SEG != 1) != 0)[None, :]
                    aT = tl.where(ok, aT, 0.0)
                acc += tl.sum(aT, 1)
                if ENTROPY:
                    if FAMILY == SOFTMAX:
                        eT = aT * (lse[None, :] - sT)
                        if SEG != 1 or HAS_PAD:  # 0 * inf where a row has no key
                            eT = tl.where(ok, eT, 0.0)
                    else:
                        eT = tl.where(aT > 0.0, -aT * fast_log2(aT), 0.0)
                    ent += tl.sum(eT, 1)
    tl.store(OUT + bh.to(tl.int64) * S + offs_n, acc, mask=offs_n < S)
    if ENTROPY:
        tl.store(ENT + bh.to(tl.int64) * tl.num_programs(0) + tl.program_id(0), tl.sum(ent, 0))
