"""What every probe shares: one observed forward pass, the baseline record at the sink, and the sink edits.

All probes run one sequence at a time (batch 1, no padding), so the sink is position ``SINK = 0``: Gu et al.'s
first token (k = 1). Everything goes through ``sinklab.measure.engine.Observer`` and its stable hook names.

- ``forward``: one pass -> per-token next-token cross-entropy (causal LMs only), the mean mass every key receives
  per (layer, head) (``metrics.mean_received``), and the largest |h| at the sink after each layer.
- ``Recorder``: the baseline hooks that keep, per layer, what the probes measure at the sink (attention column
  A_{t,0}, value and key geometry, module outputs at the sink, the MLP input at the sink, norm-weighted shares).
- ``sink_edit``: replace the sink's contribution A_{t,0} v_0 to chosen heads' outputs by a replacement (zero: the
  same as zeroing the sink's value vectors; a mean: a constant bias).
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sinklab.measure import metrics
from sinklab.measure.engine import AttentionContext, Observer, ResidualStats
from sinklab.measure.scanner import is_causal

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

    token_loss [T-1]: CE of predicting token t+1 at position t (None without an LM head); mass [L, H, T]: mean
    attention each key receives (Gu et al.'s alpha_k for key k); eligible [T]: keys seen by enough queries;
    sink_max [L]: max |h| at the sink after each layer; residual: the Observer's per-layer residual statistics.
    """

    ids: list[int]
    token_loss: torch.Tensor | None
    mass: torch.Tensor
    eligible: torch.Tensor
    sink_max: torch.Tensor
    residual: dict[int, ResidualStats] = field(default_factory=dict)

    @property
    def alpha(self) -> torch.Tensor:
        """[L, H] first-token mass alpha_1."""
        return self.mass[:, :, SINK]

    def sink_heads(self, eps: float) -> torch.Tensor:
        """[T] number of (layer, head) pairs in which each eligible key receives mean mass > eps."""
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


@torch.no_grad()
def forward(model, ids: list[int], hooks: Hooks | None = None, *, residual: bool = False) -> Pass:
    """Run ``model`` on one sequence inside an ``Observer`` with ``hooks``; see ``Pass``."""
    num_layers = model.config.num_hidden_layers
    device = next(model.parameters()).device
    sink_max = torch.zeros(num_layers, dtype=torch.float64)

    def record_max(layer):
        def fn(hidden, ctx):
            sink_max[layer] = float(hidden[0, SINK].detach().abs().max())

        return fn

    taps = {f"layers.{i}.resid_post": [record_max(i)] for i in range(num_layers)}
    x = torch.tensor([ids], device=device)
    token_loss = None
    with Observer(model, hooks=merge_hooks(hooks or {}, taps), residual=residual) as obs:
        if has_lm_head(model):
            logits = model(input_ids=x, **_forward_kwargs(model)).logits[0]
            token_loss = F.cross_entropy(logits[:-1].float(), x[0, 1:], reduction="none").cpu()
        else:
            model(input_ids=x, attention_mask=torch.ones_like(x), **_forward_kwargs(model))
        stats = [obs.attention[i] for i in range(num_layers)]
        mass = torch.stack([metrics.mean_received(s)[0].double().cpu() for s in stats])  # [L, H, T]
        eligible = metrics.eligible_keys(stats[0], min_queries(len(ids)))[0].cpu()
        res = dict(obs.residual)
    return Pass(ids, token_loss, mass, eligible, sink_max, res)


