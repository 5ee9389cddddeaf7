"""Shared checks of the Triton kernels (``sinklab.ops._triton.flash``) against the naive definitions
(``sinklab.ops.attention(..., impl="naive")``, float64 on the CPU).

Used natively on CUDA (tests/gpu/test_kernels.py, benchmarks/time_kernels.py --check) and under Triton's interpreter on
the CPU (tests/unit/test_triton_interpret.py). Every check draws fresh random inputs, fills every buffer the
kernels allocate with NaN first (so an element a kernel forgets to write shows up), and compares the output, every
gradient and every statistic with the naive definition on the same inputs: relative error ||a - b|| / ||b||.
"""

from __future__ import annotations

import contextlib
import math

import torch

import sinklab.ops
from sinklab.ops.stats import StatsRequest
from sinklab.ops.variants import get_variant

VARIANTS = ("softmax", "softmax1", "sink", "kv_bias", "softpick", "clipped", "sigmoid")  # the kernel modes
STATS = StatsRequest(colsum=True, entropy=True, lse=True, pattern=6, columns=(0, 3))  # every field
STAT_FIELDS = ("colsum", "count", "entropy", "rows", "slot", "lse", "columns", "pattern")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 over b's finite entries (a must be infinite exactly there); NaN anywhere in a
    gives NaN (never passes a <= test); 0 when both are 0."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    finite = torch.isfinite(b)
    if torch.isnan(a).any() or not torch.equal(torch.isfinite(a), finite) or not torch.equal(a[~finite], b[~finite]):
        return math.nan
    den = b[finite].norm().item()
    num = (a[finite] - b[finite]).norm().item()
    return num if den == 0 else num / den


