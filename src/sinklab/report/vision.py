"""Plots and report tables of an image scan (``ScanResult.vision``): sink maps drawn over each image, the share of
attention on [CLS] and the registers per layer, and the high-norm patch tokens (Darcet et al. 2024)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from sinklab.report.page import table_html
from sinklab.report.plots import Plot, save

OVERLAY_ALPHA = 0.6


def _display(pixels: torch.Tensor) -> np.ndarray:
    """[C, H, W] pixel values -> [H, W, 3] in [0, 1], rescaled per image (the model's normalization undone up to
    an affine map, which is all a picture needs)."""
    x = pixels.float()
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    x = x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]
    return x.permute(1, 2, 0).numpy()


def _overlay(fig: Figure, ax, image: np.ndarray, values: torch.Tensor, title: str, label: str) -> None:
    """``values`` [rows, cols] over ``image``, one cell per patch, with a labelled colour bar."""
    extent = (0, image.shape[1], image.shape[0], 0)
    ax.imshow(image, extent=extent)
    im = ax.imshow(values.numpy(), extent=extent, alpha=OVERLAY_ALPHA, cmap="inferno", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=label, fraction=0.046, pad=0.04, format="%.3g")
    ax.set(title=title, xlabel="x (pixels)", ylabel="y (pixels)")


def sink_map(result, index: int, path: Path) -> Plot:
    """One image as the model saw it; over it, per patch: the attention it receives in the map layer (mean over
    queries and heads), its residual norm after the last block, and its norm at the model's output with the
    high-norm patches marked."""
    v = result.vision
    image = _display(v.pixels[index])
    rows, cols = v.grid
    P, L, layer = v.num_prefix, result.num_layers, v.map_layer
    name = v.images[index]["name"]
    fig = Figure(figsize=(17, 4.2), layout="tight")
    axes = fig.subplots(1, 4)
    axes[0].imshow(image, extent=(0, image.shape[1], image.shape[0], 0))
    axes[0].set(title=f"{name} as the model saw it", xlabel="x (pixels)", ylabel="y (pixels)")
    _overlay(fig, axes[1], image, v.maps[index, layer], f"attention received, layer {layer}",
             "mean attention received (over queries and heads)")  # fmt: skip
    block, output = v.token_norm[index, L - 1, P:], v.token_norm[index, L, P:]
    _overlay(fig, axes[2], image, block.reshape(rows, cols), f"token norm after block {L - 1}", "||x_t|| (residual)")
    _overlay(fig, axes[3], image, output.reshape(rows, cols), "token norm at the output", "||x_t|| (output)")
    marked = [t for t in v.high_norm_tokens if t["image"] == index]
    if marked:
        ph, pw = image.shape[0] / rows, image.shape[1] / cols
        xs, ys = [(t["col"] + 0.5) * pw for t in marked], [(t["row"] + 0.5) * ph for t in marked]
        axes[3].plot(xs, ys, "c+", markersize=9, label=f"high-norm ({len(marked)})")
        axes[3].legend(fontsize=7, loc="lower right")
    return save(fig, path)


def vision_summary(result, path: Path) -> Plot:
    """Per layer: the share of attention on each prefix token and on the strongest patch (mean over heads); the share
    of patch tokens that are high-norm by each rule; the median and largest patch norm."""
    v = result.vision
    L = result.num_layers
    fig = Figure(figsize=(15, 4.2), layout="tight")
    ax0, ax1, ax2 = fig.subplots(1, 3)
    columns = torch.cat([v.prefix_mass.mean(1), v.patch_peak.mean(1, keepdim=True)], dim=1)  # [L, P + 1]
    im = ax0.imshow(columns.numpy(), aspect="auto", cmap="magma", vmin=0)
    ax0.set_xticks(range(v.num_prefix + 1), [*v.prefix, "top patch"], rotation=45, fontsize=8)
    ax0.set(xlabel="token", ylabel="layer", title="where attention goes (mean over heads)")
    fig.colorbar(im, ax=ax0, label="share of attention (mean over queries and heads)")
    layers = range(L + 1)
    patches = len(v.images) * v.grid[0] * v.grid[1]
    ax1.plot(layers, v.above_threshold / patches, "o-", label=f"norm > {v.high_norm:g}")
    ax1.plot(layers, v.above_ratio / patches, "s--", label=f"norm > {v.norm_ratio:g} x median")
    top = float(max(v.above_threshold.max(), v.above_ratio.max())) / patches
    ax1.set(xlabel=f"layer ({L} = model output)", ylabel="share of patch tokens", title="high-norm patch tokens")
    ax1.set_ylim(0, max(0.05, 1.1 * top))
    ax1.legend(fontsize=8)
    ax2.semilogy(layers, v.patch_norm_max.clamp_min(1e-6), "o-", label="largest patch norm")
    ax2.semilogy(layers, v.patch_norm_median.clamp_min(1e-6), "s--", label="median patch norm")
    ax2.axhline(v.high_norm, color="#c0392b", ls=":", label=f"threshold {v.high_norm:g}")
    ax2.set(xlabel=f"layer ({L} = model output)", ylabel="||x_t||", title="patch token norms")
    ax2.legend(fontsize=8)
    return save(fig, path)


def vision_plots(result, out_dir: Path) -> list[Plot]:
    """The summary figure and one sink map per kept image (``sink_map_<i>.png``)."""
    maps = [sink_map(result, i, out_dir / f"sink_map_{i}.png") for i in range(result.vision.maps.shape[0])]
    return [vision_summary(result, out_dir / "vision_summary.png"), *maps]


def vision_html(result) -> str:
    """The report's image section: images, prefix masses per layer, high-norm counts per layer and tokens."""

    d = result.vision.to_dict()
    v = result.vision
    prefix_rows = [
        {"layer": layer, **{p: f"{float(v.prefix_mass[layer, :, i].mean()):.4f}" for i, p in enumerate(v.prefix)},
         "top patch": f"{float(v.patch_peak[layer].mean()):.4f}"}
        for layer in range(result.num_layers)
    ]  # fmt: skip
    norm = d["high_norm"]
    norm_rows = [
        {"layer": name, "median patch norm": med, "largest patch norm": top, f"norm > {norm['threshold']:g}": a,
         f"norm > {norm['ratio_to_median']:g} x median": r}
        for name, med, top, a, r in zip(d["token_norms"]["layers"], d["token_norms"]["median_patch"],
                                        d["token_norms"]["max_patch"], norm["above_threshold"], norm["above_ratio"],
                                        strict=True)
    ]  # fmt: skip
    shown = v.maps.shape[0]
    return f"""<h2>Image tokens</h2><p>{len(v.images)} images at {v.input_size[0]}x{v.input_size[1]} pixels, a
{v.grid[0]}x{v.grid[1]} patch grid after {html.escape(", ".join(v.prefix) or "no prefix tokens")}; sink maps of the
first {shown} images are drawn at layer {v.map_layer} (the layer whose strongest patch sink is largest).</p>
{table_html(d["images"], ["name", "width", "height"])}
<h2>Share of attention on [CLS], registers and the strongest patch (mean over heads; per head: heads.csv)</h2>
{table_html(prefix_rows, list(prefix_rows[0]), limit=200)}
<h2>High-norm patch tokens (Darcet et al. 2024: norm &gt; {norm["threshold"]:g}; scale-free: &gt;
{norm["ratio_to_median"]:g} x the median patch norm of the image and layer), of {norm["patches"]} patches</h2>
{table_html(norm_rows, list(norm_rows[0]), limit=200)}
<p>At the model output:</p>
{table_html(norm["tokens"], ["image", "row", "col", "norm", "ratio_to_median", "above_threshold", "above_ratio"])}"""


def prefix_column(label: str) -> str:
    """heads.csv's column of a prefix token: [CLS] -> cls_mass, [REG0] -> reg0_mass."""
    return label.strip("[]").lower() + "_mass"
