"""Plots of a scan: sink profile per layer, layer x head heatmap, massive activations, strongest head's map."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sink_profile(result, path: Path) -> Path:
    """Per layer: mean first-token mass and the share of heads above eps."""
    alpha = result.first_token_mass
    layers = range(result.num_layers)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(
        layers,
        (alpha > result.eps).double().mean(1),
        color="#c9d7ee",
        label=f"share of heads with alpha_1 > {result.eps}",
    )
    ax.plot(layers, alpha.mean(1), "o-", color="#1f4e9c", label="mean alpha_1 (first-token mass)")
    for i, kind in enumerate(result.layer_types):
        if kind == "sliding_attention":
            ax.axvspan(i - 0.5, i + 0.5, color="#eeeeee", zorder=-1)
    ax.set(
        xlabel="layer",
        ylabel="attention mass",
        ylim=(0, 1.05),
        title=f"{result.model}: Sink_1^{result.eps} = {result.sink_rate:.1%}",
    )
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def head_heatmap(result, path: Path) -> Path:
    """Layer x head heatmap of alpha_1."""
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * result.num_heads + 2), max(3, 0.22 * result.num_layers + 1)))
    im = ax.imshow(result.first_token_mass, aspect="auto", cmap="magma", vmin=0, vmax=1)
    ax.set(xlabel="head", ylabel="layer", title="first-token mass alpha_1 per head")
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def massive_activations(result, path: Path, top_dims: int = 8) -> Path:
    """Largest and median |hidden| per layer (log scale), and max |x| of the top dims per layer."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8))
    layers = range(result.num_layers)
    ax0.semilogy(layers, result.layer_max_abs.clamp_min(1e-6), "o-", label="max |x|")
    ax0.semilogy(layers, result.layer_median_abs.clamp_min(1e-6), "s--", label="median |x|")
    ax0.set(xlabel="layer", ylabel="|hidden state|", title="residual stream magnitude")
    ax0.legend(fontsize=8)
    dims = result.dim_max.amax(0).topk(min(top_dims, result.dim_max.shape[1])).indices
    im = ax1.imshow(result.dim_max[:, dims].T, aspect="auto", cmap="viridis")
    ax1.set_yticks(range(len(dims)), [str(int(d)) for d in dims])
    ax1.set(xlabel="layer", ylabel="hidden dim", title="max |x| of the largest dims")
    fig.colorbar(im, ax=ax1)
    return _save(fig, path)


def attention_map(result, path: Path) -> Path | None:
    """Attention map of the strongest sink head on the first tokens of sequence 0."""
    if result.pattern is None:
        return None
    layer, head = result.strongest_head()
    pattern: torch.Tensor = result.pattern[layer, head]
    w = pattern.shape[-1]
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(pattern, cmap="Blues", vmin=0, vmax=1)
    labels = [t.replace("\n", "\\n")[:8] for t in result.pattern_tokens[:w]]
    step = max(1, w // 16)
    ax.set_xticks(range(0, w, step), labels[::step], rotation=90, fontsize=7)
    ax.set_yticks(range(0, w, step), labels[::step], fontsize=7)
    ax.set(
        xlabel="key",
        ylabel="query",
        title=f"layer {layer}, head {head}: alpha_1 = {result.first_token_mass[layer, head]:.2f}",
    )
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def all_plots(result, out_dir: Path) -> list[Path]:
    made = [
        sink_profile(result, out_dir / "sink_profile.png"),
        head_heatmap(result, out_dir / "heads_heatmap.png"),
        massive_activations(result, out_dir / "massive_activations.png"),
        attention_map(result, out_dir / "attention_map.png"),
    ]
    return [p for p in made if p is not None]
