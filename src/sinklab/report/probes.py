"""Plots and the self-contained HTML page of `sinklab explain` (one section per probe), all or nothing."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sinklab.report.files import staged_output
from sinklab.report.page import figure_html, page, table_html
from sinklab.report.plots import Plot, save


def _arr(x) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in x], dtype=float) if isinstance(x, list) else np.asarray(x)


def noop_plot(section: dict, eps: float, path: Path) -> Plot:
    """alpha_1 against the sink's value norm ratio per head; per layer, the median ratio in sink and other heads."""
    m = section["measured"]
    alpha = np.asarray(m["alpha_1"], dtype=float)
    ratio = np.asarray(m["value_norm_ratio"], dtype=float)
    dormant = np.asarray(m["dormant"], dtype=bool)
    fig = Figure(figsize=(11, 3.8), layout="tight")
    ax0, ax1 = fig.subplots(1, 2)
    ax0.scatter(alpha[~dormant], ratio[~dormant], s=10, color="#8aa6d6", label="heads")
    ax0.scatter(alpha[dormant], ratio[dormant], s=12, color="#c0392b", label="dormant heads")
    ax0.axvline(eps, color="#999", ls=":")
    ax0.axhline(1.0, color="#999", ls=":")
    ax0.set(
        xscale="linear", yscale="log", xlabel="alpha_1", ylabel="||v_sink|| / median ||v||", title="no-op signature"
    )
    ax0.legend(fontsize=8)
    rows = m["per_layer"]
    layers = [r["layer"] for r in rows]
    ax1.semilogy(layers, _arr([r["median_value_ratio_sink_heads"] for r in rows]), "o-", label="sink heads")
    ax1.semilogy(layers, _arr([r["median_value_ratio_other_heads"] for r in rows]), "s--", label="other heads")
    ax1.axhline(1.0, color="#999", ls=":")
    ax1.set(xlabel="layer", ylabel="median value norm ratio", title="sink's value norm over the median")
    ax1.legend(fontsize=8)
    return save(fig, path)


def outlier_plot(section: dict, path: Path) -> Plot:
    """Largest |h| at the sink by layer (writing layer marked) and what attention and MLP write into its dims."""
    m = section["measured"]
    fig = Figure(figsize=(11, 3.8), layout="tight")
    ax0, ax1 = fig.subplots(1, 2)
    track = np.asarray(m["sink_dim_abs_by_layer"], dtype=float)
    ax0.semilogy(range(len(track)), np.maximum(track, 1e-6), "o-")
    ax0.axvline(m["write_layer"], color="#c0392b", ls="--", label=f"writing layer {m['write_layer']}")
    ax0.set(xlabel="layer", ylabel=f"|h_sink[{m['dim']}]|", title="the sink's largest dim across layers")
    ax0.legend(fontsize=8)
    seq = next((s for s in m["per_sequence"] if s["write_layer"] == m["write_layer"]), m["per_sequence"][0])
    dims = seq["dims"]
    x = np.arange(len(dims))
    if seq["attn_writes"] is not None:  # None: a hybrid's first block is linear attention (its input is not kept)
        ax1.bar(x - 0.2, seq["attn_writes"], 0.4, label=f"{seq['token_mixer']} writes")
    ax1.bar(x + 0.2, seq["mlp_writes"], 0.4, label="MLP writes")
    ax1.set_xticks(x, [str(d) for d in dims])
    ax1.set(xlabel="dim", ylabel="value added at the sink", title=f"layer {seq['write_layer']}: who writes it")
    ax1.legend(fontsize=8)
    return save(fig, path)


def bias_plot(section: dict, path: Path) -> Plot:
    """Per layer: cosine of the sink's contribution to its mean, and its coefficient of variation."""
    m = section["measured"]
    cos, cv = _arr(m["cosine_to_mean_by_layer"]), _arr(m["cv_by_layer"])
    fig = Figure(figsize=(8, 3.6), layout="tight")
    ax = fig.subplots()
    ax.plot(range(len(cos)), cos, "o-", label="cosine of c_t to its mean")
    ax.plot(range(len(cv)), cv, "s--", label="coefficient of variation")
    ax.set(
        xlabel="layer",
        ylabel="cosine / coefficient of variation",
        title="how constant is the sink's contribution (1 and 0: a bias)",
    )
    ax.legend(fontsize=8)
    return save(fig, path)


