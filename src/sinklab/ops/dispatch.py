"""``sinklab.ops.attention``: one entry point for every attention variant and implementation, and the dispatch
counter ``attention_calls``.

Layout q [B, H, T, D], k/v [B, Hkv, S, D] (GQA: H % Hkv == 0); when S > T the queries are the last T positions.
``impl``: "naive" (``sinklab.ops.naive``, the definition, materializes T x S), "chunked" (CPU fast paths by family:
``_sdpa`` for softmax and slot variants, ``_rows`` for row-wise ones, and the chunked pass of
``sinklab.ops.colsum.chunked`` for statistics, softcap and edits), "triton" (``sinklab.ops._triton.flash``, CUDA
tensors, variants with a ``kernel``), "fa4" (FlashAttention-4, ``sinklab.ops._fa4``: softmax, softmax1 and sink on
Hopper/Blackwell when ``flash-attn-4`` is installed; no attn_mask or key padding), "fused" (softmax with statistics
from PyTorch's fused CPU kernel, ``sinklab.ops.colsum.fused``, where it is exact), "auto" (fa4 where it applies,
then triton, then fused, else chunked; also when a kernel raises NotImplementedError for a case it does not cover).
"""

from __future__ import annotations

from collections import Counter

import torch

from sinklab.errors import SinklabInputError
from sinklab.ops import _fa4, naive
from sinklab.ops._common import check_qkv, default_scale
from sinklab.ops._rows import rowwise_attention
from sinklab.ops._sdpa import softmax_with_slot
from sinklab.ops.colsum import fused
from sinklab.ops.colsum.chunked import attention_rows
from sinklab.ops.masks import check_key_padding, mask_spec
from sinklab.ops.naive import Edit
from sinklab.ops.stats import AttentionStats, StatsRequest
from sinklab.ops.variants import Variant, get_variant

IMPLS = ("auto", "naive", "chunked", "fused", "triton", "fa4")

_CALLS: Counter[str] = Counter()  # "<variant>/<impl>" -> calls: which code really ran (auto hides it otherwise)


def record_call(variant: str, impl: str) -> None:
    """Count one attention call that ran ``impl`` (an entry of ``IMPLS`` other than "auto") for ``variant``."""
    _CALLS[f"{variant}/{impl}"] += 1


