"""Attention and its statistics in query chunks: O(T) memory, never a T x T matrix. Twin of ``sinklab.ops.naive``.

Each chunk of R queries builds only its [B, Hkv, G*R, S'] score block over the keys it can reach (S' <= S: causal
and sliding-window rows skip keys they cannot see), applies softcap, the float mask, ``edit_logits`` and the mask,
takes the variant's weights of whole rows (softmax, softmax with a slot, or a row-wise rule), ``edit_weights``, and
accumulates the column sums, entropies and the other requested statistics. GQA is handled by folding the G query
heads of one KV head into the row dimension, so keys and values are never repeated.
"""

from __future__ import annotations

import torch

from sinklab.ops._common import compute_dtype, softcapped
from sinklab.ops.colsum.naive import allowed_mask
from sinklab.ops.masks import MaskSpec, mask_spec
from sinklab.ops.naive import Edit
from sinklab.ops.stats import AttentionStats, StatsRequest, key_counts, query_validity
from sinklab.ops.variants import RowWeights

DEFAULT_BLOCK_BYTES = 32 * 2**20  # score block budget per chunk; larger blocks amortize Python overhead
MASKED = -1e30  # logit of a key a query may not see


CAUSAL_CHUNKS = 8  # at least this many query chunks for causal attention


