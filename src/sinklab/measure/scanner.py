"""`sinklab.scan`: where a model's sinks are, how strong, and where its massive activations sit.

Runs the model over token sequences inside one ``Observer`` and reduces each forward pass at once, so memory stays
O(T) per layer whatever the length: per (layer, head) the first-token mass alpha_1 and the attention entropy; per
key position the sink evidence (mean received mass above ``sink_threshold`` in some head); per layer the residual
stream's largest activations.
"""

from __future__ import annotations

import inspect
import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sinklab.data import BosMode, read_texts, token_sequences
from sinklab.errors import SinklabInputError, check_fraction
from sinklab.hf import ModelView
from sinklab.hf.arch import layer_types, vision_layout
from sinklab.measure import metrics
from sinklab.measure.engine import Observer, ResidualStats, skipped_layers
from sinklab.models import check_model, check_token_ids, input_device
from sinklab.ops.stats import AttentionStats
from sinklab.progress import Progress
from sinklab.provenance import describe_texts, run_provenance

if TYPE_CHECKING:
    from sinklab.measure.vision import VisionScan

PATTERN_WINDOW = 64


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
            "first_token_mass": _rounded(self.first_token_mass),
            "sink_share": _rounded(self.sink_share),
            "sinks": self.sinks,
            "massive_activations": self.massive_activations,
            "entropy": _rounded(self.entropy),
            "sink_threshold": self.sink_threshold,
            "layer_types": self.layer_types,
            "skipped_layers": self.skipped_layers,
            "layer_max_abs": _rounded(self.layer_max_abs, 3),
            "layer_median_abs": _rounded(self.layer_median_abs, 5),
            "layer_kurtosis": _rounded(self.layer_kurtosis, 3),
            "provenance": self.provenance,
            **({} if self.sink_slot_mass is None else {"sink_slot_mass": _rounded(self.sink_slot_mass)}),
            **({} if self.vision is None else {"vision": self.vision.to_dict()}),
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write metrics.json, heads.csv, plots and report.html into ``out_dir`` (all or nothing)."""
        from sinklab.report import write_scan_report

        return write_scan_report(self, Path(out_dir))


def _rounded(t: torch.Tensor, digits: int = 6):
    """Rounded nested lists for JSON; NaN (a layer without softmax attention) becomes null."""
    t = torch.round(t.double(), decimals=digits)
    values = t.tolist()
    if not bool(t.isnan().any()):
        return values
    return json.loads(json.dumps(values).replace("NaN", "null"))


def is_causal(model) -> bool:
    """Decoder-only (causal) models; encoders such as BERT attend both ways."""
    return bool(getattr(model.config, "is_decoder", False)) or "ForCausalLM" in type(model).__name__


def as_sequences(tokenizer, texts_or_ids, max_tokens, num_texts, bos) -> list[list[int]]:
    """Token sequences from strings (DESIGN.md's splitting rule), token-id lists, a tensor, or None (the corpus)."""
    if isinstance(texts_or_ids, torch.Tensor):
        texts_or_ids = texts_or_ids.tolist() if texts_or_ids.dim() == 2 else [texts_or_ids.tolist()]
    if isinstance(texts_or_ids, str):  # a string is a text; a Path is a file
        texts_or_ids = [texts_or_ids]
    if texts_or_ids is None or isinstance(texts_or_ids, Path):
        texts_or_ids = read_texts(None if texts_or_ids is None else [texts_or_ids])
    items = list(texts_or_ids)
    if not items:
        raise SinklabInputError("no texts given; pass strings, token id lists, or None for the embedded corpus")
    if all(isinstance(x, str) for x in items):
        return token_sequences(tokenizer, items, max_tokens, num_texts, bos)
    if all(isinstance(x, Sequence) and all(isinstance(t, int) for t in x) for x in items):
        seqs = [list(x) for x in items if len(x) > 0][:num_texts]
        if not seqs:
            raise SinklabInputError("all token sequences are empty")
        return seqs
    raise SinklabInputError("texts_or_ids must be strings or lists of token ids, not a mix")


def check_length(model, length: int, allow_beyond_positions: bool) -> None:
    """Refuse sequences longer than the model's positions (unless asked to measure past them)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and length > limit and not allow_beyond_positions:
        raise SinklabInputError(
            f"sequences of {length} tokens exceed the model's {limit} positions; use --max-tokens <= {limit}"
        )


def _batches(seqs: list[list[int]], batch_size: int, pad_id: int, left_pad: bool):
    for start in range(0, len(seqs), batch_size):
        group = seqs[start : start + batch_size]
        width = max(map(len, group))
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, seq in enumerate(group):
            sl = slice(width - len(seq), width) if left_pad else slice(0, len(seq))
            ids[row, sl] = torch.tensor(seq)
            mask[row, sl] = 1
        yield start, ids, mask


class _Accumulator:
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


def _forward_kwargs(base_model) -> dict:
    params = inspect.signature(base_model.forward).parameters
    return {"use_cache": False} if "use_cache" in params else {}


@torch.no_grad()
def scan(
    model,
    tokenizer,
    texts_or_ids=None,
    eps: float = 0.3,
    *,
    max_tokens: int = 512,
    num_texts: int | None = 4,
    bos: BosMode = "auto",
    batch_size: int = 1,
    sink_threshold: float | None = None,
    min_queries: int | None = None,
    keep_pattern: int = PATTERN_WINDOW,
    model_name: str | None = None,
    allow_beyond_positions: bool = False,
    progress: bool = True,
    images=None,
    **image_options,
) -> ScanResult:
    """Measure attention sinks and massive activations of ``model`` on texts or token ids.

    ``texts_or_ids``: strings (split by DESIGN.md's rule into ``max_tokens``-token sequences, at most
    ``num_texts``), token-id lists, a [N, T] tensor, or None for the embedded corpus. ``eps`` is Gu et al.'s
    threshold for Sink_1^eps; ``sink_threshold`` (default eps) is the mean received mass that makes any key a sink,
    counted only where at least ``min_queries`` (default min(32, T/4)) queries can see it.

    An image encoder (or ``images`` given) is scanned on images instead: ``scan(model, processor, images=...)`` is
    ``sinklab.measure.vision.scan_images`` (``image_options``: its ``high_norm``, ``norm_ratio``, ``max_maps``).
    """
    if images is not None or image_options or vision_layout(model) is not None:
        from sinklab.measure.vision import scan_images

        if texts_or_ids is not None:
            raise SinklabInputError("an image scan takes images=, not texts; give one or the other")
        return scan_images(
            model, tokenizer, images, eps, batch_size=batch_size, sink_threshold=sink_threshold,
            min_queries=min_queries, model_name=model_name, progress=progress, **image_options,
        )  # fmt: skip
    check_fraction("eps", eps)
    if batch_size < 1:
        raise SinklabInputError(f"batch size must be >= 1, got {batch_size}")
    if sink_threshold is not None:
        check_fraction("sink_threshold", sink_threshold)
    check_model(model, tokenizer)
    seqs = as_sequences(tokenizer, texts_or_ids, max_tokens, num_texts, bos)
    check_token_ids(model, seqs)
    longest = max(map(len, seqs))
    check_length(model, longest, allow_beyond_positions)
    view = ModelView(model)
    config = view.config
    num_layers = view.num_layers
    num_heads = view.require_attention()[0].num_heads
    hidden = config.hidden_size
    sink_threshold = eps if sink_threshold is None else sink_threshold
    min_queries = min_queries or max(1, min(32, longest // 4))
    acc = _Accumulator(num_layers, num_heads, hidden, eps, sink_threshold, min_queries)
    device = input_device(model)  # the embedding's device: a split model's first parameter may live elsewhere
    base = model.base_model
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    causal = is_causal(model)
    decode = token_decoder(tokenizer)
    pattern = None
    num_batches = math.ceil(len(seqs) / batch_size)
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"scan {model_name or type(model).__name__}", total=num_batches * num_layers)
        advance = [lambda hidden, ctx: bar.advance(task)]
        hooks = {f"layers.{i}.resid_post": advance for i in range(num_layers)}
        with Observer(model, keep_pattern=keep_pattern, hooks=hooks) as obs:
            for start, ids, mask in _batches(seqs, batch_size, pad_id, left_pad=causal):
                obs.clear()
                obs.keep_pattern = keep_pattern if start == 0 else 0
                kwargs = _forward_kwargs(base)
                if causal:  # left padding must not shift the real tokens' positions
                    kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp_min(0).to(device)
                base(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
                acc.add(obs, ids, mask, decode)
                if start == 0 and keep_pattern:  # [L, H, w, w], NaN for blocks without softmax attention
                    maps = {layer: stats.pattern[0].float().cpu() for layer, stats in obs.attention.items()}
                    blank = torch.full_like(next(iter(maps.values())), float("nan"))
                    pattern = torch.stack([maps.get(layer, blank) for layer in range(num_layers)])
    first_ids = seqs[0][: pattern.shape[-1]] if pattern is not None else []
    return ScanResult(
        model=model_name or getattr(config, "_name_or_path", "") or type(model).__name__,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=view.attention[0].num_kv_heads,
        sequence_length=longest,
        eps=eps,
        sink_threshold=sink_threshold,
        layer_types=layer_types(config),
        skipped_layers=skipped_layers(model),
        pattern=pattern,
        pattern_tokens=[decode(t) for t in first_ids],
        **acc.results(),
        provenance=run_provenance(model, sequences=seqs, texts=describe_texts(texts_or_ids), bos=bos),
    )


def token_decoder(tokenizer):
    """A cached id -> text decoder for reports."""
    cache: dict[int, str] = {}

    def decode(token_id: int) -> str:
        if token_id not in cache:
            cache[token_id] = tokenizer.decode([token_id])
        return cache[token_id]

    return decode