def anchor_plot(section: dict, path: Path) -> Plot:
    """Direction stability of the sink's state over layers; its key's cosine to the query axis against others'."""
    m = section["measured"]
    fig = Figure(figsize=(11, 3.8), layout="tight")
    ax0, ax1 = fig.subplots(1, 2)
    sink, mid = _arr(m["hidden_cosine_over_layers"]), _arr(m["middle_token_hidden_cosine_over_layers"])
    ax0.plot(range(1, len(sink) + 1), sink, "o-", label="sink token")
    ax0.plot(range(1, len(mid) + 1), mid, "s--", label="middle token")
    ax0.set(xlabel="layer l", ylabel="cos(h_l, h_{l-1})", title="hidden-state direction over layers")
    ax0.legend(fontsize=8)
    k_sink = _head_median(m["sink_key_cosine_to_query_axis"])
    k_other = _head_median(m["other_keys_cosine_to_query_axis"])
    ax1.plot(range(len(k_sink)), k_sink, "o-", label="sink key")
    ax1.plot(range(len(k_other)), k_other, "s--", label="median other key")
    ax1.set(xlabel="layer", ylabel="cosine to the query axis (median over heads)", title="keys against the query cone")
    ax1.legend(fontsize=8)
    return save(fig, path)


def _head_median(per_layer_heads) -> np.ndarray:
    """[L] median over heads of an [L, H] list; NaN for a layer with no value (a hybrid's linear layers)."""
    x = np.asarray(per_layer_heads, dtype=float)
    out = np.full(x.shape[0], np.nan)
    measured = ~np.isnan(x).all(axis=1)
    out[measured] = np.nanmedian(x[measured], axis=1)
    return out


def emergence_plot(section: dict, model: str, path: Path) -> Plot:
    """Sink_1 on natural, random and repeated tokens at T = 64, beside Gu et al.'s Table 1."""
    m = section["measured"]
    kinds = ("natural", "random", "repeated")
    rows = {model: [100 * m["kinds"][k]["sink_rate"] for k in kinds]}
    for name, pub in m["published_percent"].items():
        rows[name] = [np.nan if pub[k] is None else pub[k] for k in kinds]
    colors = ["#c0392b", "#c6dbef", "#9ecae1", "#4292c6", "#08519c", "#08306b"]
    fig = Figure(figsize=(9, 3.8), layout="tight")
    ax = fig.subplots()
    width = 0.8 / len(rows)
    for i, (name, values) in enumerate(rows.items()):
        bars = ax.bar(np.arange(3) + i * width, values, width, label=name, color=colors[i % len(colors)])
        ax.bar_label(bars, fmt="%.0f", fontsize=6)
    ax.set_xticks(np.arange(3) + 0.4 - width / 2, kinds)
    ax.set(
        xlabel="input tokens",
        ylabel=f"Sink_1^{m['eps']} (%)",
        ylim=(0, 105),
        title=f"T = {m['length']}: this model vs Gu et al. Table 1",
    )
    ax.legend(fontsize=7, ncol=3)
    return save(fig, path)


def _effects_of(d: dict, emergence: bool) -> tuple[list[str], list[float], list[float]]:
    """Names, loss changes and sink-rate changes of the interventions (or of emergence's changed inputs)."""
    names, loss, rate = [], [], []
    for probe, section in d["probes"].items():
        if (probe == "emergence") != emergence:
            continue
        for name, eff in section.get("interventions", {}).items():
            if isinstance(eff, dict) and "sink_rate" in eff and name != "baseline":
                names.append(name if emergence else f"{probe}: {name}")
                loss.append(np.nan if eff.get("loss_delta") is None else eff["loss_delta"])
                delta = eff.get("sink_rate_delta")
                rate.append(delta if delta is not None else eff["sink_rate"] - eff["baseline_sink_rate"])
    return names, loss, rate


def interventions_plot(d: dict, path: Path) -> Plot | None:
    """Loss change and sink-rate change of every intervention; emergence's changed inputs (random, repeated
    tokens) on their own row of axes, since they change the text, not the model."""
    kinds = (("intervention", False), ("changed input (emergence)", True))
    rows = [(what, effects) for what, emergence in kinds if (effects := _effects_of(d, emergence))[0]]
    if not rows:
        return None
    heights = [len(names) + 1.5 for _, (names, _, _) in rows]
    fig = Figure(figsize=(11, 0.35 * sum(heights) + 1.0), layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False, gridspec_kw={"height_ratios": heights})
    for (what, (names, loss, rate)), (ax0, ax1) in zip(rows, axes, strict=True):
        y = np.arange(len(names))
        ax0.barh(y, loss, color="#1f4e9c")
        ax0.set_yticks(y, names, fontsize=8)
        ax1.barh(y, 100 * np.asarray(rate, dtype=float), color="#c0392b")
        ax1.set_yticks(y, [""] * len(names))
        ax1.xaxis.set_major_locator(MaxNLocator(nbins=6))  # readable ticks whatever the range
        ax0.set(xlabel="loss change (nats/token)", ylabel=what, title=f"next-token loss: {what}")
        ax1.set(xlabel="Sink_1 change (percentage points)", ylabel=what, title=f"Sink_1^{d['eps']}: {what}")
        for ax in (ax0, ax1):
            ax.axvline(0, color="#666", lw=0.8)
    return save(fig, path)


