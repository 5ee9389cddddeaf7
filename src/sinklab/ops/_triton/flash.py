"""Host side of the fused attention kernels: launch configs, the autograd Function, and the dispatch/fallback rule.

``attention(q, k, v, *, variant, ...)`` runs the Triton kernels when it can and otherwise calls the variant's
``chunked.attention`` (plain PyTorch, same signature) -- the cases it hands over are listed in ``unsupported``:
fp32/fp64 inputs, head dims other than 16/32/64/128, an additive float ``attn_mask``, a mask that varies over
heads or queries (anything but key padding broadcastable as [B, 1, 1, S]), and a learnable ``eps``/``gamma``/
``zeta`` tensor. Key padding, causal and sliding-window masks and GQA run in the kernel.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from dataclasses import dataclass

import torch
import triton

from sinklab.ops._triton import kernels
from sinklab.ops.attention import record_call
from sinklab.ops.masks import mask_spec
from sinklab.ops.sigmoid import naive as sigmoid_naive
from sinklab.ops.variants import VARIANTS as VARIANT_PARAMS

# variant -> (MODE, SEED) of kernels.py
VARIANTS = {
    "softmax": (0, 0),
    "softmax1": (0, 1),
    "sink": (0, 1),
    "kv_bias": (0, 2),
    "softpick": (1, 0),
    "clipped": (2, 0),
    "sigmoid": (3, 0),
}
HEAD_DIMS = (16, 32, 64, 128)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class Config:
    """Tile sizes: forward (m, n), backward dK/dV (m1 query rows x n1 keys), dQ (m2 x n2)."""

    m: int
    n: int
    warps: int
    stages: int
    m1: int
    n1: int
    m2: int
    n2: int
    bwd_warps: int
    bwd_stages: int


def _tiles_from_env() -> dict[int, Config]:
    """Per-head-dim tiles from the JSON file named by SINKLAB_TRITON_TILES ({"64": {"config": [...]}, ...}), as
    written by ``benchmarks/kernels.py --tune``; empty (the defaults below) when unset."""
    path = os.environ.get("SINKLAB_TRITON_TILES")
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        return {int(d): Config(*entry["config"]) for d, entry in json.load(f).items()}


TUNED: dict[int, Config] = _tiles_from_env()


def config(head_dim: int) -> Config:
    """Tiles for Hopper (H100/H200) bf16/fp16; under the interpreter, small tiles so tests touch every block kind."""
    if INTERPRET:
        return Config(16, 16, 4, 1, 16, 16, 16, 16, 4, 1)
    if head_dim in TUNED:
        return TUNED[head_dim]
    if head_dim <= 64:  # the fastest of the tiles tried on an H200 (benchmarks/KERNELS_NOTES.md)
        return Config(128, 64, 8, 3, 64, 128, 128, 64, 8, 3)
    return Config(128, 128, 8, 3, 64, 128, 128, 64, 8, 3)


@dataclass(frozen=True)
class Problem:
    """Everything about one call except the tensors that get gradients."""

    mode: int
    seed: int
    causal: bool
    window: int | None
    scale: float
    p0: float = 0.0  # softpick eps, clipped gamma
    p1: float = 0.0  # clipped zeta


def _dummy(device: torch.device) -> torch.Tensor:
    return torch.zeros(1, dtype=torch.float32, device=device)


def _kpm_args(kpm: torch.Tensor | None, device: torch.device) -> tuple[torch.Tensor, int]:
    if kpm is None:
        return torch.zeros(1, dtype=torch.int8, device=device), 0
    return kpm, (kpm.shape[1] if kpm.shape[0] > 1 else 0)


def forward(q, k, v, kpm, prob: Problem, sink=None, kb=None, vb=None, bias=None, cfg: Config | None = None):
    """(out [B, H, T, D], lse2 [B, H, T] float32 in base 2, None for sigmoid)."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    cfg = cfg or config(D)
    dev = q.device
    dummy = _dummy(dev)
    kpm_t, skpm = _kpm_args(kpm, dev)
    o = torch.empty_like(q)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=dev)
    grid = (triton.cdiv(T, cfg.m), B * H)
    params = [x if x is not None else dummy for x in (sink, kb, vb, bias)]
    args = [
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *o.stride()[:3],
        skpm,
        H,
        H // Hkv,
        T,
        S,
        S - T,
        prob.window or 0,
        prob.scale * kernels.LOG2E,
        prob.p0,
        prob.p1,
    ]
    consts = dict(
        CAUSAL=prob.causal,
        HAS_WINDOW=prob.window is not None,
        HAS_PAD=kpm is not None,
        BLOCK_M=cfg.m,
        # 128-key tiles fit the registers of the plain softmax/sink forward only; the other variants spill there
        BLOCK_N=cfg.n if prob.mode == 0 and prob.seed != 2 else min(cfg.n, 64),
        HEAD_D=D,
        num_warps=cfg.warps,
        num_stages=cfg.stages,
    )
    if prob.mode == 2:  # clipped: the softmax normalizer first
        kernels.attn_fwd[grid](q, k, v, o, lse, q, dummy, kpm_t, *params, *args, MODE=0, SEED=0, PASS=1, **consts)
    kernels.attn_fwd[grid](
        q, k, v, o, lse, q, dummy, kpm_t, *params, *args, MODE=prob.mode, SEED=prob.seed, PASS=0, **consts
    )
    return o, (None if prob.mode == 3 else lse)


