"""What every probe shares: one observed forward pass, the baseline record at the sink, and the sink edits.

All probes run sequences without padding (one at a time, or equal-length batches), so the sink is position
``SINK = 0``: Gu et al.'s first token (k = 1). Everything goes through the model's attention sites
(``sinklab.hf``) and their stable hook names.

- ``forward`` / ``forward_batch``: one pass -> per-token next-token cross-entropy (causal LMs only), the first
  token's mass alpha_1 per (layer, head), on request the mean mass every key receives (``metrics.mean_received``),
  and the largest |h| at the sink after each layer. ``PassObserver`` says what it reads and how: the fused fast
  path (PyTorch's CPU attention kernel and its row logsumexp) or its twin, the site's own attention with statistics.
- ``Recorder``: the baseline hooks that keep, per layer, what the probes measure at the sink (attention column
  A_{t,0}, value and key geometry, module outputs at the sink, the MLP input at the sink, norm-weighted shares).
- ``sink_edit``: replace the sink's contribution A_{t,0} v_0 to chosen heads' outputs by a replacement (zero: the
  same as zeroing the sink's value vectors; a mean: a constant bias).
"""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from sinklab.hf import AttentionCall
from sinklab.measure import metrics
from sinklab.measure.engine import ResidualStats, release_freed_memory, residual_stats
from sinklab.measure.scanner import is_causal
from sinklab.method import Method
from sinklab.ops.colsum import fused
from sinklab.ops.stats import StatsRequest, key_counts

SINK = 0
Hooks = dict[str, list[Callable]]


class ProbeNotApplicable(Exception):
    """A probe cannot run on this model; the message says why (the runner reports it and runs the others)."""


def merge_hooks(*many: Hooks) -> Hooks:
    merged: Hooks = defaultdict(list)
    for hooks in many:
        for name, fns in hooks.items():
            merged[name].extend(fns)
    return merged


def has_lm_head(model) -> bool:
    """Next-token cross-entropy needs a causal model with an output embedding (LM head)."""
    get = getattr(model, "get_output_embeddings", None)
    return is_causal(model) and get is not None and get() is not None


