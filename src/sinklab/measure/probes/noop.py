"""``noop``: softmax must put its mass somewhere, so a head with nothing to add parks it on a sink whose value is
(near) zero.

Measured per (layer, head): alpha_1 (Gu et al. 2024), the sink's value norm over the median value norm of the other
tokens (Sun et al. 2024 / Bondarenko et al. 2023: no-op heads attend to a token with a tiny value), the sink's
norm-weighted share of the head's output, mean_t A_{t,0}||v_0|| / sum_j A_{t,j}||v_j|| (Kobayashi et al. 2020),
and the head's output norm over the median value norm. A head is *dormant* when alpha_1 > eps and its output is
shorter than ``dormant_ratio`` times a typical value (it writes almost nothing; Guo et al. 2024, "Active-dormant
attention heads"). Both rules live in ``sinklab.measure.metrics`` (``value_norm_ratio``, ``dormant_heads``).

Interventions: zero the sink's value vectors everywhere; only in the dormant heads (o_t -= A_{t,0} v_0); and, as a
control, zero the values of the middle token. A small loss change means the sink's value carried nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from sinklab.measure import metrics
from sinklab.measure.probes._common import SINK, kv_heads, sink_edit, zero_values
from sinklab.measure.probes.context import ProbeContext


@dataclass
class NoopProbe:
    """Config of the no-op probe; ``run(ctx)`` returns its section of probes.json."""

    dormant_ratio: float = metrics.DORMANT_OUTPUT_RATIO
    name: ClassVar[str] = "noop"
    passes: ClassVar[tuple[str, ...]] = ("zero_sink", "zero_sink_dormant", "zero_middle")

    def planned(self, ctx: ProbeContext) -> tuple[str, ...]:
        """The passes ``run`` makes: the dormant-head edit only where there are dormant heads."""
        return ("zero_sink", "zero_middle") + (("zero_sink_dormant",) if self.measure(ctx)["dormant"].any() else ())

    def steps(self, ctx: ProbeContext) -> int:
        """Forward passes ``run`` will make (those another probe has not made yet)."""
        return ctx.pending(self.planned(ctx))

    def measure(self, ctx: ProbeContext) -> dict[str, torch.Tensor]:
        kv = kv_heads(ctx.model)
        ratio, share, out_ratio = [], [], []
        for base in ctx.baselines:
            r, s, o = [], [], []
            for rec in base.layers:
                typical = rec.vnorm[:, SINK + 1 :].median(dim=1).values[kv].clamp_min(1e-30)  # [H]
                r.append(metrics.value_norm_ratio(rec.vnorm)[kv])
                s.append(rec.share)
                o.append(rec.out_norm / typical)
            ratio.append(torch.stack(r))
            share.append(torch.stack(s))
            out_ratio.append(torch.stack(o))
        alpha = ctx.baseline_alpha()
        out_ratio_mean = torch.stack(out_ratio).mean(0)
        return {
            "alpha": alpha,
            "value_ratio": torch.stack(ratio).mean(0),
            "sink_output_share": torch.stack(share).mean(0),
            "output_ratio": out_ratio_mean,
            "dormant": metrics.dormant_heads(alpha, out_ratio_mean, ctx.eps, self.dormant_ratio),
        }

    def run(self, ctx: ProbeContext) -> dict:
        m = self.measure(ctx)
        alpha, ratio, dormant = m["alpha"], m["value_ratio"], m["dormant"]
        sink = metrics.is_sink(alpha, ctx.eps)
        other = ~sink & ~alpha.isnan()  # NaN rows: blocks without softmax attention, never measured
        layer_sink_share = sink.double().mean(1)
        heavy = (layer_sink_share >= 0.5).nonzero()[:, 0].tolist()
        per_layer = []
        for layer in ctx.attention_layers:
            heads = sink[layer]
            per_layer.append(
                {
                    "layer": layer,
                    "sink_heads": int(heads.sum()),
                    "median_value_ratio_sink_heads": float(ratio[layer][heads].median()) if heads.any() else None,
                    "median_value_ratio_other_heads": float(ratio[layer][~heads].median()) if (~heads).any() else None,
                }
            )
        heavy_ratio = float(ratio[heavy][sink[heavy]].median()) if heavy else None
        model, L = ctx.model, ctx.num_layers
        interventions = {
            "zero_sink": ctx.effect(ctx.intervene("zero_sink", lambda i: zero_values(L, SINK))),
            "zero_middle": ctx.effect(
                ctx.intervene("zero_middle", lambda i: zero_values(L, len(ctx.sequences[i]) // 2))
            ),
        }
        interventions["zero_sink"]["what"] = "zero the first token's value vectors in every layer and head"
        interventions["zero_middle"]["what"] = "control: zero the middle token's value vectors in every layer and head"
        if dormant.any():
            passes = ctx.intervene("zero_sink_dormant", lambda i: sink_edit(model, dormant))
            interventions["zero_sink_dormant"] = {
                **ctx.effect(passes),
                "what": f"zero the sink's contribution A_t0 v_0 in the {int(dormant.sum())} dormant heads only",
            }
        return {
            "claim": "heads with nothing to add park their attention on a sink whose value is near zero",
            "measured": {
                "alpha_1": m["alpha"],
                "value_norm_ratio": ratio,
                "sink_output_share": m["sink_output_share"],
                "output_norm_ratio": m["output_ratio"],
                "dormant": dormant,
                "dormant_ratio_threshold": self.dormant_ratio,
                "sink_heads": int(sink.sum()),
                "dormant_heads": int(dormant.sum()),
                "dormant_share": float(dormant[ctx.attention_layers].double().mean()),
                "median_value_ratio_sink_heads": float(ratio[sink].median()) if sink.any() else None,
                "median_value_ratio_other_heads": float(ratio[other].median()) if other.any() else None,
                "sink_heavy_layers": heavy,
                "sink_value_shorter_by_in_sink_heavy_layers": (1.0 / heavy_ratio) if heavy_ratio else None,
                "per_layer": per_layer,
            },
            "interventions": interventions,
        }
