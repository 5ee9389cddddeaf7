"""What a scan measured (``ScanResult``, with ``VisionScan`` for image encoders) and how each forward pass is reduced
into it (``Accumulator``: nothing T x T, nothing per key kept beyond the pass)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from sinklab.measure import metrics
from sinklab.measure.engine import Observer, ResidualStats
from sinklab.ops.stats import AttentionStats


def rounded(t: torch.Tensor, digits: int = 6):
    """Rounded nested lists for JSON; NaN (a layer without softmax attention) becomes null."""
    t = torch.round(t.double(), decimals=digits)
    values = t.tolist()
    if not bool(t.isnan().any()):
        return values
    return json.loads(json.dumps(values).replace("NaN", "null"))


@dataclass
class VisionScan:
    """The image-specific part of an image scan (``ScanResult.vision``); ``to_dict()`` is metrics.json's ``vision``.

    Norm statistics have L + 1 rows: the output of each block, then the model's output (``norm_layers``)."""

    images: list[dict]  # per image: name, width, height as given
    input_size: tuple[int, int]  # pixel values' height, width
    grid: tuple[int, int]  # patch rows, columns
    labels: list[str]  # one per token: prefix labels, then "patch r,c"
    prefix_mass: torch.Tensor  # [L, H, P] share of attention on each prefix token
    patch_peak: torch.Tensor  # [L, H] mean over images of the largest mean mass on one patch
    high_norm: float
    norm_ratio: float
    patch_norm_median: torch.Tensor  # [L + 1] median patch norm, mean over images
    patch_norm_max: torch.Tensor  # [L + 1] largest patch norm over images
    prefix_norm: torch.Tensor  # [L + 1, P] norm of each prefix token, mean over images
    above_threshold: torch.Tensor  # [L + 1] high-norm patches by norm > high_norm, over all images
    above_ratio: torch.Tensor  # [L + 1] high-norm patches by norm > norm_ratio x median
    high_norm_tokens: list[dict]  # the model output's high-norm patches by either rule
    maps: torch.Tensor  # [M, L, rows, cols] head-mean attention received per patch, the first M images
    token_norm: torch.Tensor  # [M, L + 1, T] token norms of the first M images
    pixels: torch.Tensor  # [M, C, H, W] what the model saw, for drawing

    @property
    def num_prefix(self) -> int:
        return self.prefix_mass.shape[-1]

    @property
    def prefix(self) -> list[str]:
        return self.labels[: self.num_prefix]

    @property
    def norm_layers(self) -> list[str]:
        return [*map(str, range(self.prefix_mass.shape[0])), "output"]

    @property
    def map_layer(self) -> int:
        """The layer whose strongest patch sink is largest (mean over heads): the one the maps show."""
        return int(self.patch_peak.mean(1).argmax())

    def to_dict(self) -> dict:
        patches = len(self.images) * self.grid[0] * self.grid[1]
        return {
            "images": self.images,
            "input_size": list(self.input_size),
            "patch_grid": list(self.grid),
            "prefix_tokens": self.prefix,
            "prefix_mass": {label: rounded(self.prefix_mass[..., p]) for p, label in enumerate(self.prefix)},
            "patch_peak_mass": rounded(self.patch_peak),
            "map_layer": self.map_layer,
            "token_norms": {
                "layers": self.norm_layers,
                "median_patch": rounded(self.patch_norm_median, 4),
                "max_patch": rounded(self.patch_norm_max, 4),
                "prefix": {label: rounded(self.prefix_norm[:, p], 4) for p, label in enumerate(self.prefix)},
            },
            "high_norm": {
                "threshold": self.high_norm,
                "ratio_to_median": self.norm_ratio,
                "patches": patches,
                "above_threshold": self.above_threshold.tolist(),
                "above_ratio": self.above_ratio.tolist(),
                "tokens": self.high_norm_tokens,
            },
        }


