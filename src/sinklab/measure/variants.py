"""Attention weights of a patched model's variant, for the Observer's chunked pass.

``sinklab.remove.patch`` turns a model into a sink-free variant; to measure that model the Observer must compute
the variant's weights, not softmax. This adapter maps a variant and its parameters to the row-weight function of
``sinklab.ops.colsum.chunked.attention_stats``, built from the definitions in ``sinklab.ops.<variant>.naive``.
"""

from __future__ import annotations

import torch

from sinklab.ops._common import head_param, masked_softmax
from sinklab.ops.clipped import naive as clipped
from sinklab.ops.colsum.chunked import RowWeights
from sinklab.ops.sigmoid import naive as sigmoid
from sinklab.ops.softpick import naive as softpick


def _extra_slot(variant: str, params: dict, scale: float) -> RowWeights:
    """sink / softmax1 / kv_bias: one extra logit per row joins the normalizer (and, for kv_bias, a value)."""

    def fn(s: torch.Tensor, keep: torch.Tensor, q: torch.Tensor):
        H = s.shape[1]
        extra = head_param(params.get("sink", 0.0), H, s) if variant != "softmax1" else head_param(0.0, H, s)
        if variant == "kv_bias":
            k_bias = params["k_bias"].to(s.dtype)  # [H, D]
            extra = extra + scale * (q @ k_bias[None, :, :, None])  # [B, H, R, 1]
        p = masked_softmax(s, keep, extra=extra.expand(*s.shape[:-1], 1))
        if variant != "kv_bias":
            return p, None
        slot = (1.0 - p.sum(-1, keepdim=True)) * keep.any(-1, keepdim=True)  # weight of the bias slot
        return p, slot * params["v_bias"].to(s.dtype)[None, :, None, :]

    return fn


def row_weights(variant: str, params: dict, scale: float, num_keys: int) -> RowWeights | None:
    """The row-weight function of ``variant`` (None for plain softmax, which the chunked pass does itself)."""
    if variant == "softmax":
        return None
    if variant in ("sink", "softmax1", "kv_bias"):
        return _extra_slot(variant, params, scale)
    if variant == "softpick":
        return lambda s, keep, q: (softpick.weights(s, keep, eps=params.get("eps", softpick.EPS)), None)
    if variant == "clipped":
        gamma, zeta = params.get("gamma", clipped.GAMMA), params.get("zeta", clipped.ZETA)
        return lambda s, keep, q: (clipped.weights(s, keep, gamma=gamma, zeta=zeta), None)
    if variant == "sigmoid":
        bias = params.get("bias")
        bias = sigmoid.default_bias(num_keys) if bias is None else bias
        return lambda s, keep, q: (sigmoid.weights(s, keep, bias=bias), None)
    raise ValueError(f"no row weights for attention variant {variant!r}")
