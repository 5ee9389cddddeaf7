"""``bias``: the sink acts as an implicit attention bias, a near-constant vector added to every query's output
(Sun et al. 2024, "Massive Activations in LLMs": an explicit k', v' bias per head replaces it; Gu et al. 2024).

Measured per layer: the sink's contribution to query t, c_t = [A^h_{t,0} v^h_0]_h (all heads concatenated, t >= 1),
its cosine to the mean c̄ and its coefficient of variation sqrt(mean_t ||c_t - c̄||^2) / ||c̄||; per head, the
coefficient of variation of A_{t,0} over queries (the direction of one head's contribution is fixed: v_0).

Intervention: replace c_t by c̄ (averaged over all sequences: one constant bias per head) for every query t >= 1,
o'_t = o_t - A_{t,0} v_0 + c̄, and compare its loss change with zeroing the sink (the ``zero_sink`` pass shared with
the noop probe). A bias-like sink keeps the loss under the mean and loses it under zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from sinklab.measure import metrics
from sinklab.measure.probes._common import SINK, kv_heads, sink_edit, zero_values
from sinklab.measure.probes.context import ProbeContext


def contributions(col: torch.Tensor, v_sink: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """[T-1, H, D] c_t = A_{t,0} v_0 per head for queries t >= 1, from col [H, T] and v_sink [Hkv, D]."""
    return (col[:, SINK + 1 :, None] * v_sink[kv][:, None, :]).transpose(0, 1)


def variation(c: torch.Tensor) -> tuple[float, float]:
    """(mean cosine of c_t to the mean, coefficient of variation) of contributions [T', H, D]."""
    flat = c.reshape(c.shape[0], -1)
    mean = flat.mean(0)
    norm = float(mean.norm())
    if norm == 0.0:
        return float("nan"), float("nan")
    cos = F.cosine_similarity(flat, mean[None], dim=1, eps=1e-30)
    spread = float((flat - mean).pow(2).sum(1).mean().sqrt())
    return float(cos.mean()), spread / norm


@dataclass
class BiasProbe:
    """Config of the implicit-bias probe; ``run(ctx)`` returns its section of probes.json."""

    name: ClassVar[str] = "bias"
    passes: ClassVar[tuple[str, ...]] = ("mean_sink", "zero_sink")

    def steps(self, ctx: ProbeContext) -> int:
        """Forward passes ``run`` will make (those another probe has not made yet)."""
        return ctx.pending(self.passes)

    def run(self, ctx: ProbeContext) -> dict:
        kv = kv_heads(ctx.model)
        L = ctx.num_layers
        cos = torch.zeros(L, dtype=torch.float64)
        cv = torch.zeros(L, dtype=torch.float64)
        head_cv = torch.zeros(L, ctx.num_heads, dtype=torch.float64)
        means = []
        for base in ctx.baselines:
            per_layer = []
            for layer, rec in enumerate(base.layers):
                c = contributions(rec.col, rec.v_sink, kv)  # [T-1, H, D]
                a, b = variation(c)
                cos[layer] += a
                cv[layer] += b
                col = rec.col[:, SINK + 1 :]
                head_cv[layer] += col.std(dim=1, unbiased=False) / col.mean(dim=1).clamp_min(1e-30)
                per_layer.append(c.mean(0))
            means.append(torch.stack(per_layer))  # [L, H, D]
        n = len(ctx.baselines)
        cos, cv, head_cv = cos / n, cv / n, head_cv / n
        mean = torch.stack(means).mean(0)
        every = torch.ones(L, ctx.num_heads, dtype=torch.bool)
        mean_pass = ctx.intervene("mean_sink", lambda i: sink_edit(ctx.model, every, mean, first_query=SINK + 1))
        zero_pass = ctx.intervene("zero_sink", lambda i: zero_values(L, SINK))
        interventions = {
            "mean_sink": {
                **ctx.effect(mean_pass),
                "what": "replace the sink's contribution A_t0 v_0 by its mean over queries and texts (a constant "
                "bias per head) in every layer and head, queries t >= 1",
            },
            "zero_sink": {
                **ctx.effect(zero_pass),
                "what": "reference: zero the first token's value vectors in every layer and head",
            },
        }
        alpha = ctx.baseline_alpha()
        sink = metrics.is_sink(alpha, ctx.eps)
        other = ~sink & ~alpha.isnan()  # NaN rows: blocks without softmax attention, never measured
        return {
            "claim": "the sink adds a near-constant vector (an implicit bias) to every query's output",
            "measured": {
                "cosine_to_mean_by_layer": cos,
                "cv_by_layer": cv,
                "alpha_cv_by_head": head_cv,
                "median_alpha_cv_sink_heads": float(head_cv[sink].median()) if sink.any() else None,
                "median_alpha_cv_other_heads": float(head_cv[other].median()) if other.any() else None,
                "mean_cosine_to_mean": float(cos.nanmean()),
                "mean_cv": float(cv.nanmean()),
            },
            "interventions": interventions,
        }