def backward(
    q, k, v, o, lse, do, kpm, prob: Problem, sink=None, kb=None, vb=None, bias=None, cfg: Config | None = None
):
    """Gradients (dq, dk, dv, dsink [H], dk_bias [H, D], dv_bias [H, D], dbias [H]); unused ones are None."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    cfg = cfg or config(D)
    dev = q.device
    dummy = _dummy(dev)
    kpm_t, skpm = _kpm_args(kpm, dev)
    do = do.contiguous()
    qk_scale = prob.scale * kernels.LOG2E
    masks = dict(CAUSAL=prob.causal, HAS_WINDOW=prob.window is not None, HAS_PAD=kpm is not None)
    sizes = dict(H=H, G=G, T=T, S=S, OFF=S - T, W=prob.window or 0)
    delta = torch.empty(B, H, T, dtype=torch.float32, device=dev)
    aux1 = aux2 = dummy
    if prob.mode in (0, 1):
        if prob.seed:
            aux1 = torch.empty(B, H, T, dtype=torch.float32, device=dev)
        if prob.seed == 2:
            aux2 = torch.empty(B, H, T, dtype=torch.float32, device=dev)
        bm = 64 if not INTERPRET else 16
        kernels.bwd_preprocess[(triton.cdiv(T, bm), B * H)](
            q,
            o,
            do,
            lse,
            delta,
            sink if sink is not None else dummy,
            kb if kb is not None else dummy,
            vb if vb is not None else dummy,
            aux1,
            aux2,
            *q.stride()[:3],
            *o.stride()[:3],
            *do.stride()[:3],
            H,
            T,
            qk_scale,
            SEED=prob.seed,
            BLOCK_M=bm,
            HEAD_D=D,
        )
    elif prob.mode == 2:  # clipped: delta' needs a pass over the keys (it holds dO too: at most 64 keys a tile)
        kernels.attn_fwd[(triton.cdiv(T, cfg.m), B * H)](
            q,
            k,
            v,
            o,
            lse,
            do,
            delta,
            kpm_t,
            dummy,
            dummy,
            dummy,
            dummy,
            *q.stride()[:3],
            *k.stride()[:3],
            *v.stride()[:3],
            *do.stride()[:3],  # this pass reads dO through O's stride slots and writes no O
            skpm,
            **sizes,
            qk_scale=qk_scale,
            p0=prob.p0,
            p1=prob.p1,
            MODE=2,
            SEED=0,
            PASS=2,
            **masks,
            BLOCK_M=cfg.m,
            BLOCK_N=min(cfg.n, 64),
            HEAD_D=D,
            num_warps=cfg.warps,
            num_stages=cfg.stages,
        )
    lse_t = lse if lse is not None else dummy
    bias_t = bias if bias is not None else dummy
    launch = dict(  # what the dK/dV and dQ kernels share
        **sizes, scale=prob.scale, qk_scale=qk_scale, p0=prob.p0, p1=prob.p1, MODE=prob.mode, **masks, HEAD_D=D,
        num_warps=cfg.bwd_warps, num_stages=cfg.bwd_stages,
    )  # fmt: skip
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    kernels.attn_bwd_dkdv[(triton.cdiv(S, cfg.n1), B * Hkv)](
        q,
        k,
        v,
        do,
        lse_t,
        delta,
        dk,
        dv,
        kpm_t,
        bias_t,
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *do.stride()[:3],
        *dk.stride()[:3],
        skpm,
        **launch,
        BLOCK_M=cfg.m1,
        BLOCK_N=cfg.n1,
    )
    dq = torch.empty_like(q)
    dbias_rows = torch.empty(B, H, T, dtype=torch.float32, device=dev) if prob.mode == 3 else dummy
    kernels.attn_bwd_dq[(triton.cdiv(T, cfg.m2), B * H)](
        q,
        k,
        v,
        do,
        lse_t,
        delta,
        dq,
        kpm_t,
        kb if kb is not None else dummy,
        aux1,
        bias_t,
        dbias_rows,
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *do.stride()[:3],
        *dq.stride()[:3],
        skpm,
        **launch,
        SEED=prob.seed,
        BLOCK_M=cfg.m2,
        BLOCK_N=cfg.n2,
    )
    dsink = dkb = dvb = dbias = None
    if prob.seed == 1:
        dsink = -aux1.sum(dim=(0, 2))  # d s_h = -sum_i p_sink,i delta_i
    elif prob.seed == 2:
        dsink = aux1.sum(dim=(0, 2))  # the bias slot's logit: d s_h = sum_i dS_i'
        dkb = prob.scale * torch.einsum("bht,bhtd->hd", aux1, q.float())
        dvb = torch.einsum("bht,bhtd->hd", aux2, do.float())
    if prob.mode == 3:
        dbias = dbias_rows.sum(dim=(0, 2))
    return dq, dk, dv, dsink, dkb, dvb, dbias


class FlashAttention(torch.autograd.Function):
    """Fused forward, fused backward; gradients to q, k, v and to the per-head parameters given as tensors."""

    @staticmethod
    def forward(ctx, q, k, v, sink, kb, vb, bias, kpm, prob: Problem):
        o, lse = forward(q, k, v, kpm, prob, sink, kb, vb, bias)
        ctx.save_for_backward(q, k, v, o, lse, sink, kb, vb, bias, kpm)
        ctx.prob = prob
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, sink, kb, vb, bias, kpm = ctx.saved_tensors
        dq, dk, dv, dsink, dkb, dvb, dbias = backward(q, k, v, o, lse, do, kpm, ctx.prob, sink, kb, vb, bias)
        return dq, dk, dv, dsink, dkb, dvb, dbias, None, None


def key_padding(
    attn_mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, causal: bool, window: int | None
) -> tuple[bool, torch.Tensor | None]:
    """(kernel can take it, int8 key-padding [B or 1, S] or None) for an SDPA-style ``attn_mask``."""
    if attn_mask is None:
        return True, None
    spec = mask_spec(q, k, causal=causal, attn_mask=attn_mask, window=window)
    if spec.bias is not None and bool(spec.bias.ne(0).any()):
        return False, None
    if spec.keep is None:
        return True, None
    keep = spec.keep
    if keep.shape[1] != 1 or keep.shape[2] != 1:
        return False, None
    S = k.shape[2]
    return True, keep[:, 0, 0, :].expand(keep.shape[0], S).to(torch.int8).contiguous()


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the kernels cannot take these tensors (None if they can)."""
    if not (q.is_cuda or INTERPRET):
        return "not a CUDA tensor"
    if q.dtype not in (torch.float16, torch.bfloat16) and not INTERPRET:
        return f"dtype {q.dtype} (kernels take bfloat16 and float16)"
    if q.dtype != k.dtype or q.dtype != v.dtype:
        return "q, k, v dtypes differ"
    if q.shape[-1] not in HEAD_DIMS or v.shape[-1] != q.shape[-1]:
        return f"head dim {q.shape[-1]} (kernels take {HEAD_DIMS}, equal for q, k, v)"
    return None