def chunk_rows(batch: int, heads: int, kv_len: int, block_bytes: int | None = None, causal: bool = False) -> int:
    """Rows per chunk so that one float32 [B, H, R, S] score block stays within ``block_bytes``. Causal chunks also
    stay at most 1/8 of the keys: a chunk computes its whole block up to its last row's diagonal, so one chunk of
    all T rows would compute the T x T square where causality needs half of it (at T = 1024 the budget alone gave
    910-row chunks and 89 % more score work)."""
    rows = max(16, (block_bytes or DEFAULT_BLOCK_BYTES) // max(1, batch * heads * kv_len * 4))
    return min(rows, max(64, -(-kv_len // CAUSAL_CHUNKS))) if causal else rows


def _rule_free_keys(r0: int, r1: int, q_len: int, kv_len: int, causal: bool, window: int | None) -> tuple[int, int]:
    """Keys [a, b) that every query r0..r1-1 may see by position (only padding can hide them)."""
    off = kv_len - q_len
    a, b = 0, kv_len
    if causal:
        b = r0 + off + 1
    if window is not None:
        a = r1 - 1 + off - window + 1
        if not causal:
            b = min(b, r0 + off + window)
    return a, b


def attention_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    causal: bool = True,
    window: int | None = None,
    key_padding: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    weights: RowWeights | None = None,
    softcap: float | None = None,
    edit_logits: Edit | None = None,
    edit_weights: Edit | None = None,
    request: StatsRequest | None = None,
) -> tuple[torch.Tensor, AttentionStats | None]:
    """``(out [B, H, T, D], AttentionStats or None)``: the contract of ``sinklab.ops.naive.attention``, in chunks.

    ``weights`` (``Variant.row_weights``; None = softmax) gets each [B, H, R, K] block of logits (MASKED where a
    query may not see a key), its bool mask and the [B, H, R, D] queries. ``edit_logits`` / ``edit_weights``
    ``(block, rows=(r0, r1), keys=(lo, hi)) -> block`` see whole rows: every key a query may see is in its block.
    ``attn_mask`` must be the same for every head when ``request`` asks for column sums (its counts are per key).

    The position rule is applied only to the few key columns where it bites (the causal diagonal, the window's
    edge); column sums are a matrix product with the row-validity vector; counts come from prefix sums
    (``sinklab.ops.stats.key_counts``) unless ``attn_mask`` hides keys.
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    R = chunk_rows(B, H, S, causal=causal)
    dtype = compute_dtype(q.dtype)
    want = request or StatsRequest(colsum=False, entropy=False)
    user = None if attn_mask is None else mask_spec(q, k, causal=False, attn_mask=attn_mask, window=None)
    user_hides = user is not None and user.keep is not None
    empty_rows = key_padding is not None or user_hides or S < T  # rows that may see no key at all
    valid = query_validity(T, S, key_padding, B, q.device)  # [B, T]
    valid_f = valid.to(dtype)
    colsum = torch.zeros(B, H, S, dtype=dtype, device=q.device) if want.colsum else None
    count = torch.zeros(B, S, dtype=torch.long, device=q.device) if want.colsum and user_hides else None
    entropy = torch.zeros(B, H, dtype=dtype, device=q.device) if want.entropy else None
    columns = torch.zeros(B, H, T, len(want.columns), dtype=dtype, device=q.device) if want.columns else None
    pattern = slot = lse = None
    chunks = []
    qg = q.view(B, Hkv, G, T, D)
    for r0 in range(0, T, R):
        r1 = min(T, r0 + R)
        rows = r1 - r0
        lo, hi = MaskSpec(T, S, causal, window, None, None).key_range(r0, r1)
        if hi == lo:  # no query here sees a key: one key (masked by the rule) keeps the block non-empty
            lo, hi = (lo - 1, hi) if lo > 0 else (lo, lo + 1)
        K = hi - lo
        q_blk = (qg[:, :, :, r0:r1] * scale).reshape(B, Hkv, G * rows, D)
        scores = softcapped((q_blk @ k[:, :, lo:hi].transpose(-1, -2)).to(dtype).view(B, H, rows, K), softcap)
        user_keep = None
        if user is not None:
            user_keep, user_bias = user.block(r0, r1, lo, hi)
            if user_bias is not None:
                scores = scores + user_bias.to(dtype)
        if edit_logits is not None:
            scores = edit_logits(scores, rows=(r0, r1), keys=(lo, hi)).clone()  # masked in place below
        free_a, free_b = _rule_free_keys(r0, r1, T, S, causal, window)
        for a, b in ((lo, min(hi, max(lo, free_a))), (max(lo, min(hi, free_b)), hi)):
            if b > a:  # the position rule bites only on these columns
                rule = allowed_mask(T, S, causal=causal, window=window, rows=(r0, r1), keys=(a, b), device=q.device)
                scores[..., a - lo : b - lo].masked_fill_(~rule, MASKED)
        if key_padding is not None:
            scores.masked_fill_(~key_padding[:, None, None, lo:hi], MASKED)
        if user_keep is not None:
            scores.masked_fill_(~user_keep, MASKED)
        # masked logits are a large finite negative: exp gives exactly 0 and 0 * logit stays 0 (no NaN)
        row_max = scores.amax(-1)  # [B, H, R]
        has_key = row_max > MASKED / 2
        lse_blk = None
        if weights is None:
            w = None
            probs = torch.softmax(scores, dim=-1)
            if empty_rows:
                probs = probs * has_key[..., None]  # zeros, not a uniform spread over masked keys
            if want.lse or (want.entropy and edit_weights is None):  # lse = max s - log max p (argmax: p = e^0/Z)
                lse_blk = row_max - probs.amax(-1).clamp_min(torch.finfo(dtype).tiny).log()
                lse_blk = torch.where(has_key, lse_blk, float("-inf"))
        else:
            w = weights(scores, scores > MASKED / 2, q[:, :, r0:r1].to(dtype))
            probs = w.p
            lse_blk = None if w.lse is None else w.lse[..., 0]
        if edit_weights is not None:
            probs = edit_weights(probs, rows=(r0, r1), keys=(lo, hi))
        o_blk = (probs.reshape(B, Hkv, G * rows, K) @ v[:, :, lo:hi].to(dtype)).view(B, H, rows, D)
        if w is not None and w.out is not None:
            o_blk = o_blk + w.out
        chunks.append(o_blk.to(q.dtype))
        if request is None:
            continue
        if want.pattern and r0 < want.pattern:
            pattern = _keep_pattern(pattern, probs, r0, r1, lo, hi, want.pattern, T, S)
        if columns is not None:
            picked = [(n, c - lo) for n, c in enumerate(want.columns) if lo <= c < hi]
            if picked:
                ns, cs = zip(*picked, strict=True)
                columns[:, :, r0:r1, list(ns)] = probs[..., list(cs)]
        if want.lse and lse_blk is not None:
            lse = torch.empty(B, H, T, dtype=dtype, device=q.device) if lse is None else lse
            lse[:, :, r0:r1] = lse_blk
        row_w = valid_f[:, None, None, r0:r1]  # [B, 1, 1, R]
        if w is not None and w.slot is not None:
            slot = torch.zeros(B, H, dtype=dtype, device=q.device) if slot is None else slot
            slot += (w.slot[..., 0] * row_w[:, :, 0]).sum(-1)
        if entropy is not None:
            if lse_blk is not None and edit_weights is None:  # -sum p log p = lse sum p - sum p s
                total = 1.0 if w is None else probs.sum(-1)
                row_entropy = lse_blk * total - torch.einsum("bhrk,bhrk->bhr", probs, scores)
                row_entropy = torch.where(has_key, row_entropy, 0.0)
            else:
                row_entropy = -torch.special.xlogy(probs, probs).sum(-1)
            entropy += (row_entropy * row_w[:, :, 0]).sum(-1)
        if colsum is not None:
            colsum[:, :, lo:hi] += (row_w @ probs)[:, :, 0]
        if count is not None:
            allowed = allowed_mask(T, S, causal=causal, window=window, key_padding=key_padding, rows=(r0, r1),
                                   keys=(lo, hi), device=q.device)  # fmt: skip
            count[:, lo:hi] += (allowed & user_keep & valid[:, None, r0:r1, None]).sum(2)[:, 0]
    out = torch.cat(chunks, dim=2)
    if request is None:
        return out, None
    if want.colsum and count is None:
        count = key_counts(T, S, causal=causal, window=window, key_padding=key_padding, batch=B, device=q.device)
    stats = AttentionStats(
        colsum=colsum, count=count, entropy=entropy, rows=valid.sum(-1), pattern=pattern, slot=slot, lse=lse,
        columns=columns,
    )  # fmt: skip
    return out, stats


def _keep_pattern(pattern, probs, r0, r1, lo, hi, keep, T, S):
    """Copy the part of a chunk that falls in the first ``keep`` queries x keys into the [B, H, w, w] map."""
    B, H = probs.shape[:2]
    if pattern is None:
        pattern = torch.zeros(B, H, min(keep, T), min(keep, S), dtype=probs.dtype, device=probs.device)
    take = min(r1, pattern.shape[2]) - r0
    k_hi = min(hi, pattern.shape[3])
    if k_hi > lo:
        pattern[:, :, r0 : r0 + take, lo:k_hi] = probs[:, :, :take, : k_hi - lo]
    return pattern


def colsum(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    *,
    scale: float,
    causal: bool = True,
    window: int | None = None,
    key_padding: torch.Tensor | None = None,
    rows_per_chunk: int | None = None,
) -> torch.Tensor:
    """Same contract as ``naive.colsum``: mass each key receives given each row's logsumexp, in query chunks."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    R = chunk_rows(B, H, S)
    valid = query_validity(T, S, key_padding, B, q.device)
    total = torch.zeros(B, H, S, dtype=lse.dtype, device=q.device)
    qg = q.view(B, Hkv, G, T, D)
    for r0 in range(0, T, R):
        r1 = min(T, r0 + R)
        lo, hi = MaskSpec(T, S, causal, window, None, None).key_range(r0, r1)
        rows = r1 - r0
        scores = (qg[:, :, :, r0:r1].reshape(B, Hkv, G * rows, D) @ k[:, :, lo:hi].transpose(-1, -2)).to(lse.dtype)
        scores = scores.view(B, H, rows, hi - lo) * scale
        allowed = allowed_mask(
            T, S, causal=causal, window=window, key_padding=key_padding, rows=(r0, r1), keys=(lo, hi), device=q.device
        )
        allowed = allowed & valid[:, None, r0:r1, None]
        probs = torch.exp(scores - lse[:, :, r0:r1, None]).masked_fill(~allowed, 0.0)
        total[:, :, lo:hi] += probs.sum(dim=2)
    return total
