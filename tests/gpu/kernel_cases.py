"""Shared checks of the Triton kernels against the variants' definitions (``sinklab.ops.<variant>.naive``).

Used natively on CUDA (tests/gpu/test_kernels.py, benchmarks/kernels.py --check) and under Triton's interpreter on
the CPU (tests/unit/test_triton_interpret.py). Every check draws fresh random inputs, fills every buffer the
kernels allocate with NaN first (so an element a kernel forgets to write shows up), and compares the output and
every gradient with the naive definition run in float64 on the same inputs: relative error ||a - b|| / ||b||.
"""

from __future__ import annotations

import contextlib
import importlib
import math

import torch

VARIANTS = ("softmax", "softmax1", "sink", "kv_bias", "softpick", "clipped", "sigmoid")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; NaN anywhere gives NaN (never passes a <= test); 0 when both are 0."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not bool(torch.isfinite(a).all()):
        return math.nan
    den = b.norm().item()
    num = (a - b).norm().item()
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
    pad=False,
    seed=0,
    defaults=False,
    layout="bhtd",
) -> dict:
    """Random q, k, v, parameters and (optionally) a key-padding mask that leaves some query rows with no key.
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
        case["kw"]["attn_mask"] = keep.to(device)[:, None, None, :]
    return case


def _leaves(case: dict, dtype: torch.dtype | None, device) -> tuple[list[str], list[torch.Tensor]]:
    names, leaves = [], []
    for name in ("q", "k", "v"):
        names.append(name)
        leaves.append(case[name].detach().to(device, dtype or case[name].dtype).requires_grad_())
    for name, p in case["params"].items():
        if isinstance(p, torch.Tensor):
            names.append(name)
            leaves.append(p.detach().to(device, dtype or torch.float32).requires_grad_())
    return names, leaves


def _run(fn, case: dict, dtype: torch.dtype | None, grad_out: torch.Tensor, device=None) -> dict[str, torch.Tensor]:
    device = device or case["q"].device
    names, leaves = _leaves(case, dtype, device)
    q, k, v, *rest = leaves
    params = dict(case["params"])
    params.update(zip(names[3:], rest, strict=True))
    kw = {n: (x.to(device) if isinstance(x, torch.Tensor) else x) for n, x in case["kw"].items()}
    out = fn(q, k, v, **kw, **params)
    grads = torch.autograd.grad(out, leaves, grad_out.to(device, out.dtype))
    return {"out": out, **{f"d{n}": g for n, g in zip(names, grads, strict=True)}}


def check(variant: str, case: dict, impl=None, seed: int = 1) -> dict[str, float]:
    """Relative error of the output and of every gradient of ``impl`` (default: the variant's triton.attention)
    against its ``naive.attention`` in float64 on the CPU; NaN-poisoned allocations while ``impl`` runs."""
    naive = importlib.import_module(f"sinklab.ops.{variant}.naive").attention
    impl = impl or importlib.import_module(f"sinklab.ops.{variant}.triton").attention
    g = torch.Generator(device="cpu").manual_seed(seed)
    grad_out = torch.randn(case["q"].shape, generator=g).to(case["q"].device)
    with poisoned():
        got = _run(impl, case, None, grad_out)
    ref = _run(naive, case, torch.float64, grad_out, device="cpu")
    return {name: rel_err(got[name], ref[name]) for name in ref}


def check_lse(case: dict) -> float:
    """Relative error of ``flash.softmax_lse``'s logsumexp (finite rows) against float64, and -inf exactly where a
    row sees no key (NaN otherwise)."""
    from sinklab.ops._common import full_logits
    from sinklab.ops._triton import flash

    q, k, v, kw = case["q"], case["k"], case["v"], case["kw"]
    mask = kw.get("attn_mask")
    scale = 1.0 / math.sqrt(q.shape[-1])
    _, lse = flash.softmax_lse(q, k, v, scale=scale, causal=kw["causal"], window=kw["window"],
                               key_padding=None if mask is None else mask[:, 0, 0, :])  # fmt: skip
    s, keep = full_logits(q.double().cpu(), k.double().cpu(), causal=kw["causal"],
                          attn_mask=None if mask is None else mask.cpu(), scale=scale, window=kw["window"])  # fmt: skip
    ref = torch.logsumexp(s if keep is None else s.masked_fill(~keep, -math.inf), dim=-1)
    lse = lse.cpu()
    if not torch.equal(torch.isneginf(lse), torch.isneginf(ref)):
        return math.nan
    finite = torch.isfinite(ref)
    return rel_err(lse[finite], ref[finite])


def check_colsum(case: dict, impl=None) -> float:
    """Relative error of the Triton column sums against ``colsum.naive`` given the same (float64) lse."""
    from sinklab.ops._common import full_logits
    from sinklab.ops.colsum import naive

    impl = impl or importlib.import_module("sinklab.ops.colsum.triton").colsum
    q, k = case["q"], case["k"]
    kw = case["kw"]
    mask = kw.get("attn_mask")
    key_padding = None if mask is None else mask[:, 0, 0, :]
    scale = 1.0 / math.sqrt(q.shape[-1])
    q64, k64 = q.double().cpu(), k.double().cpu()
    mask64 = None if mask is None else mask.cpu()
    s, keep = full_logits(q64, k64, causal=kw["causal"], attn_mask=mask64, scale=scale, window=kw["window"])
    if keep is not None:
        s = s.masked_fill(~keep, -math.inf)
    lse = torch.logsumexp(s, dim=-1)  # [B, H, T] float64
    args = dict(scale=scale, causal=kw["causal"], window=kw["window"])
    kp64 = None if key_padding is None else key_padding.cpu()
    with poisoned():
        got = impl(q, k, lse.float().to(q.device), key_padding=key_padding, **args)
    ref = naive.colsum(q64, k64, lse, key_padding=kp64, **args)
    return rel_err(got, ref)