@dataclass
class LayerRecord:
    """What the baseline keeps of one layer at the sink (batch 1, float64 on CPU).

    col [H, T]: A_{t,0}; v_sink [Hkv, D]; vnorm [Hkv, T]: ||v_j||; share [H]: mean over t >= 1 of the sink's
    norm-weighted share A_{t,0}||v_0|| / sum_j A_{t,j}||v_j|| (Kobayashi et al. 2020); out_norm [H]: mean ||o_t||
    over t >= 1; k_cos [H, T]: cosine of each key to the mean query direction; k_norm [H, T]; cone [H]: mean cosine
    of the queries to their mean direction; attn, mlp, mlp_in, resid [d]: attention/MLP module outputs, MLP input
    and layer output at the sink; resid_mid [d]: the layer output at the middle token (a non-sink reference).
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


class _SinkTap:
    """Per layer: the sink's value vectors (qkv hook) and its attention column A_{t,0} (weights hook)."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.v_sink: dict[int, torch.Tensor] = {}  # [B, Hkv, D]
        self.col: dict[int, torch.Tensor] = {}  # [B, H, T]

    def qkv(self, layer: int):
        def fn(qkv, ctx: AttentionContext):
            q, _, v = qkv
            self.v_sink[layer] = v[:, :, SINK].detach()
            self.col[layer] = torch.zeros(q.shape[0], q.shape[1], q.shape[2], dtype=torch.float64, device=q.device)

        return fn

    def weights(self, layer: int):
        def fn(probs, ctx: AttentionContext):  # probs [B, H, R, K]
            (r0, r1), (lo, hi) = ctx.rows, ctx.keys
            if lo <= SINK < hi:
                self.col[layer][:, :, r0:r1] = probs[..., SINK - lo].double()

        return fn

    def hooks(self) -> Hooks:
        hooks: Hooks = defaultdict(list)
        for i in range(self.num_layers):
            hooks[f"layers.{i}.attn.qkv"].append(self.qkv(i))
            hooks[f"layers.{i}.attn.weights"].append(self.weights(i))
        return hooks

    def contribution(self, layer: int, kv: torch.Tensor) -> torch.Tensor:
        """[B, H, T, D] the sink's contribution A_{t,0} v_0 to every head's output."""
        v = self.v_sink[layer][:, kv.to(self.v_sink[layer].device)]  # [B, H, D]
        return self.col[layer][..., None] * v[:, :, None, :].double()


