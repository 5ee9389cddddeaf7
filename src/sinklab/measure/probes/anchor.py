"""``anchor``: geometric anchoring. The sink's hidden state settles into a fixed direction, whatever the token, and
its key sits apart from the other keys where every query's cone reaches it (Gu et al. 2024 on the first token's
key; Sun et al. 2024 on fixed massive directions).

Measured: the cosine of the sink's hidden state between consecutive layers and between texts (the middle token as
a non-sink reference); per (layer, head) the cosine of the sink's key to the queries' mean direction (the cone's
axis) against the median key's, the sink key's norm over the median key norm, and the cone's width (mean cosine of
the queries to their axis).

Interventions (they change the input): drop the first token, and move it to position m = min(16, T/4); report
which token becomes the sink (the key that exceeds eps in the most heads), the sink rate of the new first token,
and the loss of the same target tokens as in the baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from sinklab.measure.probes._common import SINK, Pass, aligned_delta
from sinklab.measure.probes.context import ProbeContext

MOVE_TO = 16
MIN_LENGTH = 8


def pairwise_cosine(x: torch.Tensor) -> float | None:
    """Mean cosine over distinct pairs of rows of x [N, d] (None for one row)."""
    if x.shape[0] < 2:
        return None
    u = F.normalize(x, dim=-1)
    sim = u @ u.T
    n = x.shape[0]
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def _degrees(cos: float) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


@dataclass
class AnchorProbe:
    """Config of the geometric-anchoring probe; ``run(ctx)`` returns its section of probes.json."""

    move_to: int = MOVE_TO
    name: ClassVar[str] = "anchor"
    passes: ClassVar[tuple[str, ...]] = ("drop_first", "move_first")

    def steps(self, ctx: ProbeContext) -> int:
        """Forward passes ``run`` will make (none for sequences too short to move the first token)."""
        return 0 if min(map(len, ctx.sequences)) < MIN_LENGTH else ctx.pending(self.passes)

    def measure(self, ctx: ProbeContext) -> dict:
        L = ctx.num_layers
        sink = torch.stack([torch.stack([r.resid for r in b.layers]) for b in ctx.baselines])  # [N, L, d]
        mid = torch.stack([torch.stack([r.resid_mid for r in b.layers]) for b in ctx.baselines])
        over_layers = F.cosine_similarity(sink[:, 1:], sink[:, :-1], dim=-1).mean(0)  # [L-1]
        mid_over_layers = F.cosine_similarity(mid[:, 1:], mid[:, :-1], dim=-1).mean(0)
        over_texts = [pairwise_cosine(sink[:, layer]) for layer in range(L)]
        mid_over_texts = [pairwise_cosine(mid[:, layer]) for layer in range(L)]
        k_cos = torch.stack([torch.stack([r.k_cos for r in b.layers]) for b in ctx.baselines]).mean(0)  # [L, H, T]
        k_norm = torch.stack([torch.stack([r.k_norm for r in b.layers]) for b in ctx.baselines]).mean(0)
        cone = torch.stack([torch.stack([r.cone for r in b.layers]) for b in ctx.baselines]).mean(0)  # [L, H]
        sink_cos = k_cos[..., SINK]
        other_cos = k_cos[..., SINK + 1 :].median(dim=-1).values
        norm_ratio = k_norm[..., SINK] / k_norm[..., SINK + 1 :].median(dim=-1).values.clamp_min(1e-30)
        heads = ctx.baseline_alpha() > ctx.eps
        firsts = [ctx.decode(b.run.ids[SINK]) for b in ctx.baselines]

        def median(x: torch.Tensor) -> float | None:
            return float(x[heads].median()) if heads.any() else None

        summary = {
            "sink_key_cosine_to_query_axis": median(sink_cos),
            "other_keys_cosine_to_query_axis": median(other_cos),
            "sink_key_norm_ratio": median(norm_ratio),
            "query_cone_cosine": median(cone),
        }
        summary["sink_key_angle_deg"] = _degrees(summary["sink_key_cosine_to_query_axis"]) if heads.any() else None
        summary["other_keys_angle_deg"] = _degrees(summary["other_keys_cosine_to_query_axis"]) if heads.any() else None
        return {
            "first_tokens": firsts,
            "same_first_token": len(set(firsts)) == 1,
            "hidden_cosine_over_layers": over_layers,
            "middle_token_hidden_cosine_over_layers": mid_over_layers,
            "hidden_cosine_over_texts": over_texts,
            "middle_token_hidden_cosine_over_texts": mid_over_texts,
            "sink_key_cosine_to_query_axis": sink_cos,
            "other_keys_cosine_to_query_axis": other_cos,
            "sink_key_norm_ratio": norm_ratio,
            "query_cone_cosine": cone,
            "sink_heads_summary": summary,
        }

    def run(self, ctx: ProbeContext) -> dict:
        measured = self.measure(ctx)
        shortest = min(map(len, ctx.sequences))
        result = {
            "claim": "the sink's state and key take a fixed place in the geometry that every query reaches",
            "measured": measured,
        }
        if shortest < MIN_LENGTH:
            result["interventions"] = {"skipped": f"sequences shorter than {MIN_LENGTH} tokens"}
            return result
        m = min(self.move_to, shortest // 4)
        drop = ctx.intervene("drop_first", lambda i: None, edit=lambda ids: ids[1:], mass=True)
        move = ctx.intervene(
            "move_first", lambda i: None, edit=lambda ids: ids[1 : m + 1] + ids[:1] + ids[m + 1 :], mass=True
        )
        base = [b.run for b in ctx.baselines]
        result["interventions"] = {
            "baseline": {**self._sinks(ctx, base), "sink_rate": ctx.sink_rate(base)},
            "drop_first": {
                "what": "drop the first token; loss on the same targets (tokens 2..T-1)",
                **self._loss(base, drop, slice(1, None), slice(0, None)),
                **self._sinks(ctx, drop),
                "sink_rate": ctx.sink_rate(drop),
                "baseline_sink_rate": ctx.sink_rate(base),
            },
            "move_first": {
                "what": f"move the first token to position {m}; loss on the targets after it",
                **self._loss(base, move, slice(m + 1, None), slice(m + 1, None)),
                **self._sinks(ctx, move),
                "moved_to": m,
                "sink_rate": ctx.sink_rate(move),
                "sink_rate_of_moved_token": ctx.sink_rate(move, m),
                "baseline_sink_rate": ctx.sink_rate(base),
            },
        }
        return result

    def _sinks(self, ctx: ProbeContext, passes: list[Pass]) -> dict:
        tops = [p.top_sink(ctx.eps) for p in passes]
        return {
            "new_sink": [
                {"position": pos, "token": None if pos is None else ctx.decode(p.ids[pos]), "heads": heads}
                for p, (pos, heads) in zip(passes, tops, strict=True)
            ]
        }

    @staticmethod
    def _loss(base: list[Pass], new: list[Pass], bs: slice, ns: slice) -> dict:
        parts = [aligned_delta(b, n, bs, ns) for b, n in zip(base, new, strict=True)]
        if parts[0]["loss"] is None:
            return {"loss": None}
        return {k: sum(p[k] for p in parts) / len(parts) for k in ("loss", "baseline_loss", "loss_delta")}
