"""Plots of `sinklab train` and the pre-training study."""

from __future__ import annotations

from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from sinklab.report.plots import Plot, save

PANELS = (
    ("val_loss", "validation loss", False),
    ("sink_rate", "Sink_1^0.3 (T=64)", False),
    ("first_token_mass_mean", "first-token mass (mean over heads)", False),
    ("max_activation", "max |residual activation|", True),
    ("kurtosis", "residual kurtosis (max over layers)", True),
)


def training_curves(runs: list[dict], path: str | Path) -> Plot:
    """Validation loss, Sink_1, first-token mass, max |activation| and kurtosis against step, one line per run."""
    fig = Figure(figsize=(5 * len(PANELS), 4), layout="tight")
    axes = fig.subplots(1, len(PANELS))
    colors = colormaps["tab10" if len(runs) <= 10 else "tab20"].colors
    for ax, (key, label, log) in zip(axes, PANELS, strict=True):
        ax.set_prop_cycle(color=colors)
        for run in runs:
            steps = [row["step"] for row in run["history"]]
            ax.plot(steps, [row[key] for row in run["history"]], marker=".", label=run["name"])
        ax.set(title=label, xlabel="step", ylabel=label)
        if log:
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    return save(fig, Path(path))
