"""Plots of `sinklab eval-stream`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from sinklab.report.plots import Plot, save


def sinks_sweep_plot(ppl_by_num_sinks: dict[str, float], cache_size: int, path: Path, dense_ppl=None) -> Plot:
    """Perplexity against the number of sink tokens kept at a fixed cache size (StreamingLLM Table 2), a line on a
    linear axis with each value written at its point; dense attention as a reference line."""
    ks = [int(k) for k in ppl_by_num_sinks]
    ppl = list(ppl_by_num_sinks.values())
    fig = Figure(figsize=(5.5, 3.6), layout="tight")
    ax = fig.subplots()
    ax.plot(ks, ppl, "o-", color="tab:blue", label="sinks + recent tokens")
    for k, value in zip(ks, ppl, strict=True):
        ax.annotate(f"{value:.2f}", (k, value), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    if dense_ppl is not None:
        ax.axhline(dense_ppl, color="black", ls="--", lw=1, label=f"dense ({dense_ppl:.2f})")
    ax.set_xticks(ks)
    ax.set(
        xlabel=f"sink tokens kept (cache size {cache_size} fixed)",
        ylabel="perplexity",
        title="Perplexity by number of sinks",
    )
    ax.legend(fontsize=8)
    return save(fig, path)


def stream_plots(result: dict, out_dir: Path, num_sinks: int, window: int, smooth: int = 128) -> list[Path]:
    """ppl_vs_position.png (StreamingLLM Fig. 3 analogue) and, with a sweep, sinks_sweep.png (Table 2 analogue)."""
    fig = Figure(figsize=(8, 4.5), layout="tight")
    ax = fig.subplots()
    for name, (pos, nll) in result["curves"].items():
        pos, nll = np.asarray(pos), np.asarray(nll)
        if name == "recompute":
            ax.plot(pos, np.exp(nll), "o", ms=3, label=f"{name} (per token)")
            continue
        k = min(smooth, len(nll))
        rolling = np.convolve(nll, np.ones(k) / k, mode="valid")
        ax.plot(pos[k - 1 :], np.exp(rolling), label=name)
    ax.axvline(num_sinks + window, color="grey", ls="--", lw=1, label="cache size")
    ax.set_yscale("log")
    ax.set(
        xlabel="position in the stream (tokens)",
        ylabel=f"perplexity (rolling mean of NLL over {smooth} tokens)",
        title=f"Streaming perplexity: {num_sinks} sinks + window {window}",
    )
    ax.legend(fontsize=8)
    paths = [save(fig, out_dir / "ppl_vs_position.png").path]
    if "sweep" in result:
        dense = result["policies"].get("dense", {}).get("ppl")
        sweep = result["sweep"]["ppl_by_num_sinks"]
        paths.append(sinks_sweep_plot(sweep, num_sinks + window, out_dir / "sinks_sweep.png", dense).path)
    return paths
