"""What a change to a model costs and buys, in one call: perplexity in full precision, under W8A8 and under an int4
KV cache, streaming perplexity, residual outliers and sinks.

Every number comes from the code that defines it elsewhere in sinklab, run on the model as it is (with whatever
methods are attached: a prefix, a patched variant):

- ``ppl``: exp of the mean next-token NLL over ``ids`` [B, T] (targets 1 .. T-1 of every row).
- ``ppl_w8a8``: the same under ``remove.quant.W8A8(activations="tensor")``: int8 weights and inputs of every linear
  layer but the LM head, one scale per tensor (Bondarenko et al. 2023; outliers make its step coarse).
- ``ppl_kv4``: under ``exploit.cache.quant.QuantizedKVAttention``: keys and values of full-attention layers as an
  int4 cache stores them (per token, groups of ``kv_group`` channels), the first ``keep_first`` keys exact
  (keep-first-N / IntactKV; keys a method prepends count among them). Exactly token-by-token decoding with
  ``QuantizedSinkCache``.
- ``ppl_window`` / ``ppl_sinks``: streaming with a cache of ``window`` recent tokens (the reference convention), with
  0 / ``num_sinks`` sinks kept (``exploit.stream_eval.StreamAttention``, exactly ``SinkCache`` decoding, a patched
  slot variant's slot included); None, with the reason in ``stream_unavailable``, for row-wise variants (softpick,
  clipped, sigmoid) and kv_bias (its slot logit needs the query's in-cache rotation), which only token-by-token
  decoding evaluates, and under methods that edit attention weights (ACT, ZeroTuning) or read statistics, which the
  streaming override would skip (``errors.MethodConflict``).
- ``max_abs``: largest |x| of the block outputs over layers and tokens; ``kurtosis``: largest per-layer kurtosis
  (averaged over rows, as ``sinklab scan``); ``sink_rate``: Gu et al.'s Sink_1^eps and ``first_token_mass``: mean
  alpha_1 over softmax layers x heads, both on the first real token (keys prepended by a method are not tokens:
  their share of attention is ``prefix_mass``); ``sink_slot_mass`` where a learned sink slot exists.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from sinklab.errors import MethodConflict, SinklabInputError, check_fraction
from sinklab.measure import metrics
from sinklab.measure.engine import Observer
from sinklab.models import check_token_ids

PARTS = ("ppl", "ppl_w8a8", "ppl_kv4", "ppl_window", "ppl_sinks")  # plus the outlier and sink metrics of "ppl"


def _ppl(logits: torch.Tensor, ids: torch.Tensor) -> float:
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    return float(math.exp(nll))


def _observed(model, ids: torch.Tensor, eps: float) -> dict[str, float | None]:
    """One observed forward: perplexity, residual outliers and sink metrics."""
    with Observer(model) as obs:
        logits = model(input_ids=ids, use_cache=False).logits
    T = ids.shape[1]
    alpha, prefix, slot = [], [], []
    for stats in obs.attention.values():
        added = stats.colsum.shape[-1] - T  # keys a method prepended (prefix slots) come first
        first = torch.full((ids.shape[0],), added, dtype=torch.long)
        alpha.append(metrics.first_token_mass(stats, first).float().cpu())  # [B, H]
        if added:
            rows = stats.rows[:, None].clamp_min(1)
            prefix.append((stats.colsum[:, :, :added].sum(-1) / rows).float().mean().cpu())
        if stats.slot is not None:
            slot.append(metrics.mean_slot_mass(stats).float().mean().cpu())
    alpha_blh = torch.stack(alpha, dim=1)  # [B, L_attn, H]
    out = {
        "ppl": _ppl(logits, ids),
        "max_abs": max(float(r.max_abs.max()) for r in obs.residual.values()),
        "kurtosis": max(float(r.kurtosis.float().mean()) for r in obs.residual.values()),
        "sink_rate": metrics.sink_rate(metrics.sink_share(alpha_blh, eps)),
        "first_token_mass": float(alpha_blh.mean()),
    }
    if prefix:
        out["prefix_mass"] = float(torch.stack(prefix).mean())
    if slot:
        out["sink_slot_mass"] = float(torch.stack(slot).mean())
    return out


@torch.no_grad()
def quality(
    model,
    ids: torch.Tensor,
    *,
    eps: float = 0.3,
    window: int = 256,
    num_sinks: int = 4,
    kv_bits: int = 4,
    kv_group: int | None = None,
    keep_first: int = 0,
    parts: tuple[str, ...] | None = None,
) -> dict[str, float | None]:
    """The metrics above for ``ids`` [B, T] (unpadded token ids, BOS as the caller wants it); ``parts`` a subset of
    ``PARTS`` (default all; "ppl" brings the outlier and sink metrics). The model is left as it was."""
    from sinklab.exploit.cache.quant import QuantizedKVAttention
    from sinklab.exploit.stream_eval import StreamAttention
    from sinklab.remove.quant import W8A8

    parts = PARTS if parts is None else tuple(parts)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SinklabInputError(f"unknown quality part(s) {', '.join(unknown)}; accepted: {', '.join(PARTS)}")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 2:
        raise SinklabInputError("ids must be a [batch, tokens] tensor of token ids with at least 2 tokens")
    check_fraction("eps", eps)
    check_token_ids(model, ids.tolist())
    was_training = model.training
    model.eval()
    ids = ids.to(next(model.parameters()).device)
    out: dict[str, float] = {}
    try:
        if "ppl" in parts:
            out.update(_observed(model, ids, eps))
        if "ppl_w8a8" in parts:
            with W8A8(model, activations="tensor"):
                out["ppl_w8a8"] = _ppl(model(input_ids=ids, use_cache=False).logits, ids)
        if "ppl_kv4" in parts:
            with QuantizedKVAttention(kv_bits, keep_first, kv_group)(model):
                out["ppl_kv4"] = _ppl(model(input_ids=ids, use_cache=False).logits, ids)
        for name, sinks in (("ppl_window", 0), ("ppl_sinks", num_sinks)):
            if name in parts:
                try:
                    with StreamAttention(sinks, window)(model):
                        out[name] = _ppl(model(input_ids=ids, use_cache=False).logits, ids)
                except MethodConflict as err:  # a variant it cannot reproduce, or edits/statistics it would skip
                    out[name], out["stream_unavailable"] = None, str(err)
    finally:
        model.train(was_training)
    return out
