"""Plots of `sinklab eval-stream`."""

from __future__ import annotations

from pathlib import Path

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