def attention_calls() -> Counter[str]:
    """A copy of the call counts since import, keyed "<variant>/<impl>"; diff two copies to see what a piece of
    code dispatched to, e.g. whether training reached the Triton kernels or the chunked fallback."""
    return Counter(_CALLS)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    variant: str = "softmax",
    causal: bool = True,
    attn_mask: torch.Tensor | None = None,
    key_padding: torch.Tensor | None = None,
    scale: float | None = None,
    window: int | None = None,
    softcap: float | None = None,
    stats: StatsRequest | bool | None = None,
    edit_logits: Edit | None = None,
    edit_weights: Edit | None = None,
    impl: str = "auto",
    **params,
) -> torch.Tensor | tuple[torch.Tensor, AttentionStats]:
    """Attention with weights from ``variant`` -> out [B, H, T, D], or ``(out, AttentionStats)`` with ``stats``.

    Variants (``sinklab.ops.VARIANTS``): softmax; softmax1; sink (``sink`` [H]); kv_bias (``k_bias``, ``v_bias``
    [H, D], optional ``sink`` [H]); softpick (``eps``); clipped (``gamma``, ``zeta``); sigmoid (``bias``, float or
    [H], default -log S); and any registered with ``sinklab.ops.variants.register_variant``.
    ``attn_mask``: bool (True = may attend) or additive float, broadcastable to [B, H, T, S]. ``key_padding``:
    bool [B, S], True = real token; it hides padded keys and a query whose own token is padding never counts in the
    statistics (its output row is still computed). ``window``: query i attends key j iff i - W < j <= i (causal).
    ``softcap``: Gemma 2's s -> softcap * tanh(s / softcap) after scaling, before masking. ``stats``: a
    ``sinklab.ops.stats.StatsRequest`` (True = the default one). ``edit_logits(scores, rows=(r0, r1), keys=(lo,
    hi))`` / ``edit_weights(weights, rows, keys)`` change [B, H, R, K] blocks of whole rows of logits / weights.
    softcap and the edits run on the naive and chunked paths. Rows with no visible key give 0.
    """
    spec = get_variant(variant)
    if impl not in IMPLS:
        raise SinklabInputError(f"unknown impl {impl!r}; accepted: {', '.join(IMPLS)}")
    check_qkv(q, k, v)
    B, H, _, D = q.shape
    S = k.shape[2]
    params = spec.resolve(params, H, D, S)
    key_padding = check_key_padding(key_padding, B, S)
    request = _request(stats, attn_mask, S)
    if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, int | float) or softcap <= 0):
        raise SinklabInputError(f"softcap must be a positive float or None, got {softcap!r}")
    scale = default_scale(q, scale)
    hooks = softcap is not None or edit_logits is not None or edit_weights is not None
    kw = dict(causal=causal, attn_mask=attn_mask, key_padding=key_padding, scale=scale, window=window)
    if (impl == "fa4" or (impl == "auto" and q.is_cuda)) and not hooks:  # a CPU call under auto never tries it
        masked = attn_mask is not None or key_padding is not None
        try:
            result = _fa4.attention(
                q, k, v, variant=spec.name, causal=causal, scale=scale, window=window, stats=request, masked=masked,
                sink=params.get("sink"),
            )  # fmt: skip
            record_call(spec.name, "fa4")
            return result
        except NotImplementedError as reason:
            if impl == "fa4":
                raise SinklabInputError(f"impl='fa4' cannot run this call: {reason}; accepted here: auto, "
                                        "naive, chunked, triton") from None  # fmt: skip
    elif impl == "fa4":
        raise SinklabInputError("impl='fa4' takes no softcap, edit_logits or edit_weights")
    if impl in ("auto", "triton"):
        flash = _flash() if q.is_cuda and spec.kernel is not None and not hooks else None
        if flash is not None:
            try:
                result = flash.attention(q, k, v, variant=spec.kernel, stats=request, **kw, **params)
                record_call(spec.name, "triton")
                return result
            except NotImplementedError:  # a kernel may decline a case (a mask kind, a parameter): auto falls back
                if impl == "triton":
                    raise
        if impl == "triton":
            raise SinklabInputError(
                f"impl='triton' needs CUDA tensors, the triton package, a variant with a kernel ({spec.name!r}: "
                f"{spec.kernel}) and no softcap/edit_logits/edit_weights; accepted here: "
                f"{', '.join(i for i in IMPLS if i != 'triton')}"
            )
    if impl in ("auto", "fused"):
        fits = request is not None and not hooks and spec.name == "softmax"
        if fits and fused.applies(q, k, v, request, attn_mask=attn_mask, key_padding=key_padding, window=window):
            record_call(spec.name, "fused")
            return fused.attention(q, k, v, causal=causal, scale=scale, request=request)
        if impl == "fused":
            raise SinklabInputError(
                "impl='fused' needs float32 CPU softmax attention with statistics (no key columns), as many queries "
                "as keys, no attn_mask, key padding, window, softcap or edits; accepted here: auto, naive, chunked"
            )
        impl = "chunked"
    record_call(spec.name, impl)
    edits = dict(softcap=softcap, edit_logits=edit_logits, edit_weights=edit_weights)
    if impl == "naive":
        return naive.attention(q, k, v, spec, params, **kw, **edits, stats=request)
    if request is not None or hooks:
        mask_spec(q, k, causal=causal, attn_mask=attn_mask, window=window)  # validates the mask and window
        out, st = attention_rows(q, k, v, weights=spec.row_weights(params, scale, S), **kw, **edits, request=request)
        return out if request is None else (out, st)
    return _fast(spec, params, q, k, v, **kw)


def _fast(spec: Variant, params: dict, q, k, v, *, causal, attn_mask, key_padding, scale, window) -> torch.Tensor:
    """The CPU fast path of the variant's family: fused SDPA (+ one slot key) or row-wise query chunks."""
    mask = mask_spec(q, k, causal=causal, attn_mask=attn_mask, window=window, key_padding=key_padding)
    if spec.family == "rowwise":
        return rowwise_attention(q, k, v, mask, scale, lambda s, keep: spec.weights(s, keep, **params))
    logit = value = None
    if spec.family == "slot":
        logit, value = spec.slot(q, scale, q.shape[1], **params)
    return softmax_with_slot(q, k, v, mask, scale, slot_logit=logit, slot_value=value)


def _request(stats: StatsRequest | bool | None, attn_mask: torch.Tensor | None, S: int) -> StatsRequest | None:
    """``stats`` as a validated StatsRequest, or None for no statistics."""
    if stats is None or stats is False:
        return None
    request = StatsRequest() if stats is True else stats
    if not isinstance(request, StatsRequest):
        raise SinklabInputError(f"stats must be a sinklab.ops.stats.StatsRequest, True or None, got {stats!r}")
    bad = [c for c in request.columns if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < S]
    if bad:
        raise SinklabInputError(f"stats columns must be key indices in [0, {S}), got {bad}")
    if isinstance(request.pattern, bool) or not isinstance(request.pattern, int) or request.pattern < 0:
        raise SinklabInputError(f"stats pattern must be an int >= 0 (queries x keys kept), got {request.pattern!r}")
    per_head = isinstance(attn_mask, torch.Tensor) and attn_mask.dim() == 4 and attn_mask.shape[1] != 1
    if request.colsum and per_head:
        raise SinklabInputError(
            "stats with column sums need an attn_mask that is the same for every head ([B|1, 1, T, S]): "
            "counts are per key"
        )
    return request


def _flash():
    """``sinklab.ops._triton.flash`` or None when it or triton cannot be imported."""
    try:
        from sinklab.ops._triton import flash
    except ImportError:
        return None
    return flash
