"""Self-contained HTML report (plots inlined as base64) and the files `sinklab scan` writes, all or nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from sinklab.report.files import staged_output
from sinklab.report.page import figure_html, page, table_html
from sinklab.report.plots import Plot, all_plots
from sinklab.report.vision import prefix_column, vision_html, vision_plots


def heads_rows(result) -> list[dict]:
    """One row per (layer, head): the content of heads.csv. A learned sink slot's mass (gpt-oss sinks, the sink and
    kv_bias variants) and an image encoder's prefix-token and top-patch masses are columns of their own."""
    group = result.num_heads // max(1, result.num_kv_heads)
    vision = result.vision
    sink_heads = result.sink_heads  # [L, H], computed once
    rows = []
    for layer in range(result.num_layers):
        for head in range(result.num_heads):
            alpha = float(result.first_token_mass[layer, head])
            row = {
                "layer": layer,
                "head": head,
                "kv_head": head // group,
                "layer_type": result.layer_types[layer],
                "first_token_mass": round(alpha, 6),
                "is_sink": int(sink_heads[layer, head]),
                "sink_share": round(float(result.sink_share[layer, head]), 6),
                "entropy": round(float(result.entropy[layer, head]), 6),
                "top_other_key_mass": round(float(result.top_other_mass[layer, head]), 6),
            }
            if result.sink_slot_mass is not None:
                row["sink_slot_mass"] = round(float(result.sink_slot_mass[layer, head]), 6)
            if vision is not None:
                for i, label in enumerate(vision.prefix):
                    row[prefix_column(label)] = round(float(vision.prefix_mass[layer, head, i]), 6)
                row["top_patch_mass"] = round(float(vision.patch_peak[layer, head]), 6)
            rows.append(row)
    return rows


def render_html(result, plots: list[Plot]) -> str:
    d = result.to_dict()
    layer, head = result.strongest_head()
    summary = [
        ("model", d["model"]),
        ("layers x heads", f"{d['num_layers']} x {d['num_heads']} ({d['num_kv_heads']} KV heads)"),
        (
            "images x tokens" if result.vision is not None else "sequences x tokens",
            f"{d['num_sequences']} x {d['sequence_length']} ({d['tokens']} tokens)",
        ),
        (f"Sink_1^{d['eps']} (Gu et al.)", f"{d['sink_rate']:.2%}"),
        ("strongest sink head", f"layer {layer}, head {head} (alpha_1 = {result.first_token_mass[layer, head]:.3f})"),
        ("sinks found", str(len(d["sinks"]))),
        ("massive activations", str(len(d["massive_activations"]))),
        ("largest |hidden|", f"{float(result.layer_max_abs.max()):.1f}"),
    ]
    if result.sink_slot_mass is not None:
        summary.append(("learned sink slot", slot_summary(result)))
    body = f"""<h2>Plots</h2>{"".join(figure_html(p) for p in plots)}
<h2>Sinks (keys whose mean received mass exceeds {d["sink_threshold"]} in some head)</h2>
{table_html(d["sinks"], ["position", "token", "distinct_tokens", "mass", "heads", "sequences", "layers"])}
<h2>Massive activations (|x| &gt; 100 and &ge; 1000x the median, Sun et al. 2024)</h2>
{table_html(d["massive_activations"], ["layer", "position", "token", "dim", "value", "ratio_to_median", "sequences"])}
<p>Definitions: alpha_1 is the mean attention the first token receives over the queries that may attend it
(Gu et al. 2024); Sink_1^eps is the share of (sequence, head) pairs with alpha_1 &gt; eps, every sequence
thresholded alone as in Gu et al.'s code (heads.csv: sink_share per head; is_sink: the mean alpha_1 &gt; eps; the
share of such heads is sink_rate_of_mean = {d["sink_rate_of_mean"]:.2%}).</p>"""
    if result.vision is not None:
        body += vision_html(result)
    return page(f"sinklab scan: {d['model']}", summary, d.get("provenance"), body)


def slot_summary(result) -> str:
    """The learned sink slot's mass in one line: the mean over (layer, head) and the largest head."""
    slot = result.sink_slot_mass
    idx = int(slot.nan_to_num(-1.0).argmax())
    layer, head = idx // result.num_heads, idx % result.num_heads
    return (
        f"mean {float(slot.nanmean()):.3f} of each row's attention; largest layer {layer} head {head}: "
        f"{float(slot[layer, head]):.3f} (mass no real key receives; sink_slot_mass in heads.csv)"
    )


def write_scan_report(result, out_dir: Path) -> Path:
    """Write metrics.json, heads.csv, PNG plots and report.html into ``out_dir``: into a temporary directory first,
    moved into place only when everything succeeded, so a failure leaves no half-written report."""
    with staged_output(out_dir) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(result.to_dict(), indent=1))
        rows = heads_rows(result)
        with open(tmp / "heads.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        plots = all_plots(result, tmp)
        if result.vision is not None:
            plots += vision_plots(result, tmp)
        (tmp / "report.html").write_text(render_html(result, plots))
    return out_dir