class Recorder(_SinkTap):
    """Baseline hooks: fill one ``LayerRecord`` per layer for the sequence being run (see ``LayerRecord``)."""

    def __init__(self, model):
        super().__init__(model.config.num_hidden_layers)
        self.kv = kv_heads(model)
        self.layers = [LayerRecord() for _ in range(self.num_layers)]
        self._vnorm_h: dict[int, torch.Tensor] = {}
        self._share: dict[int, torch.Tensor] = {}

    def qkv(self, layer: int):
        tap = super().qkv(layer)

        def fn(qkv, ctx):
            tap(qkv, ctx)
            q, k, v = (t[0].detach().double() for t in qkv)  # q [H, T, D], k, v [Hkv, T, D]
            rec = self.layers[layer]
            rec.v_sink = v[:, SINK].cpu()
            rec.vnorm = v.norm(dim=-1).cpu()
            self._vnorm_h[layer] = v.norm(dim=-1)[self.kv.to(v.device)]  # [H, T]
            self._share[layer] = torch.zeros(q.shape[0], dtype=torch.float64, device=q.device)
            q_unit = F.normalize(q, dim=-1)
            q_mean = F.normalize(q_unit.mean(dim=1), dim=-1)  # [H, D] the query cone's axis
            keys = k[self.kv.to(k.device)]  # [H, T, D]
            rec.cone = (q_unit @ q_mean[:, :, None])[..., 0].mean(dim=1).cpu()
            rec.k_cos = (F.normalize(keys, dim=-1) @ q_mean[:, :, None])[..., 0].cpu()
            rec.k_norm = keys.norm(dim=-1).cpu()

        return fn

    def weights(self, layer: int):
        tap = super().weights(layer)

        def fn(probs, ctx):
            tap(probs, ctx)
            r0, (lo, hi) = ctx.rows[0], ctx.keys
            if not lo <= SINK < hi:
                return
            vn = self._vnorm_h[layer][:, lo:hi]  # [H, K]
            p = probs[0].double()  # [H, R, K]
            total = (p * vn[:, None, :]).sum(-1)  # [H, R]
            share = p[..., SINK - lo] * vn[:, SINK - lo, None] / total.clamp_min(1e-30)
            first = max(r0, SINK + 1)
            self._share[layer] += share[:, first - r0 :].sum(-1)

        return fn

    def _out(self, layer: int):
        def fn(out, ctx):  # [B, H, T, D]
            rec = self.layers[layer]
            T = out.shape[2]
            rec.out_norm = out[0, :, SINK + 1 :].detach().double().norm(dim=-1).mean(dim=-1).cpu()
            rec.share = (self._share[layer] / max(1, T - SINK - 1)).cpu()
            rec.col = self.col[layer][0].cpu()

        return fn

    def _at_sink(self, layer: int, attr: str):
        def fn(tensor, ctx):  # [B, T, d]
            setattr(self.layers[layer], attr, tensor[0, SINK].detach().double().cpu())
            if attr == "resid":
                self.layers[layer].resid_mid = tensor[0, tensor.shape[1] // 2].detach().double().cpu()

        return fn

    def hooks(self) -> Hooks:
        hooks = super().hooks()
        for i in range(self.num_layers):
            hooks[f"layers.{i}.attn.out"].append(self._out(i))
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


def record(model, ids: list[int]) -> Baseline:
    """Run the baseline pass of one sequence with the ``Recorder`` attached."""
    rec = Recorder(model)
    run = forward(model, ids, rec.hooks(), residual=True)
    return Baseline(run, rec.layers)


def sink_edit(
    model,
    heads: torch.Tensor,
    replacement: torch.Tensor | None = None,
    first_query: int = SINK,
) -> Hooks:
    """Hooks that replace the sink's contribution A_{t,0} v_0 by ``replacement`` in the chosen heads.

    ``heads`` [L, H] bool; ``replacement`` [L, H, D] (None = zero: the same as zeroing the sink's value vectors
    for those heads); queries t < ``first_query`` keep their output. o'_t = o_t - A_{t,0} v_0 + b.
    """
    kv = kv_heads(model)
    tap = _SinkTap(model.config.num_hidden_layers)
    hooks = tap.hooks()

    def out_hook(layer: int):
        def fn(out, ctx):  # [B, H, T, D]
            chosen = heads[layer].to(out.device)
            if not bool(chosen.any()):
                return None
            delta = -tap.contribution(layer, kv)  # [B, H, T, D]
            if replacement is not None:
                delta = delta + replacement[layer].to(out.device, torch.float64)[None, :, None, :]
            delta[:, :, :first_query] = 0.0
            delta = delta * chosen[None, :, None, None]
            return out + delta.to(out.dtype)

        return fn

    for i in range(model.config.num_hidden_layers):
        hooks[f"layers.{i}.attn.out"].append(out_hook(i))
    return hooks


def aligned_delta(base: Pass, new: Pass, base_slice: slice, new_slice: slice) -> dict:
    """Loss of the same target tokens in two passes whose inputs differ: the two slices of ``token_loss``."""
    if base.token_loss is None or new.token_loss is None:
        return {"loss": None, "baseline_loss": None, "loss_delta": None}
    b = float(base.token_loss[base_slice].double().mean())
    n = float(new.token_loss[new_slice].double().mean())
    return {"loss": n, "baseline_loss": b, "loss_delta": n - b}


def rounded(x, digits: int = 5):
    """JSON-friendly: tensors to nested lists, floats rounded."""
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool:
            return x.tolist()
        if x.is_floating_point():
            return torch.round(x.double(), decimals=digits).tolist()
        return x.tolist()
    if isinstance(x, float):
        return round(x, digits)
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
