"""Softmax attention plus one optional extra key slot per head, on top of the fused SDPA kernel.

The sink-logit family is softmax over the visible keys plus one slot: softmax1 (slot logit 0, value 0), sink
(logit sink_h, value 0), kv_bias (logit scale * q . k'_h [+ sink_h], value v'_h). The slot is a real extra key,
so the fused kernel's own backward gives every gradient (on CPU the kernel's logsumexp output carries no gradient,
so the closed form out * sigmoid(lse - sink) could not be trained through it). A per-query slot logit c_i enters
as one extra dimension: q' = [q, c / scale], k' = [k, 0], slot key [0, 1]; a slot value enters as one extra value
dimension [v, 0], slot value [0, 1], whose output is the slot's weight p_i, then out += p_i * v'_h.

No T x S score matrix is formed. Masks: with no ``attn_mask``, no window and T == S (or no causality) one kernel call
runs with ``is_causal`` (the slot goes first, behind a dummy first query, so top-left causal alignment lets every
query see it); otherwise queries are processed in chunks, each against its visible key range with a
[Tc, K + 1] additive mask from ``sinklab.ops.masks``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sinklab.ops._common import block_rows
from sinklab.ops.masks import MaskSpec

BLOCK_ELEMS = 1 << 22  # mask elements per query chunk


def _kernel(q, k, v, *, causal: bool, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    if q.device.type == "cpu":
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        return flash(q, k, v, 0.0, causal, attn_mask=mask, scale=scale)[0]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True)


def softmax_with_slot(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: MaskSpec,
    scale: float,
    *,
    slot_logit: torch.Tensor | float | None = None,
    slot_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, H, T, D], k/v [B, Hkv, S, D] -> [B, H, T, D].

    ``slot_logit``: None (no slot: plain softmax), or a float or tensor broadcastable to [B, H, T, 1] (the slot's
    logit per query; 0.0 is a plain all-zero key). ``slot_value``: None (0) or [H, D]. Rows with no visible key
    give 0.
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    slot = slot_logit is not None
    zero_key = isinstance(slot_logit, float) and slot_logit == 0.0 and slot_value is None
    if slot and not zero_key:  # extra q/k dim: the slot logit
        c = torch.broadcast_to(torch.as_tensor(slot_logit, dtype=q.dtype, device=q.device), (B, H, T, 1)) / scale
        q = torch.cat([q, c], dim=-1)  # [B, H, T, D + 1]
        k = torch.cat([k, k.new_zeros(B, Hkv, S, 1)], dim=-1)
    if slot_value is not None or k.shape[-1] > D:  # the kernel wants one head size; the extra value dim: slot weight
        v = torch.cat([v, v.new_zeros(B, Hkv, S, 1)], dim=-1)
    if slot:
        k_slot = k.new_zeros(B, Hkv, 1, k.shape[-1])
        if k.shape[-1] > D:
            k_slot[..., -1] = 1.0
        v_slot = v.new_zeros(B, Hkv, 1, v.shape[-1])
        if slot_value is not None:
            v_slot[..., -1] = 1.0
        k = torch.cat([k_slot, k], dim=2)  # the slot is key 0: [B, Hkv, 1 + S, D']
        v = torch.cat([v_slot, v], dim=2)
    n_slot = int(slot)

    if spec.keep is None and spec.bias is None and spec.window is None and (not spec.causal or T == S):
        if spec.causal and slot:  # dummy query 0 sees only the slot; query i then sees the slot and keys 0..i
            q = torch.cat([q.new_zeros(B, H, 1, q.shape[-1]), q], dim=2)
            out = _kernel(q, k, v, causal=True, mask=None, scale=scale)[:, :, 1:]
        else:
            out = _kernel(q, k, v, causal=spec.causal, mask=None, scale=scale)
    else:
        chunks = []
        step = block_rows(spec, BLOCK_ELEMS, B)
        for t0 in range(0, T, step):
            t1 = min(T, t0 + step)
            lo, hi = spec.key_range(t0, t1)
            if hi == lo:  # no query in this chunk sees a key
                chunks.append(q.new_zeros(B, H, t1 - t0, v.shape[-1]))
                continue
            keep, bias = spec.block(t0, t1, lo, hi)
            mask = torch.zeros(1, 1, t1 - t0, hi - lo, dtype=q.dtype, device=q.device)
            rows = None
            if keep is not None:
                rows = keep.any(-1, keepdim=True)  # [.., Tc, 1]
                mask = torch.where(keep | ~rows, mask, float("-inf"))  # empty rows see all keys, zeroed below
            if bias is not None:
                mask = mask + bias.to(q.dtype)
            if slot:
                mask = torch.cat([mask.new_zeros(*mask.shape[:-1], 1), mask], dim=-1)
            keys = slice(lo + n_slot, hi + n_slot)
            kc = torch.cat([k[:, :, :1], k[:, :, keys]], 2) if slot else k[:, :, keys]
            vc = torch.cat([v[:, :, :1], v[:, :, keys]], 2) if slot else v[:, :, keys]
            out_c = _kernel(q[:, :, t0:t1], kc, vc, causal=False, mask=mask, scale=scale)
            if rows is not None:
                out_c = torch.where(rows, out_c, torch.zeros_like(out_c))
            chunks.append(out_c)
        out = torch.cat(chunks, dim=2)
    if slot_value is not None:
        out = out[..., :D] + out[..., D:] * slot_value.to(out.dtype)[None, :, None, :]  # [B, H, T, D]
    return out[..., :D]