def all_probe_plots(d: dict, out_dir: Path) -> dict[str, Plot]:
    plots: dict[str, Plot | None] = {"interventions": interventions_plot(d, out_dir / "probe_interventions.png")}
    p = d["probes"]
    if "noop" in p:
        plots["noop"] = noop_plot(p["noop"], d["eps"], out_dir / "probe_noop.png")
    if "outlier" in p:
        plots["outlier"] = outlier_plot(p["outlier"], out_dir / "probe_outlier.png")
    if "bias" in p:
        plots["bias"] = bias_plot(p["bias"], out_dir / "probe_bias.png")
    if "anchor" in p:
        plots["anchor"] = anchor_plot(p["anchor"], out_dir / "probe_anchor.png")
    if "emergence" in p:
        plots["emergence"] = emergence_plot(p["emergence"], d["model"], out_dir / "probe_emergence.png")
    return {k: v for k, v in plots.items() if v is not None}


def _scalars(measured: dict) -> list[dict]:
    return [
        {"quantity": k, "value": v}
        for k, v in measured.items()
        if v is None
        or isinstance(v, bool | int | float | str)
        or (isinstance(v, list) and len(v) <= 8 and not any(isinstance(x, list | dict) for x in v))
    ]


def _effects(section: dict) -> list[dict]:
    rows = []
    for name, eff in section.get("interventions", {}).items():
        if not isinstance(eff, dict):
            rows.append({"intervention": name, "what": str(eff)})
            continue
        row = {"intervention": name, "what": eff.get("what", "")}
        for key in ("loss", "baseline_loss", "loss_delta", "sink_rate", "baseline_sink_rate"):
            if key in eff:
                row[key] = eff[key]
        if "new_sink" in eff:
            row["new sink (position token heads)"] = "; ".join(
                f"{s['position']} {s['token']!r} {s['heads']}" for s in eff["new_sink"][:4]
            )
        rows.append(row)
    return rows


def render_probes_html(d: dict, plots: dict[str, Plot]) -> str:
    """The page: a summary and provenance, then per probe its claim, measured scalars, interventions and plot."""
    base = d["baseline"]
    summary = [
        ("model", d["model"]),
        ("layers x heads", f"{d['num_layers']} x {d['num_heads']} ({d['num_kv_heads']} KV heads)"),
        ("sequences x tokens", f"{d['num_sequences']} x {d['sequence_length']} ({d['tokens']} tokens)"),
        (f"Sink_1^{d['eps']}", f"{base['sink_rate']:.2%}"),
        ("baseline loss", str(base.get("loss", base.get("loss_note")))),
        ("time", f"{d['seconds']:.0f} s"),
    ]
    body = [
        "<p>One probe per mechanism the literature proposes for attention sinks; each reports a measured quantity "
        "and an intervention with its effect on next-token loss and on Gu et al.'s Sink_1^eps. Full numbers: "
        "probes.json.</p>"
    ]
    if "interventions" in plots:
        body.append(f"<h2>All interventions</h2>{figure_html(plots['interventions'])}")
    for name, section in d["probes"].items():
        cols = ["intervention", "what", "loss", "baseline_loss", "loss_delta", "sink_rate", "baseline_sink_rate"]
        effects = _effects(section)
        if any("new sink (position token heads)" in r for r in effects):
            cols.append("new sink (position token heads)")
        figure = figure_html(plots[name]) if name in plots else ""
        body.append(
            f"<h2>{html.escape(name)}</h2><p><em>{html.escape(section['claim'])}</em></p>"
            f"<h3>Measured</h3>{table_html(_scalars(section['measured']), ['quantity', 'value'], limit=40)}"
            f"<h3>Interventions</h3>{table_html(effects, cols)}{figure}"
        )
    for name, reason in d["not_applicable"].items():
        body.append(f"<h2>{html.escape(name)}</h2><p><strong>does not apply:</strong> {html.escape(reason)}</p>")
    return page(f"sinklab explain: {d['model']}", summary, d.get("provenance"), "".join(body))


def write_explain_report(result, out_dir: Path) -> Path:
    """Write probes.json, PNG plots and report.html into ``out_dir``: into a temporary directory first, moved into
    place only when everything succeeded."""
    with staged_output(out_dir) as tmp:
        d = result.to_dict()
        (tmp / "probes.json").write_text(json.dumps(d, indent=1))
        plots = all_probe_plots(d, tmp)
        (tmp / "report.html").write_text(render_probes_html(d, plots))
    return out_dir
