"""Plots of a scan: sink profile per layer, layer x head heatmap, massive activations, strongest head's map.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no backend switch). ``save`` refuses a figure with
an unlabelled axis or colour bar and returns a ``Plot`` whose alt text names every axis, for the HTML report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

MIN_WEIGHT = 1e-4  # the attention map's colour scale starts here (log scale; smaller weights share its colour)


@dataclass(frozen=True)
class Plot:
    """A saved figure: its PNG; per panel the title, axis labels, y scale and how many lines and bars it draws; per
    colour bar its label."""

    path: Path
    panels: tuple[dict, ...]
    colorbars: tuple[str, ...]

    @property
    def alt(self) -> str:
        """Alt text for the report: what each panel and colour bar shows."""
        parts = [f"{p['title']}: x = {p['xlabel']}, y = {p['ylabel']}" for p in self.panels]
        parts += [f"colour = {label}" for label in self.colorbars]
        return "; ".join(parts)


INTEGER_AXES = ("layer", "head")  # an axis labelled so counts whole numbers: no 0.5 ticks


def save(fig: Figure, path: Path) -> Plot:
    """Write ``fig`` as PNG; every panel must have both axis labels and every colour-mapped image a labelled colour
    bar (a photograph, RGB, needs none). Axes labelled layer or head get integer ticks."""
    images = [im for ax in fig.axes for im in ax.images if im.get_array().ndim == 2]
    bar_axes = {id(im.colorbar.ax) for im in images if im.colorbar is not None}
    panels = []
    for ax in fig.axes:
        if id(ax) in bar_axes or not ax.get_visible():
            continue
        panel = {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel()}
        panel.update(yscale=ax.get_yscale(), lines=len(ax.lines), bars=len(ax.patches))
        if not (panel["xlabel"] and panel["ylabel"]):
            raise ValueError(f"{path.name}: panel {panel['title']!r} lacks an axis label")
        for axis, label in ((ax.xaxis, panel["xlabel"]), (ax.yaxis, panel["ylabel"])):
            if label.split()[0] in INTEGER_AXES:
                axis.set_major_locator(MaxNLocator(integer=True))
        panels.append(panel)
    colorbars = []
    for im in images:
        label = (im.colorbar.ax.get_ylabel() or im.colorbar.ax.get_xlabel()) if im.colorbar is not None else ""
        if not label:
            raise ValueError(f"{path.name}: an image lacks a labelled colour bar")
        colorbars.append(label)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return Plot(path, tuple(panels), tuple(colorbars))


def sink_profile(result, path: Path) -> Plot:
    """Per layer: mean first-token mass and Sink_1 (the share of sequence x head pairs above eps; their mean over
    the layers is the title's Sink_1)."""
    alpha = result.first_token_mass
    layers = range(result.num_layers)
    fig = Figure(figsize=(8, 3.6), layout="tight")
    ax = fig.subplots()
    ax.bar(layers, result.sink_share.mean(1), color="#c9d7ee", label=f"Sink_1 of the layer (alpha_1 > {result.eps})")
    ax.plot(layers, alpha.mean(1), "o-", color="#1f4e9c", label="mean alpha_1 (first-token mass)")
    for i, kind in enumerate(result.layer_types):
        if kind == "sliding_attention":
            ax.axvspan(i - 0.5, i + 0.5, color="#eeeeee", zorder=-1)
    ax.set(
        xlabel="layer",
        ylabel="attention mass / Sink_1",
        ylim=(0, 1.05),
        title=f"{result.model}: Sink_1^{result.eps} = {result.sink_rate:.1%}",
    )
    ax.legend(loc="lower right", fontsize=8)
    return save(fig, path)


def _layer_head_map(values: torch.Tensor, title: str, label: str, path: Path) -> Plot:
    layers, heads = values.shape
    fig = Figure(figsize=(max(4, 0.45 * heads + 2), max(3, 0.22 * layers + 1)), layout="tight")
    ax = fig.subplots()
    im = ax.imshow(values, aspect="auto", cmap="magma", vmin=0, vmax=1)
    ax.set(xlabel="head", ylabel="layer", title=title)
    fig.colorbar(im, ax=ax, label=label)
    return save(fig, path)


def head_heatmap(result, path: Path) -> Plot:
    """Layer x head heatmap of alpha_1."""
    title, label = "first-token mass alpha_1 per head", "alpha_1 (attention on the first token)"
    return _layer_head_map(result.first_token_mass, title, label, path)


def sink_share_heatmap(result, path: Path) -> Plot | None:
    """Layer x head heatmap of the share of sequences in which each head is a sink (how stable Sink_1's heads are;
    None for a single sequence, where it is alpha_1 > eps)."""
    if result.num_sequences < 2:
        return None
    title = f"share of the {result.num_sequences} sequences in which a head is a sink"
    return _layer_head_map(result.sink_share, title, f"share of sequences with alpha_1 > {result.eps}", path)


def slot_heatmap(result, path: Path) -> Plot | None:
    """Layer x head heatmap of the attention a learned sink slot takes (gpt-oss sinks, sink/kv_bias variants)."""
    slot = getattr(result, "sink_slot_mass", None)
    if slot is None:
        return None
    title, label = "learned sink slot's mass per head", "share of attention on the sink slot"
    return _layer_head_map(slot, title, label, path)


def massive_activations(result, path: Path, top_dims: int = 8) -> Plot:
    """Largest and median |hidden| per layer (log scale), and max |x| of the top dims per layer (log colours)."""
    fig = Figure(figsize=(11, 3.8), layout="tight")
    ax0, ax1 = fig.subplots(1, 2)
    layers = range(result.num_layers)
    ax0.semilogy(layers, result.layer_max_abs.clamp_min(1e-6), "o-", label="max |x|")
    ax0.semilogy(layers, result.layer_median_abs.clamp_min(1e-6), "s--", label="median |x|")
    ax0.set(xlabel="layer", ylabel="|hidden state|", title="residual stream magnitude")
    ax0.legend(fontsize=8)
    dims = result.dim_max.amax(0).topk(min(top_dims, result.dim_max.shape[1])).indices
    values = result.dim_max[:, dims].T.clamp_min(1e-6)
    im = ax1.imshow(values, aspect="auto", cmap="viridis", norm=LogNorm(float(values.min()), float(values.max())))
    ax1.set_yticks(range(len(dims)), [str(int(d)) for d in dims])
    ax1.set(xlabel="layer", ylabel="hidden dim", title="max |x| of the largest dims")
    fig.colorbar(im, ax=ax1, label="max |x| over tokens (log scale)")
    return save(fig, path)


def token_label(token: str) -> str:
    """A token as a tick label: whole (never cut), whitespace made visible."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423") or "''"


def attention_map(result, path: Path, ticks: int = 16) -> Plot | None:
    """Attention map of the strongest sink head on the first tokens of sequence 0, log colour scale, ticks at
    token positions labelled ``position token``."""
    if result.pattern is None:
        return None
    layer, head = result.strongest_head()
    pattern: torch.Tensor = result.pattern[layer, head]
    w = pattern.shape[-1]
    fig = Figure(figsize=(7.5, 6.6), layout="tight")
    ax = fig.subplots()
    shown = np.ma.masked_less_equal(pattern.numpy(), 0.0)  # causal zeros stay blank
    im = ax.imshow(shown.clip(MIN_WEIGHT, 1.0), cmap="Blues", norm=LogNorm(MIN_WEIGHT, 1.0))
    positions = list(range(0, w, max(1, w // ticks)))
    labels = [f"{p} {token_label(result.pattern_tokens[p])}" for p in positions if p < len(result.pattern_tokens)]
    ax.set_xticks(positions[: len(labels)], labels, rotation=90, fontsize=7)
    ax.set_yticks(positions[: len(labels)], labels, fontsize=7)
    ax.set(
        xlabel="key position and token",
        ylabel="query position and token",
        title=f"layer {layer}, head {head}: alpha_1 = {result.first_token_mass[layer, head]:.2f} (sequence 0)",
    )
    fig.colorbar(im, ax=ax, label=f"attention weight (log scale, from {MIN_WEIGHT:g})")
    return save(fig, path)


def all_plots(result, out_dir: Path) -> list[Plot]:
    made = [
        sink_profile(result, out_dir / "sink_profile.png"),
        head_heatmap(result, out_dir / "heads_heatmap.png"),
        sink_share_heatmap(result, out_dir / "sink_share_heatmap.png"),
        slot_heatmap(result, out_dir / "sink_slot_heatmap.png"),
        massive_activations(result, out_dir / "massive_activations.png"),
        attention_map(result, out_dir / "attention_map.png"),
    ]
    return [p for p in made if p is not None]
