"""``outlier``: massive activations (Sun et al. 2024) written into the sink's residual stream by a few weights make it
a sink (outlier circuits, Bondarenko et al. 2023).

Measured per sequence at the sink: the dim d* and layer of its largest |h|; the *writing layer* (the first layer
whose output reaches half of that dim's peak); the dims that are massive there (``metrics.massive_entries``: |x| >
100 and >= 1000x the median |h|; without one, the dims within 4x of the largest); what the attention and the MLP
modules add to those dims in that layer (after Gemma's post-norms where the block has them); and, for gated MLPs
(down(act(gate x) * up x)), the down-projection columns i with the largest contributions W_down[d, i] u_i.
Stability over texts: how often the writing layer and d* agree, and the coefficient of variation of the peak.

Interventions: clamp those dims at the sink to the median |x| of the other tokens there, at the writing layer only
(does the activation grow back in later layers?) and at every layer from it on; report loss and sink rate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sinklab.measure import metrics
from sinklab.measure.engine import find_layers
from sinklab.measure.probes._common import SINK, Baseline, Hooks, ProbeNotApplicable
from sinklab.measure.probes.context import ProbeContext

FALLBACK_FRACTION = 0.25
MAX_DIMS = 8
TOP_NEURONS = 5


def written(
    layer: nn.Module,
    attn: torch.Tensor | None,
    mlp: torch.Tensor,
    before: torch.Tensor | None = None,
    after: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """What the attention and MLP modules add to the residual stream: their outputs, through Gemma-style
    post-norms (``post_attention_layernorm`` / ``post_feedforward_layernorm``) where the block has both. A block
    without softmax attention (a hybrid's linear layer, ``attn`` None) gets its token mixer's write by difference,
    after - before - MLP write (x_out = x_in + mixer + MLP); None without the block's input ``before``."""
    post_attn = getattr(layer, "post_attention_layernorm", None)
    post_mlp = getattr(layer, "post_feedforward_layernorm", None)
    if post_mlp is not None and post_attn is not None:
        weight = next(layer.parameters())  # the recorded writes are on the CPU, the block where the model is
        with torch.no_grad():
            mlp = post_mlp(mlp.to(weight.device, weight.dtype)[None]).double()[0].cpu()
            attn = None if attn is None else post_attn(attn.to(weight.device, weight.dtype)[None]).double()[0].cpu()
    if attn is None and before is not None:
        attn = after - before - mlp
    return attn, mlp


def down_proj_contributions(mlp: nn.Module, x: torch.Tensor, dims: list[int], top: int = TOP_NEURONS) -> list[dict]:
    """Per dim d: the intermediate neurons i with the largest |W_down[d, i] u_i|, u = act(gate(x)) * up(x).

    Only for gated MLPs (Llama, Gemma, Mistral, Qwen naming); [] otherwise.
    """
    parts = [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")]
    if any(p is None for p in parts):
        return []
    gate, up, down, act = parts
    with torch.no_grad():
        xx = x.to(down.weight.device, down.weight.dtype)[None]  # the recorded MLP input is on the CPU
        u = (act(gate(xx)) * up(xx))[0].double().cpu()  # [I]
        weights = down.weight[dims].double().cpu()  # [k, I] the dims' rows, read from the device once
        rows = []
        for d, row in zip(dims, weights, strict=True):
            contrib = row * u  # [I]
            total = float(contrib.sum())
            idx = contrib.abs().topk(min(top, contrib.numel())).indices
            rows.append(
                {
                    "dim": d,
                    "mlp_output": total,
                    "neurons": idx.tolist(),
                    "contributions": [float(contrib[i]) for i in idx],
                    "share_of_output": [float(contrib[i]) / total if total else None for i in idx],
                    "down_proj_weights": [float(row[i]) for i in idx],
                    "activations": [float(u[i]) for i in idx],
                }
            )
    return rows


def locate(base: Baseline) -> dict:
    """Where the sink's largest activation is written, and in which dims (one sequence)."""
    resid = torch.stack([rec.resid for rec in base.layers])  # [L, d]
    mag = resid.abs()
    flat = int(mag.argmax())
    d_star = flat % mag.shape[1]
    track = mag[:, d_star]
    layer = int((track >= 0.5 * track.max()).nonzero()[0, 0])
    x = resid[layer]
    median = base.run.residual[layer].median_abs[0].double().cpu()
    massive = metrics.massive_entries(x, median)
    keep = massive if massive.any() else x.abs() >= FALLBACK_FRACTION * x.abs().max()
    dims = keep.nonzero()[:, 0]
    dims = dims[x[dims].abs().argsort(descending=True)][:MAX_DIMS].tolist()
    return {
        "layer": layer,
        "dim": d_star,
        "peak": float(resid.view(-1)[flat]),
        "peak_layer": int(track.argmax()),
        "dims": dims,
        "massive": bool(massive.any()),
        "median_abs": float(median),
        "track": track,
    }


def clamp_hooks(layers: range, dims: list[int]) -> Hooks:
    """Clamp the sink's ``dims`` at the output of each of ``layers`` to the median |x| of the other tokens there (the
    median, not the max: delimiters may carry massive activations in the same dims)."""
    index = torch.tensor(dims)

    def fn(hidden, ctx):  # [B, T, d]
        idx = index.to(hidden.device)
        others = hidden[:, SINK + 1 :, idx].abs().median(dim=1).values  # [B, k]
        hidden = hidden.clone()
        sink = hidden[:, SINK, idx]
        hidden[:, SINK, idx] = torch.maximum(torch.minimum(sink, others), -others)
        return hidden

    return {f"layers.{layer}.resid_post": [fn] for layer in layers}


@dataclass
class OutlierProbe:
    """Config of the outlier-circuit probe; ``run(ctx)`` returns its section of probes.json."""

    name: ClassVar[str] = "outlier"
    passes: ClassVar[tuple[str, ...]] = ("clamp_massive", "clamp_massive_all_layers")

    @staticmethod
    def check(ctx: ProbeContext) -> None:
        """ProbeNotApplicable where the blocks have no hookable MLP, or the softmax layers no attention module."""
        layers = ctx.baselines[0].layers
        if any(rec.mlp is None for rec in layers) or any(layers[i].attn is None for i in ctx.attention_layers):
            raise ProbeNotApplicable(
                "outlier: the blocks have no `mlp` and attention module the engine can hook (BERT-style blocks), so "
                "the attention-vs-MLP attribution does not apply"
            )

    def steps(self, ctx: ProbeContext) -> int:
        """Forward passes ``run`` will make (ProbeNotApplicable where it does not apply)."""
        self.check(ctx)
        return ctx.pending(self.passes)

    def run(self, ctx: ProbeContext) -> dict:
        self.check(ctx)
        blocks = find_layers(ctx.model)
        found = [locate(b) for b in ctx.baselines]
        layer = Counter(f["layer"] for f in found).most_common(1)[0][0]
        d_star = Counter(f["dim"] for f in found).most_common(1)[0][0]
        dim_votes = Counter(d for f in found for d in f["dims"])
        dims = [d for d, c in dim_votes.most_common() if c * 2 >= len(found)][:MAX_DIMS] or [d_star]
        peaks = torch.tensor([abs(f["peak"]) for f in found], dtype=torch.float64)
        per_sequence = []
        for base, f in zip(ctx.baselines, found, strict=True):
            rec = base.layers[f["layer"]]
            before = base.layers[f["layer"] - 1].resid if f["layer"] > 0 else None
            attn_w, mlp_w = written(blocks[f["layer"]], rec.attn, rec.mlp, before, rec.resid)
            mixer = "attention" if rec.attn is not None else "linear attention"
            per_sequence.append(
                {
                    "first_token": ctx.decode(base.run.ids[SINK]),
                    "write_layer": f["layer"],
                    "peak_layer": f["peak_layer"],
                    "dim": f["dim"],
                    "peak": f["peak"],
                    "massive": f["massive"],
                    "median_abs": f["median_abs"],
                    "dims": f["dims"],
                    "before": [float(before[d]) for d in f["dims"]] if before is not None else None,
                    "token_mixer": mixer,
                    "attn_writes": None if attn_w is None else [float(attn_w[d]) for d in f["dims"]],
                    "mlp_writes": [float(mlp_w[d]) for d in f["dims"]],
                    "after": [float(rec.resid[d]) for d in f["dims"]],
                    "written_by": None
                    if attn_w is None
                    else "mlp"
                    if abs(mlp_w[f["dim"]]) >= abs(attn_w[f["dim"]])
                    else mixer,
                }
            )
        best = max(range(len(found)), key=lambda i: abs(found[i]["peak"]) if found[i]["layer"] == layer else -1)
        neurons = down_proj_contributions(blocks[layer].mlp, ctx.baselines[best].layers[layer].mlp_in, dims)
        later = layer + 1 < ctx.num_layers
        before = max(float(b.run.sink_max[layer + 1 :].max()) for b in ctx.baselines) if later else None
        interventions = {}
        for name, layers, where in (
            ("clamp_massive", range(layer, layer + 1), f"at the output of layer {layer}"),
            ("clamp_massive_all_layers", range(layer, ctx.num_layers), f"at the output of every layer from {layer} on"),
        ):
            passes = ctx.intervene(name, lambda i, layers=layers: clamp_hooks(layers, dims))
            interventions[name] = {
                **ctx.effect(passes),
                "what": f"clamp dims {dims} of the first token {where} to the median |x| of the other tokens there",
                "sink_max_abs_later_layers": max(float(p.sink_max[layer + 1 :].max()) for p in passes)
                if later
                else None,
                "baseline_sink_max_abs_later_layers": before,
            }
        writers = Counter(p["written_by"] for p in per_sequence)
        return {
            "claim": "a massive activation written into the sink's residual stream by a few weights makes it a sink",
            "measured": {
                "write_layer": layer,
                "write_layer_agreement": sum(f["layer"] == layer for f in found) / len(found),
                "dim": d_star,
                "dim_agreement": sum(f["dim"] == d_star for f in found) / len(found),
                "dims": dims,
                "dim_frequency": {str(d): c / len(found) for d, c in dim_votes.most_common(MAX_DIMS)},
                "massive": any(f["massive"] for f in found),
                "written_by": writers.most_common(1)[0][0],
                "peak_abs_mean": float(peaks.mean()),
                "peak_abs_cv": float(peaks.std(unbiased=False) / peaks.mean()) if float(peaks.mean()) else None,
                "sink_dim_abs_by_layer": torch.stack([f["track"] for f in found]).mean(0),
                "down_proj": neurons,
                "other_positions": _other_massive(ctx),
                "per_sequence": per_sequence,
            },
            "interventions": interventions,
        }


def _other_massive(ctx: ProbeContext, limit: int = 10) -> list[dict]:
    """Massive activations on tokens other than the first (e.g. the first delimiter), counted over sequences; the
    ``limit`` most frequent, ties in position order (not in the order of a set of strings, which changes from one
    process to the next)."""
    hits: Counter = Counter()
    for base in ctx.baselines:
        seen = set()
        for res in base.run.residual.values():
            mask = metrics.massive_entries(res.top_value, res.median_abs[:, None])[0]
            for k in mask.nonzero()[:, 0].tolist():
                pos, dim = int(res.top_pos[0, k]), int(res.top_dim[0, k])
                if pos != SINK:
                    seen.add((pos, ctx.decode(base.run.ids[pos]), dim))
        hits.update(seen)
    top = sorted(hits.items(), key=lambda hit: (-hit[1], hit[0][0], hit[0][2]))[:limit]  # ties: by position, dim
    return [{"position": p, "token": t, "dim": d, "sequences": c} for (p, t, d), c in top]
