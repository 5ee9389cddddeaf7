"""Host side of the fused kernels: launch configs, the autograd Function, the statistics path, and what the kernels
take.

``attention(q, k, v, *, variant=<kernel mode name>, ...)`` expects every parameter resolved by the dispatcher
(``sinklab.ops.attention``) and raises ``NotImplementedError(reason)`` for what the kernels do not take (the
dispatcher then runs the chunked path): tensors off CUDA (unless ``TRITON_INTERPRET=1``), float32/float64 inputs,
head dims above 128, an additive float ``attn_mask`` or a mask that varies over heads or queries (anything but key
padding broadcastable as [B, 1, 1, S]), a tensor ``eps``/``gamma``/``zeta`` (learnable or not a scalar), an unknown
mode name, and statistics together with gradients. Key padding, causal and sliding-window masks and GQA run in the
kernels. Head dims other than 16/32/64/128 (Gu et al.'s 60M model has D = 96) run zero-padded to the next of these:
zero columns change no logit q . k and give zero output columns, which are cut off.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import torch
import triton

from sinklab.ops._triton import backward as bwd_kernels
from sinklab.ops._triton import colsum as colsum_kernels
from sinklab.ops._triton import forward as fwd_kernels
from sinklab.ops._triton import tiles
from sinklab.ops.masks import MaskSpec, mask_spec
from sinklab.ops.stats import AttentionStats, StatsRequest, key_counts, query_validity

HEAD_DIMS = (16, 32, 64, 128)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = tiles.LOG2E.value


class Mode(NamedTuple):
    """The compile-time constants of one kernel mode (``tiles.py``) and the parameters it takes."""

    family: int
    slot: int = tiles.NO_SLOT.value
    params: tuple[str, ...] = ()


MODES: dict[str, Mode] = {
    "softmax": Mode(tiles.SOFTMAX.value),
    "softmax1": Mode(tiles.SOFTMAX.value, tiles.LOGIT_SLOT.value),
    "sink": Mode(tiles.SOFTMAX.value, tiles.LOGIT_SLOT.value, ("sink",)),
    "kv_bias": Mode(tiles.SOFTMAX.value, tiles.KV_SLOT.value, ("k_bias", "v_bias", "sink")),
    "softpick": Mode(tiles.SOFTPICK.value, params=("eps",)),
    "clipped": Mode(tiles.CLIPPED.value, params=("gamma", "zeta")),
    "sigmoid": Mode(tiles.SIGMOID.value, params=("bias",)),
}
SOFTMAX, SOFTPICK, CLIPPED, SIGMOID = (f.value for f in (tiles.SOFTMAX, tiles.SOFTPICK, tiles.CLIPPED, tiles.SIGMOID))
NO_SLOT, LOGIT_SLOT, KV_SLOT = (s.value for s in (tiles.NO_SLOT, tiles.LOGIT_SLOT, tiles.KV_SLOT))
OUT_PASS, LSE_PASS, DELTA_PASS = (p.value for p in (tiles.OUT_PASS, tiles.LSE_PASS, tiles.DELTA_PASS))
DKDV, DV_ONLY, DK_ONLY = (p.value for p in (tiles.DKDV, tiles.DV_ONLY, tiles.DK_ONLY))


@dataclass(frozen=True)
class Tiles:
    """One kernel's launch: ``m`` query rows x ``n`` keys a tile, warps, pipeline stages, tensor-descriptor (TMA)
    loads, a register cap (maxnreg, 0 = the compiler's) and, for the dK/dV pass only, ``split``: dV and dK in two
    launches of one accumulator each."""

    m: int
    n: int
    warps: int = 8
    stages: int = 3
    tma: bool = False
    maxnreg: int = 0
    split: bool = False

    def launch(self) -> dict:
        """The kernel keywords of these tiles other than the block sizes."""
        opts = dict(TMA=self.tma, num_warps=self.warps, num_stages=self.stages)
        return opts | ({"maxnreg": self.maxnreg} if self.maxnreg else {})


PASSES = ("fwd", "decode", "dkdv", "dq", "colsum")  # decode: the forward when a call has at most DECODE_T queries
DECODE_T = 16


@dataclass(frozen=True)
class Config:
    """Tiles of every pass (``PASSES``) for one head dim."""

    fwd: Tiles
    dkdv: Tiles
    dq: Tiles
    colsum: Tiles = Tiles(64, 128, 8, 3)
    decode: Tiles = Tiles(16, 64, 4, 3)


# The candidates of each pass (the first is the default), per head dim: the tune step of benchmarks/time_kernels.py
# times them on the device and pins the winners (``pin``, SINKLAB_TRITON_TILES). Register and spill figures of each,
# compiled for sm_90: benchmarks/KERNELS_NOTES.md.
_T = Tiles
_CANDIDATES: dict[str, dict[int, tuple[Tiles, ...]]] = {
    "fwd": {
        64: (_T(128, 64), _T(128, 64, 4), _T(128, 128), _T(128, 64, 8, 2), _T(128, 64, 8, 4), _T(128, 64, tma=True),
             _T(128, 128, tma=True), _T(128, 64, 8, 4, tma=True)),
        128: (_T(128, 128), _T(128, 64), _T(128, 128, 8, 2), _T(128, 64, 8, 4), _T(64, 64, 4), _T(128, 128, tma=True),
              _T(128, 64, tma=True), _T(128, 128, 8, 2, tma=True)),
    },
    "decode": {
        128: (_T(16, 64, 4), _T(16, 128, 4), _T(16, 64, 4, 4), _T(16, 128, 4, 2), _T(32, 64, 4), _T(16, 64, 2),
              _T(16, 64, 4, tma=True), _T(16, 128, 4, tma=True)),
    },
    "dkdv": {
        64: (_T(64, 128), _T(32, 128), _T(64, 128, 8, 2), _T(64, 64), _T(64, 128, split=True), _T(64, 128, tma=True),
             _T(32, 128, tma=True), _T(64, 128, 8, 2, tma=True), _T(64, 128, tma=True, split=True)),
        128: (_T(64, 128), _T(32, 128), _T(64, 64), _T(64, 128, split=True), _T(64, 128, tma=True),
              _T(32, 128, tma=True), _T(64, 64, tma=True), _T(64, 128, tma=True, split=True),
              _T(64, 128, 8, 2, tma=True, split=True), _T(64, 128, 8, 4, tma=True, split=True),
              _T(64, 64, tma=True, split=True)),
    },
    "dq": {
        64: (_T(128, 64), _T(128, 128), _T(64, 64, 4), _T(128, 64, 4), _T(128, 64, 8, 2), _T(128, 64, tma=True),
             _T(128, 128, tma=True), _T(64, 64, 4, tma=True, maxnreg=128)),
        128: (_T(128, 64), _T(64, 64, 4), _T(128, 32), _T(128, 64, 8, 2), _T(64, 128), _T(128, 64, tma=True),
              _T(64, 64, 4, tma=True)),
    },
    "colsum": {
        128: (_T(64, 128), _T(64, 64, 4), _T(64, 64, 4, 4), _T(64, 64, 4, 2), _T(32, 64, 4), _T(64, 32, 4),
              _T(64, 128, 4), _T(128, 64, 4)),
    },
}  # fmt: skip


def candidates(head_dim: int, pass_: str) -> list[Tiles]:
    """The tiles worth timing for pass ``pass_`` (one of ``PASSES``) at ``head_dim``, the default first."""
    if pass_ not in PASSES:
        raise ValueError(f"no pass {pass_!r} (passes: {', '.join(PASSES)})")
    table = _CANDIDATES[pass_]
    return list(table[min(d for d in table if d >= head_dim)])


def _default(head_dim: int) -> Config:
    return Config(**{p: candidates(head_dim, p)[0] for p in PASSES})


def _tiles_from_env() -> dict[int, Config]:
    """Per-head-dim tiles from the JSON file named by SINKLAB_TRITON_TILES (``tuned_json``'s format:
    {"64": {"fwd": {"m": 128, "n": 64, ...}, "dkdv": {...}}, ...}; passes left out keep their default, keys that
    are not passes are ignored); empty when unset."""
    path = os.environ.get("SINKLAB_TRITON_TILES")
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        entries = json.load(f)
    return {
        int(d): replace(_default(int(d)), **{p: Tiles(**t) for p, t in entry.items() if p in PASSES})
        for d, entry in entries.items()
    }


TUNED: dict[int, Config] = _tiles_from_env()


def pin(head_dim: int, pass_: str, tiles: Tiles) -> None:
    """Use ``tiles`` for pass ``pass_`` at ``head_dim`` in this process from now on."""
    if pass_ not in PASSES:
        raise ValueError(f"no pass {pass_!r} (passes: {', '.join(PASSES)})")
    TUNED[head_dim] = replace(config(head_dim), **{pass_: tiles})


def tuned_json() -> dict:
    """The pinned tiles as SINKLAB_TRITON_TILES reads them (write it with ``json.dump``)."""
    return {str(d): {p: asdict(getattr(cfg, p)) for p in PASSES} for d, cfg in TUNED.items()}


def config(head_dim: int) -> Config:
    """Tiles for Hopper (H100/H200) bf16/fp16, pinned or default; under the interpreter, small tiles so tests touch
    every block kind."""
    if head_dim in TUNED:
        return TUNED[head_dim]
    if INTERPRET:
        t = Tiles(16, 16, 4, 1)
        return Config(t, t, t, t, t)
    return _default(head_dim)


@dataclass(frozen=True)
class Problem:
    """Everything about one call except the tensors."""

    mode: Mode
    causal: bool
    window: int | None
    scale: float
    p0: float = 0.0  # softpick eps, clipped gamma
    p1: float = 0.0  # clipped zeta


class Heads(NamedTuple):
    """Per-head parameter tensors (float32) of the mode, None where it has none."""

    sink: torch.Tensor | None = None  # [H] slot logit (LOGIT_SLOT, KV_SLOT)
    kb: torch.Tensor | None = None  # [H, D] slot key (KV_SLOT)
    vb: torch.Tensor | None = None  # [H, D] slot value (KV_SLOT)
    bias: torch.Tensor | None = None  # [H] sigmoid bias


def _strides(name: str, x: torch.Tensor, last: str = "t") -> dict[str, int]:
    """The batch, head and row strides of a [B, H, T, D] tensor as the kernels name them (s<name>b, h, t)."""
    return {f"s{name}b": x.stride(0), f"s{name}h": x.stride(1), f"s{name}{last}": x.stride(2)}


def _common(q: torch.Tensor, k: torch.Tensor, kpm: torch.Tensor | None, prob: Problem) -> dict:
    """Sizes, masks and the score scale that every kernel but the preprocess takes; ``kpm`` int8 [B, S] or None."""
    H, T, S = q.shape[1], q.shape[2], k.shape[2]
    return dict(
        skpm=0 if kpm is None else kpm.stride(0),
        H=H, G=H // k.shape[1], T=T, S=S, OFF=S - T, W=prob.window or 0,
        qk_scale=prob.scale * LOG2E, p0=prob.p0, p1=prob.p1,
        CAUSAL=prob.causal, HAS_WINDOW=prob.window is not None, HAS_PAD=kpm is not None, HEAD_D=q.shape[3],
    )  # fmt: skip


@functools.cache
def _dummies(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32, int8) one-element tensors for the pointer arguments a specialization never touches, made once per
    device (allocating them per call cost two fill launches and host time on every call)."""
    return torch.zeros(1, dtype=torch.float32, device=device), torch.zeros(1, dtype=torch.int8, device=device)


def _or_dummy(x: torch.Tensor | None, dummy: torch.Tensor) -> torch.Tensor:
    return dummy if x is None else x


def _scratch(device: torch.device, size: int, alignment: int, stream) -> torch.Tensor:
    return torch.empty(size, dtype=torch.int8, device=device)


def _with_tma(t: Tiles, *xs: torch.Tensor) -> Tiles:
    """``t``, with tensor descriptors off unless every [B, H, T, D] tensor of ``xs`` has
    16-byte aligned heads and rows (TMA's rule); when on, sets Triton's allocator for the descriptors' scratch (a
    context variable: autograd runs the backward in a thread of its own)."""
    if not t.tma:
        return t
    if not all(x.data_ptr() % 16 == 0 and all(st * x.element_size() % 16 == 0 for st in x.stride()[:3]) for x in xs):
        return replace(t, tma=False)
    triton.set_allocator(functools.partial(_scratch, xs[0].device))
    return t


def _kpm_or_dummy(kpm: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    return _dummies(device)[1] if kpm is None else kpm


def forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kpm: torch.Tensor | None, prob: Problem, heads: Heads,
    cfg: Config | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """(out [B, H, T, D], the row statistic [B, H, T] float32 in base 2: lse, softpick's log-denominator; None
    for sigmoid). ``kpm``: int8 key padding [B, S] (1 = real key) or None."""
    B, H, T, D = q.shape
    cfg = cfg or config(D)
    t = _with_tma(cfg.decode if T <= DECODE_T else cfg.fwd, q, k, v)
    dummy = _dummies(q.device)[0]
    o = torch.empty_like(q)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    mode = prob.mode
    # 128-key tiles fit the registers of the plain softmax/sink forward only; the other modes spill there
    block_n = t.n if mode.family == SOFTMAX and mode.slot != KV_SLOT else min(t.n, 64)
    launch = dict(
        Q=q, K=k, V=v, O=o, LSE=lse, DO=q, DELTA=dummy, KPM=_kpm_or_dummy(kpm, q.device),
        SINK=_or_dummy(heads.sink, dummy), KB=_or_dummy(heads.kb, dummy), VB=_or_dummy(heads.vb, dummy),
        BIAS=_or_dummy(heads.bias, dummy),
        **_strides("q", q), **_strides("k", k), **_strides("v", v), **_strides("o", o), **_common(q, k, kpm, prob),
        BLOCK_M=t.m, BLOCK_N=block_n, **t.launch(),
    )  # fmt: skip
    grid = (triton.cdiv(T, t.m), B * H)
    if mode.family == CLIPPED:  # the softmax normalizer first
        fwd_kernels.attn_fwd[grid](**launch, FAMILY=SOFTMAX, SLOT=NO_SLOT, PASS=LSE_PASS)
    fwd_kernels.attn_fwd[grid](**launch, FAMILY=mode.family, SLOT=mode.slot, PASS=OUT_PASS)
    return o, (None if mode.family == SIGMOID else lse)


def backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor | None, do: torch.Tensor,
    kpm: torch.Tensor | None, prob: Problem, heads: Heads, cfg: Config | None = None,
) -> tuple[torch.Tensor | None, ...]:  # fmt: skip
    """Gradients (dq, dk, dv, dsink [H], dk_bias [H, D], dv_bias [H, D], dbias [H]); unused ones are None."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    cfg = cfg or config(D)
    do = do.contiguous()
    fwd_t, dkdv_t, dq_t = (_with_tma(t, q, k, v, do) for t in (cfg.fwd, cfg.dkdv, cfg.dq))
    dev = q.device
    mode = prob.mode
    dummy = _dummies(dev)[0]
    kpm_t = _kpm_or_dummy(kpm, dev)
    common = _common(q, k, kpm, prob)
    delta = torch.empty(B, H, T, dtype=torch.float32, device=dev)
    aux1 = aux2 = dummy
    if mode.family in (SOFTMAX, SOFTPICK):
        if mode.slot != NO_SLOT:
            aux1 = torch.empty(B, H, T, dtype=torch.float32, device=dev)
        if mode.slot == KV_SLOT:
            aux2 = torch.empty(B, H, T, dtype=torch.float32, device=dev)
        bm = 64 if not INTERPRET else 16
        bwd_kernels.bwd_preprocess[(triton.cdiv(T, bm), B * H)](
            q, o, do, lse, delta, _or_dummy(heads.sink, dummy), _or_dummy(heads.kb, dummy),
            _or_dummy(heads.vb, dummy), aux1, aux2, *q.stride()[:3], *o.stride()[:3], *do.stride()[:3],
            H, T, common["qk_scale"], SLOT=mode.slot, BLOCK_M=bm, HEAD_D=D,
        )  # fmt: skip
    elif mode.family == CLIPPED:  # delta' needs a pass over the keys (it holds dO too: at most 64 keys a tile)
        fwd_kernels.attn_fwd[(triton.cdiv(T, fwd_t.m), B * H)](
            Q=q, K=k, V=v, O=o, LSE=lse, DO=do, DELTA=delta, KPM=kpm_t, SINK=dummy, KB=dummy, VB=dummy, BIAS=dummy,
            **_strides("q", q), **_strides("k", k), **_strides("v", v),
            **_strides("o", do),  # this pass reads dO through O's stride slots and writes no O
            **common, FAMILY=CLIPPED, SLOT=NO_SLOT, PASS=DELTA_PASS,
            BLOCK_M=fwd_t.m, BLOCK_N=min(fwd_t.n, 64), **fwd_t.launch(),
        )  # fmt: skip
    shared = dict(  # what the dK/dV and dQ kernels share
        Q=q, K=k, V=v, DO=do, LSE=_or_dummy(lse, dummy), DELTA=delta, KPM=kpm_t, BIAS=_or_dummy(heads.bias, dummy),
        **_strides("q", q), **_strides("k", k), **_strides("v", v), **_strides("do", do), **common,
        scale=prob.scale, FAMILY=mode.family,
    )  # fmt: skip
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    for part in (DV_ONLY, DK_ONLY) if dkdv_t.split else (DKDV,):
        bwd_kernels.attn_bwd_dkdv[(triton.cdiv(S, dkdv_t.n), B * Hkv)](
            **shared, DK=dk, DV=dv, **_strides("dk", dk), BLOCK_M=dkdv_t.m, BLOCK_N=dkdv_t.n, PART=part,
            **dkdv_t.launch(),
        )  # fmt: skip
    dq = torch.empty_like(q)
    dbias_rows = torch.empty(B, H, T, dtype=torch.float32, device=dev) if mode.family == SIGMOID else dummy
    bwd_kernels.attn_bwd_dq[(triton.cdiv(T, dq_t.m), B * H)](
        **shared, DQ=dq, KB=_or_dummy(heads.kb, dummy), AUX1=aux1, DBIAS=dbias_rows, **_strides("dq", dq),
        SLOT=mode.slot, BLOCK_M=dq_t.m, BLOCK_N=dq_t.n, **dq_t.launch(),
    )  # fmt: skip
    dsink = dkb = dvb = dbias = None
    if mode.slot == LOGIT_SLOT:
        dsink = -aux1.sum(dim=(0, 2))  # d s_h = -sum_i p_sink,i delta_i
    elif mode.slot == KV_SLOT:
        dsink = aux1.sum(dim=(0, 2))  # the bias slot's logit: d s_h = sum_i dS_i'
        dkb = prob.scale * torch.einsum("bht,bhtd->hd", aux1, q.float())
        dvb = torch.einsum("bht,bhtd->hd", aux2, do.float())
    if mode.family == SIGMOID:
        dbias = dbias_rows.sum(dim=(0, 2))
    return dq, dk, dv, dsink, dkb, dvb, dbias


class FlashAttention(torch.autograd.Function):
    """Fused forward, fused backward; gradients to q, k, v and to the per-head parameters given as tensors."""

    @staticmethod
    def forward(ctx, q, k, v, sink, kb, vb, bias, kpm, prob: Problem):
        o, lse = forward(q, k, v, kpm, prob, Heads(sink, kb, vb, bias))
        ctx.save_for_backward(q, k, v, o, lse, sink, kb, vb, bias, kpm)
        ctx.prob = prob
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, sink, kb, vb, bias, kpm = ctx.saved_tensors
        grads = backward(q, k, v, o, lse, do, kpm, ctx.prob, Heads(sink, kb, vb, bias))
        return *grads, None, None


def column_stats(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor | None, keep: torch.Tensor | None, valid: torch.Tensor | None,
    prob: Problem, heads: Heads, *, entropy: bool, cfg: Config | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """(colsum [B, H, S] float32, entropy [B, H] float32 nats or None) over the rows that count, from the forward's
    base-2 row statistic ``lse`` (None for sigmoid). ``keep`` bool [B, S]: real keys (None = all); ``valid`` bool
    [B, T]: the rows that count (None = all; only with ``keep``)."""
    B, H, T, S = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    t = (cfg or config(q.shape[3])).colsum
    grid = (triton.cdiv(S, t.n), B * H)
    dummy = _dummies(q.device)[0]
    out = torch.empty(B, H, S, dtype=torch.float32, device=q.device)
    ent = torch.empty(B * H, grid[0], dtype=torch.float32, device=q.device) if entropy else dummy
    kpm = None if keep is None else keep.to(torch.int8).contiguous()
    rows = _kpm_or_dummy(None if valid is None else valid.to(torch.int8).contiguous(), q.device)
    colsum_kernels.colsum_kernel[grid](
        Q=q, K=k, LSE=_or_dummy(lse, dummy), BIAS=_or_dummy(heads.bias, dummy), OUT=out, ENT=ent,
        KPM=_kpm_or_dummy(kpm, q.device), VALID=rows, svalid=T if valid is not None else 0,
        **_strides("q", q), **_strides("k", k), **_common(q, k, kpm, prob),
        FAMILY=prob.mode.family, ENTROPY=entropy, HAS_VALID=valid is not None,
        BLOCK_M=t.m, BLOCK_N=t.n, num_warps=t.warps, num_stages=t.stages,
    )  # fmt: skip
    return out, (ent.view(B, H, -1).sum(-1) * math.log(2.0) if entropy else None)


def weights_at(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor | None, keep: torch.Tensor | None, prob: Problem,
    heads: Heads, *, rows: int, keys: list[int],
) -> torch.Tensor:  # fmt: skip
    """A [B, H, rows, len(keys)] float32: the weights of the first ``rows`` queries on the key positions ``keys``
    (0 where a query may not attend), from the forward's row statistic, in PyTorch (for a few columns or a pattern)."""
    H, T, S = q.shape[1], q.shape[2], k.shape[2]
    idx = torch.tensor(keys, dtype=torch.long, device=q.device)
    kc = k[:, :, idx].float().repeat_interleave(H // k.shape[1], dim=1)  # [B, H, C, D]
    s = (q[:, :, :rows].float() @ kc.transpose(-1, -2)) * prob.scale  # [B, H, R, C] natural
    family = prob.mode.family
    if family == SIGMOID:
        a = torch.sigmoid(s + heads.bias[None, :, None, None])
    else:
        s2, lse2 = s * LOG2E, lse[:, :, :rows, None]
        p = torch.exp2(s2 - lse2)
        if family == SOFTPICK:
            a = torch.where(s2 > 0, p - torch.exp2(-lse2), 0.0)
        elif family == CLIPPED:
            a = ((prob.p1 - prob.p0) * p + prob.p0).clamp(0.0, 1.0)
        else:
            a = p
    spec = MaskSpec(T, S, prob.causal, prob.window, None, None, q.device)
    rule = [spec.block(0, rows, j, j + 1)[0] for j in keys]  # [1, 1, R, 1] each, None without a position rule
    allowed = torch.cat(rule, dim=-1) if rule[0] is not None else torch.ones(1, 1, rows, len(keys), dtype=torch.bool)
    if keep is not None:
        allowed = allowed.to(q.device) & keep[:, None, None, idx]
    return a * allowed.to(q.device)


def _slot_logit(q: torch.Tensor, prob: Problem, heads: Heads) -> torch.Tensor:
    """The extra slot's logit in base 2, [1, H, 1] (LOGIT_SLOT) or [B, H, T] (KV_SLOT: q-dependent)."""
    logit = (heads.sink * LOG2E)[None, :, None]
    if prob.mode.slot == KV_SLOT:
        logit = logit + torch.einsum("bhtd,hd->bht", q.float(), heads.kb) * (prob.scale * LOG2E)
    return logit


def _sees_key(T: int, S: int, prob: Problem, keep: torch.Tensor | None, batch: int, device) -> torch.Tensor:
    """[B, T] bool: query i sees at least one real key, from prefix sums over ``keep`` [B, S] (O(S) memory)."""
    real = torch.ones(batch, S, dtype=torch.long, device=device) if keep is None else keep.long()
    prefix = torch.nn.functional.pad(real.cumsum(-1), (1, 0))  # [B, S + 1]: prefix[:, j] = real keys < j
    pos = torch.arange(T, device=device) + (S - T)  # each query's own key position
    hi = (pos + 1).clamp(0, S) if prob.causal else torch.full_like(pos, S)
    lo = torch.zeros_like(pos)
    if prob.window is not None:
        lo = (pos - prob.window + 1).clamp(0, S)
        if not prob.causal:
            hi = (pos + prob.window).clamp(0, S)
    return prefix[:, hi] > prefix[:, torch.minimum(lo, hi)]


def _natural_lse(q: torch.Tensor, lse: torch.Tensor, prob: Problem, heads: Heads) -> torch.Tensor:
    """[B, H, T] natural-log lse from the kernel's base-2 one (inf where a row sees no real key): -inf there, or
    the slot's own logit for KV_SLOT (its kernel marks such rows empty so that they give zeros and no gradient)."""
    empty = torch.isinf(lse)
    lse = lse * math.log(2.0)
    if prob.mode.slot == KV_SLOT:
        return torch.where(empty, _slot_logit(q, prob, heads) * math.log(2.0), lse)
    return lse.masked_fill(empty, -math.inf)


def statistics(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor | None, keep: torch.Tensor | None,
    key_padding: torch.Tensor | None, prob: Problem, heads: Heads, request: StatsRequest,
) -> AttentionStats:  # fmt: skip
    """``AttentionStats`` (``sinklab.ops.stats``) of one forward from its base-2 row statistic ``lse``: column sums
    and entropy in the column-sum kernel, the rest in PyTorch at O(B H T) cost. ``keep`` [B, S]: the keys the
    kernels masked with (None = all); ``key_padding`` [B, S]: the explicit padding that decides the valid rows."""
    B, T, S = q.shape[0], q.shape[2], k.shape[2]
    valid = query_validity(T, S, key_padding, B, q.device)  # [B, T]
    colsum = count = entropy = None
    if request.colsum or request.entropy:
        rows = None if key_padding is None else valid
        colsum, entropy = column_stats(q, k, lse, keep, rows, prob, heads, entropy=request.entropy)
    if request.colsum:
        count = key_counts(T, S, causal=prob.causal, window=prob.window, key_padding=key_padding, batch=B,
                           device=q.device)  # fmt: skip
        count = count if keep is None else count * keep  # keys an attn_mask hides too
    else:
        colsum = None
    slot = None
    if prob.mode.slot != NO_SLOT:  # exp(slot logit - lse) per row, summed over valid rows that see a key
        rows = valid & _sees_key(T, S, prob, keep, B, q.device)
        slot = (torch.exp2(_slot_logit(q, prob, heads) - lse) * rows[:, None, :]).sum(-1)
    w = min(request.pattern, T)  # A[:, :, :pattern, :pattern], as a slice: fewer rows or keys where T or S is short
    return AttentionStats(
        colsum=colsum,
        count=count,
        entropy=entropy,
        rows=valid.sum(-1),
        pattern=weights_at(q, k, lse, keep, prob, heads, rows=w, keys=list(range(min(request.pattern, S))))
        if request.pattern
        else None,
        slot=slot,
        lse=_natural_lse(q, lse, prob, heads) if request.lse and prob.mode.family == SOFTMAX else None,
        columns=weights_at(q, k, lse, keep, prob, heads, rows=T, keys=list(request.columns))
        if request.columns
        else None,
    )


def key_padding_of(
    q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None, key_padding: torch.Tensor | None, causal: bool,
    window: int | None,
) -> torch.Tensor | None:  # fmt: skip
    """bool [B, S] (True = real key): ``key_padding`` and an ``attn_mask`` that is key padding, combined; raises
    NotImplementedError for any other ``attn_mask``."""
    B, S = q.shape[0], k.shape[2]
    keep = None if key_padding is None else key_padding.bool().expand(B, S)
    if attn_mask is None:
        return keep
    spec = mask_spec(q, k, causal=causal, attn_mask=attn_mask, window=window)
    if spec.bias is not None and bool(spec.bias.ne(0).any()):
        raise NotImplementedError("an additive float attn_mask (the kernels take key padding)")
    if spec.keep is None:
        return keep
    if spec.keep.shape[1] != 1 or spec.keep.shape[2] != 1:
        raise NotImplementedError("an attn_mask that varies over heads or queries (the kernels take key padding)")
    pad = spec.keep[:, 0, 0, :].expand(B, S)
    return pad if keep is None else keep & pad


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the kernels cannot take these tensors (None if they can)."""
    if not (q.is_cuda or INTERPRET):
        return "not a CUDA tensor"
    if q.dtype not in (torch.float16, torch.bfloat16) and not INTERPRET:
        return f"dtype {q.dtype} (kernels take bfloat16 and float16)"
    if q.dtype != k.dtype or q.dtype != v.dtype:
        return "q, k, v dtypes differ"
    if q.shape[-1] > HEAD_DIMS[-1] or v.shape[-1] != q.shape[-1]:
        return f"head dim {q.shape[-1]} (kernels take up to {HEAD_DIMS[-1]}, equal for q, k, v)"
    return None


def _per_head(x: torch.Tensor | float, H: int, device: torch.device) -> torch.Tensor:
    """A per-head parameter (float, 0-d or [H] tensor) as float32 [H], differentiable. A Python number is filled
    on the device (``torch.as_tensor(x, device=cuda)`` would copy from the host and synchronize every call)."""
    if not isinstance(x, torch.Tensor):
        return torch.full((H,), float(x), dtype=torch.float32, device=device)
    return x.to(device).float().reshape(-1).expand(H).contiguous()


def _scalar(name: str, x: torch.Tensor | float) -> float:
    """A hyper-parameter as a float; NotImplementedError for a tensor that wants a gradient or is not a scalar."""
    if isinstance(x, torch.Tensor):
        if x.requires_grad or x.numel() != 1:
            raise NotImplementedError(f"{name} as a learnable or non-scalar tensor (the kernels take a float)")
        return float(x.item())
    return float(x)


def _resolve(variant: str, params: dict, q: torch.Tensor) -> tuple[Heads, float, float]:
    """(per-head tensors, p0, p1) of a mode from its resolved parameters."""
    H, D, dev = q.shape[1], q.shape[3], q.device
    if variant == "softmax1":
        return Heads(sink=torch.zeros(H, dtype=torch.float32, device=dev)), 0.0, 0.0
    if variant == "sink":
        return Heads(sink=_per_head(params["sink"], H, dev)), 0.0, 0.0
    if variant == "kv_bias":
        kb, vb = (params[n].to(dev).float().expand(H, D).contiguous() for n in ("k_bias", "v_bias"))
        return Heads(sink=_per_head(params["sink"], H, dev), kb=kb, vb=vb), 0.0, 0.0
    if variant == "softpick":
        return Heads(), _scalar("eps", params["eps"]), 0.0
    if variant == "clipped":
        return Heads(), _scalar("gamma", params["gamma"]), _scalar("zeta", params["zeta"])
    if variant == "sigmoid":
        return Heads(bias=_per_head(params["bias"], H, dev)), 0.0, 0.0
    return Heads(), 0.0, 0.0


@torch.compiler.disable(
    reason="sinklab's Triton kernels run as launched: inductor recompiling them failed on the H200 (torch 2.11)"
)
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    variant: str,
    causal: bool = True,
    attn_mask: torch.Tensor | None = None,
    key_padding: torch.Tensor | None = None,
    scale: float | None = None,
    window: int | None = None,
    stats: StatsRequest | None = None,
    **params,
) -> torch.Tensor | tuple[torch.Tensor, AttentionStats]:
    """The kernel mode ``variant`` (a key of ``MODES``) on q [B, H, T, D], k/v [B, Hkv, S, D] -> [B, H, T, D], or
    ``(out, AttentionStats)`` when ``stats`` is a ``StatsRequest``. ``params``: the mode's parameters, all given
    (``MODES[variant].params``). ``key_padding`` [B, S] bool (True = real token) masks keys and decides which
    queries count in the statistics; an ``attn_mask`` that is key padding masks keys only. Raises
    NotImplementedError(reason) for what the kernels do not take (module docstring)."""
    mode = MODES.get(variant)
    if mode is None:
        raise NotImplementedError(f"no kernel mode {variant!r} (modes: {', '.join(MODES)})")
    reason = unsupported(q, k, v)
    if reason is not None:
        raise NotImplementedError(reason)
    D = q.shape[-1]
    width = next(d for d in HEAD_DIMS if d >= D)
    if width != D:  # zero-padded to the kernels' head dim; the scale stays 1 / sqrt(D)
        pad = functools.partial(torch.nn.functional.pad, pad=(0, width - D))
        q, k, v = pad(q), pad(k), pad(v)
        params = {n: pad(x) if n in ("k_bias", "v_bias") else x for n, x in params.items()}  # [H, D] / [D]
        scale = 1.0 / math.sqrt(D) if scale is None else scale
        kw = dict(variant=variant, causal=causal, attn_mask=attn_mask, key_padding=key_padding, window=window)
        result = attention(q, k, v, scale=scale, stats=stats, **kw, **params)
        return result[..., :D] if stats is None else (result[0][..., :D], result[1])
    tensors = [x for x in (q, k, v, *params.values()) if isinstance(x, torch.Tensor)]
    if stats is not None and torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
        raise NotImplementedError("statistics together with gradients (the statistics path runs without autograd)")
    keep = key_padding_of(q, k, attn_mask, key_padding, causal, window)
    kpm = None if keep is None else keep.to(torch.int8).contiguous()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    heads, p0, p1 = _resolve(variant, params, q)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    prob = Problem(mode, bool(causal), window, scale, p0, p1)
    if stats is None:
        return FlashAttention.apply(q, k, v, *heads, kpm, prob)
    with torch.no_grad():
        out, lse = forward(q, k, v, kpm, prob, heads)
        explicit = None if key_padding is None else key_padding.bool().expand(q.shape[0], k.shape[2])
        return out, statistics(q, k, lse, keep, explicit, prob, heads, stats)