def _fallback(variant, q, k, v, causal, attn_mask, scale, window, params):
    record_call(variant, "chunked")
    chunked = importlib.import_module(f"sinklab.ops.{variant}.chunked")
    return chunked.attention(q, k, v, causal=causal, attn_mask=attn_mask, scale=scale, window=window, **params)


def _per_head(x, H: int, device: torch.device) -> torch.Tensor:
    """A per-head parameter (float, 0-d or [H] tensor) as float32 [H], differentiable. A Python number is filled
    on the device (``torch.as_tensor(x, device=cuda)`` would copy from the host and synchronize every call)."""
    if not isinstance(x, torch.Tensor):
        return torch.full((H,), float(x), dtype=torch.float32, device=device)
    return x.to(device).float().reshape(-1).expand(H).contiguous()


def _scalar(x) -> float | None:
    """A hyper-parameter as a float, or None when it is a tensor that wants a gradient."""
    if isinstance(x, torch.Tensor):
        if x.requires_grad or x.numel() != 1:
            return None
        return float(x.item())
    return float(x)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    variant: str,
    causal: bool = True,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    window: int | None = None,
    **params,
) -> torch.Tensor:
    """The variant's attention through the fused kernels; same contract as ``sinklab.ops.<variant>.naive``."""
    mode, seed = VARIANTS[variant]
    H, D, S = q.shape[1], q.shape[3], k.shape[2]
    ok, kpm = key_padding(attn_mask, q, k, causal, window)
    if not ok or unsupported(q, k, v) is not None:
        return _fallback(variant, q, k, v, causal, attn_mask, scale, window, params)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    spec = VARIANT_PARAMS[variant]
    given = {name: params.get(name, p.default) for name, p in spec.items()}
    sink = kb = vb = bias = None
    p0 = p1 = 0.0
    if variant in ("sink", "kv_bias"):
        sink = _per_head(given["sink"] if given["sink"] is not None else 0.0, H, q.device)
    if variant == "softmax1":
        sink = torch.zeros(H, dtype=torch.float32, device=q.device)
    elif variant == "kv_bias":
        kb = given["k_bias"].float().expand(H, D).contiguous()
        vb = given["v_bias"].float().expand(H, D).contiguous()
    elif variant == "softpick":
        p0 = _scalar(given["eps"])
    elif variant == "clipped":
        p0, p1 = _scalar(given["gamma"]), _scalar(given["zeta"])
    elif variant == "sigmoid":
        bias = _per_head(sigmoid_naive.default_bias(S) if given["bias"] is None else given["bias"], H, q.device)
    if p0 is None or p1 is None:
        return _fallback(variant, q, k, v, causal, attn_mask, scale, window, params)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    prob = Problem(mode, seed, bool(causal), window, scale, p0, p1)
    record_call(variant, "triton")
    return FlashAttention.apply(q, k, v, sink, kb, vb, bias, kpm, prob)


def softmax_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    causal: bool = True,
    window: int | None = None,
    key_padding: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and each row's natural-log logsumexp in one forward kernel (no autograd):
    (out [B, H, T, D], lse [B, H, T] float32, -inf for a row with no visible key). ``lse`` is what
    ``sinklab.ops.colsum.triton.colsum`` takes; ``key_padding`` [B, S] bool, True = real token."""
    kpm = None if key_padding is None else key_padding.to(torch.int8).expand(q.shape[0], k.shape[2]).contiguous()
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    out, lse2 = forward(q, k, v, kpm, Problem(0, 0, bool(causal), window, float(scale)))
    return out, torch.where(torch.isinf(lse2), float("-inf"), lse2 * math.log(2.0))
