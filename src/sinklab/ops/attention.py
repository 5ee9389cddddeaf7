"""``sinklab.ops.attention``: one entry point for every attention variant and implementation.

Layout q [B, H, T, D], k/v [B, Hkv, S, D] (GQA: H % Hkv == 0); when S > T the queries are the last T positions.
``impl``: "naive" (the definition, materializes T x S), "chunked" (CPU fast path), "triton" (GPU kernels in
``sinklab.ops.<variant>.triton``), "auto" (triton for CUDA tensors when that module and triton import, else chunked;
also chunked when the kernel raises NotImplementedError for a case it does not cover).
"""

from __future__ import annotations

import importlib
import math
from collections import Counter

import torch

from sinklab.errors import SinklabInputError
from sinklab.ops._common import check_qkv
from sinklab.ops.variants import VARIANTS

IMPLS = ("auto", "naive", "chunked", "triton")

_CALLS: Counter[str] = Counter()  # "<variant>/<impl>" -> calls: which code really ran (auto hides it otherwise)


def record_call(variant: str, impl: str) -> None:
    """Count one attention call that ran ``impl`` ("naive", "chunked" or "triton") for ``variant``."""
    _CALLS[f"{variant}/{impl}"] += 1


def attention_calls() -> Counter[str]:
    """A copy of the call counts since import, keyed "<variant>/<impl>"; diff two copies to see what a piece of
    code dispatched to, e.g. whether training reached the Triton kernels or the chunked fallback."""
    return Counter(_CALLS)


def _check_params(variant: str, params: dict, H: int, D: int) -> None:
    spec = VARIANTS[variant]
    accepted = ", ".join(f"{n} {list(p.shape) or 'float'}" for n, p in spec.items()) or "none"
    for name in params:
        if name not in spec:
            raise SinklabInputError(f"variant {variant!r} got unknown parameter {name!r}; accepted: {accepted}")
    for name, p in spec.items():
        x = params.get(name)
        if x is None:
            if p.required:
                raise SinklabInputError(f"variant {variant!r} needs parameter {name!r} ({p.doc}); accepted: {accepted}")
            continue
        if not p.shape or (p.scalar_ok and not isinstance(x, torch.Tensor)):
            if (isinstance(x, torch.Tensor) and x.numel() != 1) or not isinstance(x, int | float | torch.Tensor):
                raise SinklabInputError(f"{variant} parameter {name!r} must be a float, got {x!r}")
            if not math.isfinite(float(x)):
                raise SinklabInputError(f"{variant} parameter {name!r} must be finite, got {float(x)}")
            continue
        want = [{"H": H, "D": D}[d] for d in p.shape]
        if not isinstance(x, torch.Tensor) or (list(x.shape) != want and not (p.scalar_ok and x.numel() == 1)):
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise SinklabInputError(
                f"{variant} parameter {name!r} must be a tensor of shape {p.shape} = {want} ({p.doc}); got {got}"
            )
    if variant == "clipped":
        gamma, zeta = float(params.get("gamma", spec["gamma"].default)), float(params.get("zeta", spec["zeta"].default))
        if not (gamma < 0 and zeta >= 1):
            raise SinklabInputError(f"clipped softmax needs gamma < 0 and zeta >= 1; got gamma={gamma}, zeta={zeta}")
    if variant == "softpick" and float(params.get("eps", spec["eps"].default)) <= 0:
        raise SinklabInputError(f"softpick eps must be > 0, got {params['eps']}")


def _triton_module(variant: str):
    """``sinklab.ops.<variant>.triton`` or None when it or triton cannot be imported."""
    try:
        importlib.import_module("triton")
        return importlib.import_module(f"sinklab.ops.{variant}.triton")
    except ImportError:
        return None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    variant: str = "softmax",
    causal: bool = True,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    window: int | None = None,
    impl: str = "auto",
    **params,
) -> torch.Tensor:
    """Attention with weights from ``variant`` -> [B, H, T, D].

    Variants (``sinklab.ops.VARIANTS``): softmax; softmax1; sink (``sink`` [H]); kv_bias (``k_bias``, ``v_bias``
    [H, D], optional ``sink`` [H]); softpick (``eps``); clipped (``gamma``, ``zeta``); sigmoid (``bias``, float or
    [H], default -log S). ``attn_mask``: bool (True = may attend) or additive float, broadcastable to [B, H, T, S].
    ``window``: query i attends key j iff i - W < j <= i (causal). Rows with no visible key give 0.
    """
    if variant not in VARIANTS:
        raise SinklabInputError(f"unknown attention variant {variant!r}; accepted: {', '.join(VARIANTS)}")
    if impl not in IMPLS:
        raise SinklabInputError(f"unknown impl {impl!r}; accepted: {', '.join(IMPLS)}")
    check_qkv(q, k, v)
    _check_params(variant, params, q.shape[1], q.shape[-1])
    kw = dict(causal=causal, attn_mask=attn_mask, scale=scale, window=window, **params)
    if impl in ("auto", "triton"):
        module = _triton_module(variant) if q.is_cuda else None
        if module is not None:
            try:
                return module.attention(q, k, v, **kw)
            except NotImplementedError:  # a kernel may decline a case (a mask kind, a parameter): auto falls back
                if impl == "triton":
                    raise
        if impl == "triton":
            raise SinklabInputError(
                f"impl='triton' needs CUDA tensors, the triton package and sinklab.ops.{variant}.triton; "
                f"accepted here: {', '.join(i for i in IMPLS if i != 'triton')}"
            )
        impl = "chunked"
    record_call(variant, impl)
    return importlib.import_module(f"sinklab.ops.{variant}.{impl}").attention(q, k, v, **kw)