@dataclass
class ScanResult:
    """What ``scan`` measured. ``to_dict()`` gives metrics.json (DESIGN.md's keys plus extras); ``save(dir)`` writes
    metrics.json, heads.csv, PNG plots and a self-contained report.html."""

    model: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    tokens: int
    num_sequences: int
    sequence_length: int
    eps: float
    sink_threshold: float
    first_token_mass: torch.Tensor  # [L, H] alpha_1 averaged over sequences
    sink_share: torch.Tensor  # [L, H] share of the sequences in which the head's alpha_1 exceeds eps
    entropy: torch.Tensor  # [L, H] mean row entropy (nats)
    top_other_mass: torch.Tensor  # [L, H] largest mean mass on a non-first key, averaged over sequences
    sinks: list[dict]
    massive_activations: list[dict]
    layer_max_abs: torch.Tensor  # [L] largest |hidden| per layer (max over sequences)
    layer_median_abs: torch.Tensor  # [L] median |hidden| per layer (mean over sequences)
    layer_kurtosis: torch.Tensor  # [L] kurtosis of the hidden state per layer (mean over sequences)
    dim_max: torch.Tensor  # [L, d] max |hidden| per hidden dim
    layer_types: list[str]
    skipped_layers: list[dict] = field(default_factory=list)  # blocks without softmax attention: no rows
    pattern: torch.Tensor | None = None  # [L, H, w, w] attention maps of the first w tokens of sequence 0
    sink_slot_mass: torch.Tensor | None = None  # [L, H] mean share of a row's attention on a learned sink slot
    pattern_tokens: list[str] = field(default_factory=list)
    provenance: dict | None = None  # how the result was made (sinklab.provenance)
    vision: VisionScan | None = None  # an image encoder's [CLS]/register sinks, token norms, maps (measure.vision)

    @property
    def sink_rate(self) -> float:
        """Gu et al.'s Sink_1^eps: every sequence thresholded alone (``metrics.sink_rate``)."""
        return metrics.sink_rate(self.sink_share)

    @property
    def sink_heads(self) -> torch.Tensor:
        """[L, H] bool: heads whose sequence-mean alpha_1 exceeds eps."""
        return metrics.is_sink(self.first_token_mass, self.eps)

    @property
    def sink_rate_of_mean(self) -> float:
        """Share of heads whose sequence-mean alpha_1 exceeds eps (``metrics.sink_rate_of_mean``)."""
        return metrics.sink_rate_of_mean(self.first_token_mass, self.eps)

    def strongest_head(self) -> tuple[int, int]:
        """(layer, head) with the largest first-token mass."""
        idx = int(self.first_token_mass.nan_to_num(-1.0).argmax())
        return idx // self.num_heads, idx % self.num_heads

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "tokens": self.tokens,
            "num_sequences": self.num_sequences,
            "sequence_length": self.sequence_length,
            "eps": self.eps,
            "sink_rate": self.sink_rate,
            "sink_rate_of_mean": self.sink_rate_of_mean,
            "first_token_mass": rounded(self.first_token_mass),
            "sink_share": rounded(self.sink_share),
            "sinks": self.sinks,
            "massive_activations": self.massive_activations,
            "entropy": rounded(self.entropy),
            "sink_threshold": self.sink_threshold,
            "layer_types": self.layer_types,
            "skipped_layers": self.skipped_layers,
            "layer_max_abs": rounded(self.layer_max_abs, 3),
            "layer_median_abs": rounded(self.layer_median_abs, 5),
            "layer_kurtosis": rounded(self.layer_kurtosis, 3),
            "provenance": self.provenance,
            **({} if self.sink_slot_mass is None else {"sink_slot_mass": rounded(self.sink_slot_mass)}),
            **({} if self.vision is None else {"vision": self.vision.to_dict()}),
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write metrics.json, heads.csv, plots and report.html into ``out_dir`` (all or nothing)."""
        from sinklab.report import write_scan_report

        return write_scan_report(self, Path(out_dir))


class Accumulator:
    """Reduces each forward pass at once (nothing T x T, nothing per key kept beyond the pass)."""

    def __init__(
        self, num_layers: int, num_heads: int, hidden: int, eps: float, sink_threshold: float, min_queries: int
    ):
        self.L, self.H = num_layers, num_heads
        self.eps, self.sink_threshold, self.min_queries = eps, sink_threshold, min_queries
        self.alpha = torch.zeros(num_layers, num_heads, dtype=torch.float64)
        self.sink_hits = torch.zeros(num_layers, num_heads, dtype=torch.float64)  # sequences with alpha_1 > eps
        self.entropy = torch.zeros(num_layers, num_heads, dtype=torch.float64)
        self.other = torch.zeros(num_layers, num_heads, dtype=torch.float64)
        self.slot = torch.zeros(num_layers, num_heads, dtype=torch.float64)
        self.attention_layers: set[int] = set()
        self.has_slot = False
        self.sequences = 0
        self.tokens = 0
        self.layer_max = torch.zeros(num_layers, dtype=torch.float64)
        self.layer_median = torch.zeros(num_layers, dtype=torch.float64)
        self.layer_kurtosis = torch.zeros(num_layers, dtype=torch.float64)
        self.dim_max = torch.zeros(num_layers, hidden, dtype=torch.float64)
        self.sinks: dict[tuple[int, int], dict] = {}
        self.massive: dict[tuple[int, int, int, int], dict] = {}

    def add(self, obs: Observer, ids: torch.Tensor, mask: torch.Tensor, decode) -> None:
        B = ids.shape[0]
        padding = mask.bool()
        first = metrics.first_positions(padding, B)
        self.sequences += B
        self.tokens += int(mask.sum())
        self._add_residual(obs, ids, first, decode)
        # layers whose statistics stack: same shapes, slot or not, and same device (a model split by a device_map
        # keeps each layer's statistics where the layer ran; only the small per-group results travel)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for layer, stats in obs.attention.items():
            groups[(tuple(stats.colsum.shape), stats.slot is None, stats.colsum.device)].append(layer)
        best = heads = None  # [B, S]: max mass over layers and heads, number of (layer, head) pairs above threshold
        hit_layers: list[int] = []
        hits = []
        for layers in groups.values():
            g_best, g_heads, g_hits = self._add_layers([obs.attention[i] for i in layers], layers, first)
            if best is not None:  # [B, S] results of another device's layers: to the first group's device
                g_best, g_heads, g_hits = (t.to(best.device) for t in (g_best, g_heads, g_hits))
            best = g_best if best is None else torch.maximum(best, g_best)
            heads = g_heads if heads is None else heads + g_heads
            hits.append(g_hits)
            hit_layers += layers
        if best is None:
            return
        best, heads = best.cpu(), heads.cpu()
        layers_hit: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, b, pos in torch.cat(hits).nonzero().tolist():  # [n, 3]: layer slot, sequence, key
            layers_hit[(b, pos)].append(hit_layers[i])
        for (b, pos), found in sorted(layers_hit.items()):
            rel = pos - int(first[b])
            token = decode(int(ids[b, pos]))
            # the first token is one sink whatever its text; later keys are grouped by position and text
            entry = self.sinks.setdefault(
                (rel, None if rel == 0 else token),
                {"position": rel, "token": Counter(), "mass": 0.0, "heads": 0, "sequences": 0, "layers": set()},
            )
            entry["token"][token] += 1
            entry["mass"] += float(best[b, pos])
            entry["heads"] = max(entry["heads"], int(heads[b, pos]))
            entry["sequences"] += 1
            entry["layers"].update(found)

    def _add_layers(self, group: list[AttentionStats], layers: list[int], first: torch.Tensor):
        """Per-head sums of G layers of equal shapes at once: their statistics are stacked along the batch axis
        ([G * B, ...]), so the metric functions run once per group, not once per layer. Returns the group's
        per-key max mass [B, S], sink-head count [B, S] and hits [G, B, S]."""
        G = len(group)
        stats = AttentionStats(
            **{
                name: torch.cat([getattr(s, name) for s in group])
                for name in ("colsum", "count", "entropy", "rows", "slot")
                if getattr(group[0], name) is not None
            }
        )
        B = stats.colsum.shape[0] // G
        first = first.to(stats.colsum.device).repeat(G)  # [G * B]
        self.attention_layers.update(layers)
        alpha = metrics.first_token_mass(stats, first)  # [G * B, H]
        per_head = {
            "alpha": alpha,
            "sink_hits": metrics.is_sink(alpha, self.eps),
            "entropy": metrics.mean_entropy(stats),
        }
        if stats.slot is not None:  # a learned sink slot (gpt-oss sinks, sink/kv_bias variants): its own column
            per_head["slot"] = metrics.mean_slot_mass(stats)
            self.has_slot = True
        mass = metrics.mean_received(stats).double()  # [G * B, H, S]
        mass = mass.masked_fill(~metrics.eligible_keys(stats, self.min_queries)[:, None, :], 0.0)
        other = mass.clone()
        other[torch.arange(G * B, device=mass.device), :, first] = 0.0
        per_head["other"] = other.amax(dim=2)
        for name, value in per_head.items():  # [G * B, H] -> sums over the batch, one copy
            getattr(self, name)[layers] += value.double().unflatten(0, (G, B)).sum(1).cpu()
        above = metrics.is_sink(mass, self.sink_threshold).unflatten(0, (G, B))  # [G, B, H, S]
        return mass.unflatten(0, (G, B)).amax(dim=(0, 2)), above.sum(dim=(0, 2)), above.any(2)

    def per_attention_layer(self, values: torch.Tensor) -> torch.Tensor:
        """[L, H] values with NaN rows for blocks without softmax attention (a hybrid's linear layers)."""
        values = values.clone()
        values[[i for i in range(self.L) if i not in self.attention_layers]] = float("nan")
        return values

    def _add_residual(self, obs: Observer, ids, first, decode) -> None:
        """Residual magnitudes of every layer, moved to the host in one copy per statistic (not one per layer)."""
        layers = sorted(obs.residual)
        if not layers:
            return
        here = getattr(obs.residual[layers[0]], fields(ResidualStats)[0].name).device  # no-op moves on one device
        res = {
            f.name: torch.stack([getattr(obs.residual[i], f.name).to(here) for i in layers])
            for f in fields(ResidualStats)
        }
        res = {name: value.cpu() for name, value in res.items()}  # [L', B, ...]
        self.layer_max[layers] = torch.maximum(self.layer_max[layers], res["max_abs"].double().amax(1))
        self.layer_median[layers] += res["median_abs"].double().sum(1)
        self.layer_kurtosis[layers] += res["kurtosis"].double().sum(1)
        self.dim_max[layers] = torch.maximum(self.dim_max[layers], res["dim_max"].double().amax(1))
        massive = metrics.massive_entries(res["top_value"], res["median_abs"][:, :, None])  # [L', B, k]
        for i, b, k in massive.nonzero().tolist():
            layer = layers[i]
            pos, dim = int(res["top_pos"][i, b, k]), int(res["top_dim"][i, b, k])
            value, median = float(res["top_value"][i, b, k]), float(res["median_abs"][i, b])
            rel = pos - int(first[b])
            entry = self.massive.setdefault(
                (layer, rel, int(ids[b, pos]), dim),
                {
                    "layer": layer,
                    "position": rel,
                    "token": decode(int(ids[b, pos])),
                    "dim": dim,
                    "value": 0.0,
                    "ratio_to_median": 0.0,
                    "sequences": 0,
                },
            )
            entry["value"] += value
            entry["ratio_to_median"] += abs(value) / max(median, 1e-12)
            entry["sequences"] += 1

    def sink_list(self) -> list[dict]:
        out = []
        for entry in self.sinks.values():
            n = entry["sequences"]
            out.append(
                {
                    **entry,
                    "token": entry["token"].most_common(1)[0][0],  # the first token may differ between sequences
                    "distinct_tokens": len(entry["token"]),
                    "mass": round(entry["mass"] / n, 6),
                    "layers": sorted(entry["layers"]),
                }
            )
        return sorted(out, key=lambda e: (-e["heads"], -e["mass"]))

    def results(self) -> dict:
        """The accumulated ``ScanResult`` fields: means over the sequences seen."""
        n = self.sequences
        return dict(
            tokens=self.tokens,
            num_sequences=n,
            first_token_mass=self.per_attention_layer(self.alpha / n),
            sink_share=self.per_attention_layer(self.sink_hits / n),
            entropy=self.per_attention_layer(self.entropy / n),
            top_other_mass=self.per_attention_layer(self.other / n),
            sinks=self.sink_list(),
            massive_activations=self.massive_list(),
            layer_max_abs=self.layer_max,
            layer_median_abs=self.layer_median / n,
            layer_kurtosis=self.layer_kurtosis / n,
            dim_max=self.dim_max,
            sink_slot_mass=self.slot / n if self.has_slot else None,
        )

    def massive_list(self) -> list[dict]:
        out = []
        for entry in self.massive.values():
            n = entry["sequences"]
            out.append(
                {
                    **entry,
                    "value": round(entry["value"] / n, 3),
                    "ratio_to_median": round(entry["ratio_to_median"] / n, 1),
                }
            )
        return sorted(out, key=lambda e: -abs(e["value"]))