def head_map(num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """[H] KV head of each query head (transformers' ``repeat_kv``: query heads g*G .. g*G+G-1 share KV head g)."""
    return torch.arange(num_heads) // (num_heads // num_kv_heads)


def kv_heads(model) -> torch.Tensor:
    """[H] KV head of each query head of ``model``."""
    cfg = model.config
    return head_map(cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)


def _forward_kwargs(model) -> dict:
    params = inspect.signature(model.forward).parameters
    return {"use_cache": False} if "use_cache" in params else {}


def min_queries(length: int) -> int:
    """Keys fewer queries can see are never called sinks (the rule ``scan`` uses)."""
    return max(1, min(32, length // 4))


@dataclass
class Pass:
    """One observed forward pass over one sequence.

    token_loss [T-1]: CE of predicting token t+1 at position t (None without an LM head); alpha [L, H]: first-token
    mass alpha_1 (Gu et al. 2024); sink_max [L]: max |h| at the sink after each layer. Passes run with ``mass``
    also have mass [L, H, T]: mean attention each key receives (Gu et al.'s alpha_k for key k) and eligible [T]: keys
    seen by enough queries; the baseline has residual: the per-layer residual statistics (``ResidualStats``).
    """

    ids: list[int]
    token_loss: torch.Tensor | None
    alpha: torch.Tensor
    sink_max: torch.Tensor
    mass: torch.Tensor | None = None
    eligible: torch.Tensor | None = None
    residual: dict[int, ResidualStats] = field(default_factory=dict)

    def key_mass(self, position: int) -> torch.Tensor:
        """[L, H] mean mass key ``position`` receives (alpha_1 at the sink)."""
        if position == SINK:
            return self.alpha
        if self.mass is None:
            raise ValueError("this pass kept the first token's mass only; run it with mass=True")
        return self.mass[:, :, position]

    def sink_heads(self, eps: float) -> torch.Tensor:
        """[T] number of (layer, head) pairs in which each eligible key receives mean mass > eps."""
        if self.mass is None:
            raise ValueError("this pass kept the first token's mass only; run it with mass=True")
        return (metrics.is_sink(self.mass, eps) & self.eligible).sum(dim=(0, 1))

    def top_sink(self, eps: float) -> tuple[int | None, int]:
        """(position, heads) of the key that is a sink in the most heads (lowest position on ties; None if none)."""
        heads = self.sink_heads(eps)
        pos = int(heads.argmax())
        return (pos if int(heads[pos]) else None), int(heads[pos])

    def loss(self, start: int = 0, stop: int | None = None) -> float | None:
        """Mean CE over the predictions made at positions start..stop-1."""
        if self.token_loss is None:
            return None
        return float(self.token_loss[start:stop].double().mean())


def fused_applies(call: AttentionCall) -> bool:
    """Whether the fused kernel computes ``call`` exactly as the site would: the model's own softmax (no variant, no
    learned sink logits, no softcap, no dropout) where ``sinklab.ops.colsum.fused`` applies (float32 on the CPU, no
    mask beyond the causal rule, as many keys as queries)."""
    return (
        call.site.sites.variant is None
        and call.sinks is None
        and call.softcap is None
        and not call.dropout
        and fused.applies(
            call.query, call.key, call.value, StatsRequest(), attn_mask=call.attn_mask, key_padding=call.key_padding,
            window=call.window,
        )
    )  # fmt: skip


def sink_column(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, scale: float) -> torch.Tensor:
    """[B, H, T] float64 A_{t,0} = exp(scale q_t . k_0 - lse_t) from the rows' logsumexp lse [B, H, T] (every query
    sees the first key: causal or full attention, no padding); q [B, H, T, D], k [B, Hkv, S, D]."""
    k0 = k[:, :, SINK].repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # [B, H, D]
    scores = scale * torch.einsum("bhtd,bhd->bht", q.double(), k0.double())
    return (scores - lse.double()).exp()


class PassObserver(Method):
    """What one probe pass reads of every attention call, per layer (batch of B sequences):

    col [B, H, T] float64: the sink's column A_{t,0}; alpha [B, H]: its mean over the queries that may attend it;
    count [B, S]: those queries per key; with ``mass``: mass [B, H, S], the mean each key receives; with ``share``:
    den [B, H, T] = sum_j A_{t,j} ||v_j|| (the norm-weighted denominator of Kobayashi et al. 2020); sink_max [B, L]:
    max |h| at the sink after each layer; with ``residual``: the Observer's ``ResidualStats`` of each layer.

    ``fused`` (the fast path): where ``fused_applies``, an ``attn.compute`` hook runs PyTorch's fused CPU kernel, which
    returns the rows' logsumexp, and derives A_{t,0} from it (``sink_column``), the column sums from the same kernel
    on the transposed problem (``ops.colsum.fused.transposed``) and ``den`` from one extra value dimension ||v_j||.
    Its twin, and
    the path for every other call: the site's own attention (the chunked pass on the CPU, the Triton kernels on
    CUDA) with ``StatsRequest(colsum, columns=(0,))`` and, for ``den``, a weights hook. The fused path is taken only
    while no other method is attached to the model. Not a registered method: probes build it per pass.
    """

    kind = "measure"

    def __init__(
        self,
        num_layers: int,
        hooks: Hooks | None = None,
        *,
        mass: bool = False,
        share: bool = False,
        residual: bool = False,
        fused: bool = True,
        batch: int = 1,
    ):
        self.num_layers, self.want_mass, self.want_share, self.want_residual = num_layers, mass, share, residual
        self.fused = fused
        self.user_hooks = hooks or {}
        self.col: dict[int, torch.Tensor] = {}
        self.alpha: dict[int, torch.Tensor] = {}
        self.count: dict[int, torch.Tensor] = {}
        self.mass: dict[int, torch.Tensor] = {}
        self.den: dict[int, torch.Tensor] = {}
        self.residual: dict[int, ResidualStats] = {}
        self.fused_layers: set[int] = set()
        self.sink_max = torch.zeros(batch, num_layers, dtype=torch.float64)
        self._vnorm: dict[int, torch.Tensor] = {}
        self._alone = False

    def install(self, model_sites) -> None:
        self._alone = len(model_sites.owners) == 1  # only then may a compute hook replace the site's attention
        for name, fns in self.user_hooks.items():
            for fn in fns:
                model_sites.add(self, name, fn)
        model_sites.ask(self, StatsRequest(colsum=True, entropy=False, columns=(SINK,)))
        for site in model_sites.attention:
            if self.want_share:
                model_sites.add(self, f"{site.name}.qkv", self._value_norms(site.layer))
                model_sites.add(self, f"{site.name}.weights", self._share(site.layer))
            model_sites.add(self, f"{site.name}.compute", self._compute)
            model_sites.add(self, f"{site.name}.stats", self._stats)
        for i in range(self.num_layers):
            model_sites.add(self, f"layers.{i}.resid_post", self._resid(i))

    # -- the site's own path (the twin) ---------------------------------------------------------------------------
    def _value_norms(self, layer: int):
        def fn(qkv, call):
            q, _, v = qkv
            kv = head_map(q.shape[1], v.shape[1]).to(v.device)
            self._vnorm[layer] = v.detach().double().norm(dim=-1)[:, kv]  # [B, H, S]
            self.den[layer] = torch.ones(q.shape[0], q.shape[1], q.shape[2], dtype=torch.float64, device=q.device)

        return fn

    def _share(self, layer: int):
        def fn(probs, call):  # [B, H, R, K] whole rows
            (r0, r1), (lo, hi) = call.rows, call.keys
            if lo <= SINK < hi:
                vn = self._vnorm[layer][:, :, lo:hi]  # [B, H, K]
                self.den[layer][:, :, r0:r1] = (probs.double() * vn[:, :, None, :]).sum(-1)

        return fn

    def _stats(self, stats, call: AttentionCall) -> None:
        mass = metrics.mean_received(stats).double()  # [B, H, S]
        self.col[call.layer] = stats.columns[..., 0].double()
        self.count[call.layer] = stats.count
        self.alpha[call.layer] = mass[:, :, SINK]
        if self.want_mass:
            self.mass[call.layer] = mass

    # -- the fused path -----------------------------------------------------------------------------------------------
    def _compute(self, call: AttentionCall) -> torch.Tensor | None:
        if not (self.fused and self._alone and fused_applies(call)):
            return None
        q, k, v = call.query, call.key, call.value
        B, H, T, D = q.shape
        flash = fused.cpu_kernel()
        if self.want_share:  # one extra value dimension carries ||v_j||; q and k get a zero one (same head size)
            pad = [q.new_zeros(B, H, T, 1), k.new_zeros(*k.shape[:3], 1)]
            wide, lse = flash(
                torch.cat([q, pad[0]], -1),
                torch.cat([k, pad[1]], -1),
                torch.cat([v, v.norm(dim=-1, keepdim=True)], -1),
                0.0,
                call.causal,
                scale=call.scale,
            )
            out, self.den[call.layer] = wide[..., :D], wide[..., D].double()
        else:
            out, lse = flash(q, k, v, 0.0, call.causal, scale=call.scale)
        col = sink_column(q, k, lse, call.scale)
        count = key_counts(T, T, causal=call.causal, window=None, key_padding=None, batch=B, device=q.device)
        self.col[call.layer], self.count[call.layer] = col, count
        self.alpha[call.layer] = col.sum(-1) / count[:, None, SINK].clamp_min(1)
        if self.want_mass:
            colsum = fused.transposed(q, k, lse, call.scale, call.causal)[0].double()
            self.mass[call.layer] = colsum / count[:, None, :].clamp_min(1)
        self.fused_layers.add(call.layer)
        return out

    def _resid(self, layer: int):
        def fn(hidden, call: AttentionCall) -> None:
            self.sink_max[:, layer] = hidden[:, SINK].detach().abs().amax(-1).double().cpu()
            if self.want_residual:
                padding = call.key_padding
                valid = None if padding is None else padding[:, -hidden.shape[1] :]
                self.residual[layer] = residual_stats(hidden, valid)

        return fn


HookSpec = Hooks | Callable[[PassObserver], Hooks] | None


@torch.no_grad()
def forward_batch(
    model,
    batch: list[list[int]],
    hooks: HookSpec = None,
    *,
    mass: bool = False,
    share: bool = False,
    residual: bool = False,
    fused: bool = True,
) -> list[Pass]:
    """Run ``model`` on equal-length sequences (one batch, no padding) with ``hooks`` (a dict, or a function of the
    pass's ``PassObserver`` for hooks that read the sink's column); one ``Pass`` per sequence. ``mass``: every key's
    mass (else alpha_1 only); ``share``: the norm-weighted denominators; ``residual``: residual statistics;
    ``fused``: the fast path (see ``PassObserver``)."""
    if len({len(ids) for ids in batch}) != 1:
        raise ValueError("a batch needs sequences of one length")
    num_layers = model.config.num_hidden_layers
    device = next(model.parameters()).device
    obs = PassObserver(num_layers, mass=mass, share=share, residual=residual, fused=fused, batch=len(batch))
    obs.user_hooks = hooks(obs) if callable(hooks) else (hooks or {})
    x = torch.tensor(batch, device=device)
    token_loss: list[torch.Tensor | None] = [None] * len(batch)
    with obs(model):
        if has_lm_head(model):
            logits = model(input_ids=x, **_forward_kwargs(model)).logits
            token_loss = [
                F.cross_entropy(logits[b, :-1].float(), x[b, 1:], reduction="none").cpu() for b in range(len(batch))
            ]
            del logits
        else:
            model(input_ids=x, attention_mask=torch.ones_like(x), **_forward_kwargs(model))
    release_freed_memory(device)
    alpha = per_layer(obs.alpha, num_layers)  # [B, L, H]
    all_mass = per_layer(obs.mass, num_layers) if mass else None  # [B, L, H, T]
    eligible = (obs.count[min(obs.count)] >= min_queries(x.shape[1])).cpu()  # [B, T] (the first site's, as scan)
    res = [{i: _row(r, b) for i, r in obs.residual.items()} for b in range(len(batch))]
    return [
        Pass(
            ids,
            token_loss[b],
            alpha[b],
            obs.sink_max[b].clone(),
            None if all_mass is None else all_mass[b],
            eligible[b] if mass else None,
            res[b],
        )
        for b, ids in enumerate(batch)
    ]


def per_layer(values: dict[int, torch.Tensor], num_layers: int) -> torch.Tensor:
    """[B, L, ...] on the CPU from per-layer [B, ...] values; NaN for the blocks without softmax attention (a
    hybrid's linear layers), which ``metrics.sink_rate`` and ``is_sink`` skip."""
    blank = torch.full_like(next(iter(values.values())), float("nan"))
    return torch.stack([values.get(i, blank).cpu() for i in range(num_layers)], dim=1)


def _row(stats: ResidualStats, b: int) -> ResidualStats:
    """Sequence ``b`` of batched residual statistics, kept as a batch of one."""
    return ResidualStats(*(getattr(stats, f.name)[b : b + 1] for f in fields(stats)))


def forward(model, ids: list[int], hooks: HookSpec = None, **kw) -> Pass:
    """``forward_batch`` on one sequence."""
    return forward_batch(model, [ids], hooks, **kw)[0]


ATTENTION_FIELDS = ("col", "v_sink", "vnorm", "share", "out_norm", "k_cos", "k_norm", "cone")


@dataclass
class LayerRecord:
    """What the baseline keeps of one layer at the sink (batch 1, float64 on CPU).

    col [H, T]: A_{t,0}; v_sink [Hkv, D]; vnorm [Hkv, T]: ||v_j||; share [H]: mean over t >= 1 of the sink's
    norm-weighted share A_{t,0}||v_0|| / sum_j A_{t,j}||v_j|| (Kobayashi et al. 2020); out_norm [H]: mean ||o_t||
    over t >= 1; k_cos [H, T]: cosine of each key to the mean query direction; k_norm [H, T]; cone [H]: mean cosine
    of the queries to their mean direction; attn, mlp, mlp_in, resid [d]: attention/MLP module outputs, MLP input
    and layer output at the sink; resid_mid [d]: the layer output at the middle token (a non-sink reference).
    A block without softmax attention has NaN ``ATTENTION_FIELDS`` and no ``attn`` (``Recorder.blank_unobserved``).
    """

    col: torch.Tensor | None = None
    v_sink: torch.Tensor | None = None
    vnorm: torch.Tensor | None = None
    share: torch.Tensor | None = None
    out_norm: torch.Tensor | None = None
    k_cos: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    cone: torch.Tensor | None = None
    attn: torch.Tensor | None = None
    mlp: torch.Tensor | None = None
    mlp_in: torch.Tensor | None = None
    resid: torch.Tensor | None = None
    resid_mid: torch.Tensor | None = None


class Recorder:
    """Baseline hooks: fill one ``LayerRecord`` per layer for the sequence being run (see ``LayerRecord``); the
    sink's column and the share's denominators come from the pass's ``PassObserver``."""

    def __init__(self, model):
        self.num_layers = model.config.num_hidden_layers
        self.kv = kv_heads(model)
        self.layers = [LayerRecord() for _ in range(self.num_layers)]

    def _qkv(self, layer: int):
        def fn(qkv, ctx):
            q, k, v = (t[0].detach().double() for t in qkv)  # q [H, T, D], k, v [Hkv, T, D]
            rec = self.layers[layer]
            rec.v_sink = v[:, SINK].cpu()
            rec.vnorm = v.norm(dim=-1).cpu()
            q_unit = F.normalize(q, dim=-1)
            q_mean = F.normalize(q_unit.mean(dim=1), dim=-1)  # [H, D] the query cone's axis
            keys = k[self.kv.to(k.device)]  # [H, T, D]
            rec.cone = (q_unit @ q_mean[:, :, None])[..., 0].mean(dim=1).cpu()
            rec.k_cos = (F.normalize(keys, dim=-1) @ q_mean[:, :, None])[..., 0].cpu()
            rec.k_norm = keys.norm(dim=-1).cpu()

        return fn

    def _out(self, obs: PassObserver, layer: int):
        def fn(out, ctx):  # [B, H, T, D]
            rec = self.layers[layer]
            T = out.shape[2]
            col = obs.col[layer][0]  # [H, T]
            v0 = rec.vnorm[self.kv, SINK].to(col.device)  # [H] ||v_0|| of each query head's KV head
            share = col * v0[:, None] / obs.den[layer][0].clamp_min(1e-30)  # [H, T]
            rec.out_norm = out[0, :, SINK + 1 :].detach().double().norm(dim=-1).mean(dim=-1).cpu()
            rec.share = (share[:, SINK + 1 :].sum(-1) / max(1, T - SINK - 1)).cpu()
            rec.col = col.cpu()

        return fn

    def _at_sink(self, layer: int, attr: str):
        def fn(tensor, ctx):  # [B, T, d]
            setattr(self.layers[layer], attr, tensor[0, SINK].detach().double().cpu())
            if attr == "resid":
                self.layers[layer].resid_mid = tensor[0, tensor.shape[1] // 2].detach().double().cpu()

        return fn

    def blank_unobserved(self) -> None:
        """NaN attention geometry for the blocks without softmax attention (a hybrid's linear layers), shaped as an
        observed layer's: every per-head statistic of the probes is NaN there and the sink rule never fires on it.
        ``attn`` stays None: such a block has no softmax attention output."""
        seen = next(r for r in self.layers if r.col is not None)
        for rec in self.layers:
            if rec.col is None:
                for name in ATTENTION_FIELDS:
                    setattr(rec, name, torch.full_like(getattr(seen, name), float("nan")))

    def hooks(self, obs: PassObserver) -> Hooks:
        hooks: Hooks = defaultdict(list)
        for i in range(self.num_layers):
            hooks[f"layers.{i}.attn.qkv"].append(self._qkv(i))
            hooks[f"layers.{i}.attn.out"].append(self._out(obs, i))
            hooks[f"layers.{i}.attn_block"].append(self._at_sink(i, "attn"))
            hooks[f"layers.{i}.mlp"].append(self._at_sink(i, "mlp"))
            hooks[f"layers.{i}.mlp_in"].append(self._at_sink(i, "mlp_in"))
            hooks[f"layers.{i}.resid_post"].append(self._at_sink(i, "resid"))
        return hooks


@dataclass
class Baseline:
    """The unmodified pass and the sink record of one sequence."""

    run: Pass
    layers: list[LayerRecord]


def record(model, ids: list[int], *, residual: bool = True, fused: bool = True) -> Baseline:
    """Run the baseline pass of one sequence with the ``Recorder`` attached (every key's mass, the norm-weighted
    shares, and with ``residual`` the residual statistics)."""
    rec = Recorder(model)
    run = forward(model, ids, rec.hooks, mass=True, share=True, residual=residual, fused=fused)
    rec.blank_unobserved()
    return Baseline(run, rec.layers)


def sink_edit(
    model,
    heads: torch.Tensor,
    replacement: torch.Tensor | None = None,
    first_query: int = SINK,
) -> Callable[[PassObserver], Hooks]:
    """Hooks that replace the sink's contribution A_{t,0} v_0 by ``replacement`` in the chosen heads.

    ``heads`` [L, H] bool; ``replacement`` [L, H, D] (None = zero: the same as zeroing the sink's value vectors
    for those heads); queries t < ``first_query`` keep their output. o'_t = o_t - A_{t,0} v_0 + b. A function of
    the pass's ``PassObserver``, which holds A_{t,0}.
    """
    kv = kv_heads(model)

    def build(obs: PassObserver) -> Hooks:
        def out_hook(layer: int):
            def fn(out, call):  # [B, H, T, D]
                chosen = heads[layer].to(out.device)
                if not bool(chosen.any()):
                    return None
                v0 = call.value[:, :, SINK][:, kv.to(out.device)].double()  # [B, H, D]
                delta = -(obs.col[layer][..., None] * v0[:, :, None, :])  # [B, H, T, D]
                if replacement is not None:
                    delta = delta + replacement[layer].to(out.device, torch.float64)[None, :, None, :]
                delta[:, :, :first_query] = 0.0
                delta = delta * chosen[None, :, None, None]
                return out + delta.to(out.dtype)

            return fn

        return {f"layers.{i}.attn.out": [out_hook(i)] for i in range(model.config.num_hidden_layers)}

    return build


def aligned_delta(base: Pass, new: Pass, base_slice: slice, new_slice: slice) -> dict:
    """Loss of the same target tokens in two passes whose inputs differ: the two slices of ``token_loss``."""
    if base.token_loss is None or new.token_loss is None:
        return {"loss": None, "baseline_loss": None, "loss_delta": None}
    b = float(base.token_loss[base_slice].double().mean())
    n = float(new.token_loss[new_slice].double().mean())
    return {"loss": n, "baseline_loss": b, "loss_delta": n - b}


RECORD_DIGITS = 5  # the decimals a probe record keeps


def rounded(x, digits: int = RECORD_DIGITS):
    """JSON-friendly: tensors to nested lists, floats rounded, NaN (a block without softmax attention) None."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point():
            return rounded(torch.round(x.double(), decimals=digits).tolist(), digits)
        return x.tolist()
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, digits)
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [rounded(v, digits) for v in x]
    return x


def zero_values(num_layers: int, position: int) -> Hooks:
    """Hooks that zero the value vectors of token ``position`` in every layer and KV head (qkv hook)."""

    def fn(qkv, ctx):
        q, k, v = qkv
        v = v.clone()
        v[:, :, position] = 0.0
        return q, k, v

    return {f"layers.{i}.attn.qkv": [fn] for i in range(num_layers)}