@contextlib.contextmanager
def poisoned():
    """torch.empty / torch.empty_like return NaN-filled floating tensors while active."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(math.nan) if t.is_floating_point() else t

    torch.empty = lambda *a, **kw: fill(empty(*a, **kw))
    torch.empty_like = lambda *a, **kw: fill(empty_like(*a, **kw))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


def make_case(
    variant: str,
    *,
    B=2,
    H=4,
    Hkv=2,
    T=37,
    S=45,
    D=16,
    dtype=torch.float32,
    device="cpu",
    causal=True,
    window=None,
    pad=None,
    seed=0,
    defaults=False,
    layout="bhtd",
) -> dict:
    """Random q, k, v, parameters and (optionally) key padding that leaves some query rows with no key.
    ``pad``: None, "key_padding" (the [B, S] argument) or "attn_mask" (a [B, 1, 1, S] bool mask).
    ``defaults``: leave the optional parameters out (kv_bias without ``sink``, sigmoid's bias -log S).
    ``layout="bthd"``: q, k, v are [B, T, H, D] tensors seen through transpose(1, 2), as transformers' attention
    modules pass them (last dim contiguous, the others not)."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    def heads(b, h, t, d):
        return rnd(b, t, h, d).transpose(1, 2) if layout == "bthd" else rnd(b, h, t, d)

    case = {
        "q": heads(B, H, T, D).to(dtype),
        "k": heads(B, Hkv, S, D).to(dtype),
        "v": heads(B, Hkv, S, D).to(dtype),
        "params": {},
        "kw": {"causal": causal, "window": window},
    }
    params = case["params"]
    if variant == "sink":
        params["sink"] = rnd(H)
    elif variant == "kv_bias":
        params.update(k_bias=rnd(H, D), v_bias=rnd(H, D))
        if not defaults:
            params["sink"] = rnd(H)
    elif variant == "clipped":
        params.update(gamma=-0.1, zeta=1.05)  # wider than the default so the clip is active at small T
    elif variant == "sigmoid" and not defaults:
        params["bias"] = rnd(H) - math.log(S)
    if pad:
        keep = torch.rand(B, S, generator=g) > 0.25
        keep[0, : min(S, 12)] = False  # with causal and S - T < 12, the first rows of batch 0 see no key
        keep = keep.to(device)
        if pad == "attn_mask":
            case["kw"]["attn_mask"] = keep[:, None, None, :]
        else:
            case["kw"]["key_padding"] = keep
    return case


def flash_attention(variant: str, q, k, v, **kw):
    """``flash.attention`` with the variant's defaults filled in, as the dispatcher hands them over."""
    from sinklab.ops._triton import flash

    spec = get_variant(variant)
    params = spec.with_defaults({n: kw.pop(n) for n in list(kw) if n in spec.params}, k.shape[2])
    return flash.attention(q, k, v, variant=variant, **kw, **params)


def naive_attention(variant: str, q, k, v, **kw):
    if variant == "kv_bias" and "sink" not in kw:  # its default slot logit 0, as a tensor (resolve wants [H])
        kw["sink"] = q.new_zeros(q.shape[1])
    return sinklab.ops.attention(q, k, v, variant=variant, impl="naive", **kw)


def _inputs(case: dict, dtype: torch.dtype | None, device, grad: bool) -> tuple[list[str], list[torch.Tensor], dict]:
    """(names, leaves, keyword arguments) of one call: q, k, v and the tensor parameters as fresh leaves."""
    names, leaves = [], []
    for name in ("q", "k", "v"):
        names.append(name)
        leaves.append(case[name].detach().to(device, dtype or case[name].dtype).requires_grad_(grad))
    kw = {n: (x.to(device) if isinstance(x, torch.Tensor) else x) for n, x in case["kw"].items()}
    for name, p in case["params"].items():
        if isinstance(p, torch.Tensor):
            names.append(name)
            leaves.append(p.detach().to(device, dtype or torch.float32).requires_grad_(grad))
            kw[name] = leaves[-1]
        else:
            kw[name] = p
    return names, leaves, kw


def _run(fn, case: dict, dtype: torch.dtype | None, grad_out: torch.Tensor, device=None) -> dict[str, torch.Tensor]:
    names, leaves, kw = _inputs(case, dtype, device or case["q"].device, grad=True)
    out = fn(*leaves[:3], **kw)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.device, out.dtype))
    return {"out": out, **{f"d{n}": g for n, g in zip(names, grads, strict=True)}}


def check(variant: str, case: dict, seed: int = 1) -> dict[str, float]:
    """Relative error of the kernels' output and of every gradient against the naive definition in float64 on the
    CPU; NaN-poisoned allocations while the kernels run."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    grad_out = torch.randn(case["q"].shape, generator=g)

    def fused(q, k, v, **kw):
        return flash_attention(variant, q, k, v, **kw)

    def naive(q, k, v, **kw):
        return naive_attention(variant, q, k, v, **kw)

    with poisoned():
        got = _run(fused, case, None, grad_out)
    ref = _run(naive, case, torch.float64, grad_out, device="cpu")
    return {name: rel_err(got[name], ref[name]) for name in ref}


def check_stats(variant: str, case: dict, request: StatsRequest = STATS) -> dict[str, float]:
    """Relative error of the kernels' output and of every statistic (``sinklab.ops.stats``) against the naive
    definition in float64 on the CPU; a field present on one side only gives NaN."""
    _, leaves, kw = _inputs(case, None, case["q"].device, grad=False)
    with poisoned(), torch.no_grad():
        out, got = flash_attention(variant, *leaves[:3], stats=request, **kw)
    _, leaves, kw = _inputs(case, torch.float64, "cpu", grad=False)
    ref_out, ref = naive_attention(variant, *leaves[:3], stats=request, **kw)
    errs = {"out": rel_err(out, ref_out)}
    for name in STAT_FIELDS:
        a, b = getattr(got, name), getattr(ref, name)
        if a is not None or b is not None:
            errs[name] = rel_err(a, b) if a is not None and b is not None else math.nan
    return errs
