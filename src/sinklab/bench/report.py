"""bench.json, bench.csv, the plots and report.html (a sortable leaderboard), written all or nothing."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

from matplotlib.figure import Figure

from sinklab.report.files import staged_output
from sinklab.report.page import figure_html, page
from sinklab.report.plots import Plot, save

SORT_JS = """<script>document.querySelectorAll('table.sortable th').forEach((th,i)=>th.onclick=()=>{
const t=th.closest('table'),rows=[...t.querySelectorAll('tr')].slice(1),asc=th.dataset.asc!=='1';
th.dataset.asc=asc?'1':'0';
const v=r=>{const x=r.children[i]?.textContent??'';const n=parseFloat(x);return isNaN(n)?x:n};
rows.sort((a,b)=>{const p=v(a),q=v(b);return (p>q?1:p<q?-1:0)*(asc?1:-1)}).forEach(r=>t.appendChild(r))})</script>"""


def scalar_columns(rows: list[dict]) -> list[str]:
    """Every key with a number, string or None value, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key not in columns and (value is None or isinstance(value, int | float | str | bool)):
                columns.append(key)
    return columns


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def sortable_table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<table class="sortable"><tr>{head}</tr>{body}</table>'


def profile_plot(rows: list[dict], gu_length: int, path: Path) -> Plot | None:
    """Per model (side by side): first-token mass by layer at T = gu_length, one line per method."""
    key = f"first_token_mass_by_layer@{gu_length}"
    models = list(dict.fromkeys(r["model"] for r in rows if r.get(key)))
    if not models:
        return None
    fig = Figure(figsize=(4.2 * len(models), 3.4))
    for i, name in enumerate(models):
        ax = fig.add_subplot(1, len(models), i + 1)
        for r in rows:
            if r["model"] == name and r.get(key):
                ax.plot(range(len(r[key])), r[key], marker=".", label=r["method"])
        ax.set(title=f"{name}: sink profile (T={gu_length})", xlabel="layer", ylabel="mean alpha_1 (first token)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def ppl_plot(rows: list[dict], length: int, path: Path) -> Plot | None:
    """Per model: perplexity at ``length`` of every method row that has one (plain, methods, factorial cells)."""
    key = f"ppl@{length}"
    models = list(dict.fromkeys(r["model"] for r in rows if isinstance(r.get(key), float)))
    if not models:
        return None
    fig = Figure(figsize=(5.5 * len(models), 4.2))
    for i, name in enumerate(models):
        mine = [r for r in rows if r["model"] == name and isinstance(r.get(key), float)]
        ax = fig.add_subplot(1, len(models), i + 1)
        ax.barh(range(len(mine)), [r[key] for r in mine], color="#6b8fc9")
        ax.set_yticks(range(len(mine)), [r["method"] for r in mine], fontsize=7)
        ax.set(title=f"{name}: perplexity at T={length}", xlabel="perplexity", ylabel="method / factorial cell")
    fig.tight_layout()
    return save(fig, path)


def write_bench(result: dict, out_dir: str | Path) -> Path:
    """Write bench.json, bench.csv, plots and report.html into ``out_dir`` (all or nothing)."""
    rows = result["rows"]
    published = [r for r in rows if r.get("published")]
    protocol = result["protocol"]
    with staged_output(out_dir) as tmp:
        (tmp / "bench.json").write_text(json.dumps(result, indent=1))
        columns = scalar_columns(rows)
        with open(tmp / "bench.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({c: row.get(c) for c in columns})
        plots = [
            p
            for p in (
                profile_plot(rows, protocol["gu_length"], tmp / "bench_profiles.png"),
                ppl_plot(rows, protocol["method_lengths"][0], tmp / "bench_ppl.png"),
            )
            if p is not None
        ]
        factorials = "".join(
            f"<h3>{html.escape(name)}: factorial {html.escape(' x '.join(f['factors']))}"
            + (f" (prefix {html.escape(f['prefix'])})" if f["prefix"] else "") + "</h3>"
            + sortable_table([{"effect on log ppl": k, "value": v} for k, v in f["log_ppl_effects"].items()],
                             ["effect on log ppl", "value"])
            for name, rec in result["models"].items() for f in rec["factorials"]
        )  # fmt: skip
        body = (
            "<h2>Leaderboard (click a column to sort)</h2>"
            + sortable_table([r for r in rows if not r.get("published")], columns)
            + "<h2>Factorial effects</h2>" + (factorials or "<p><em>no factorial</em></p>")
            + "".join(figure_html(p) for p in plots)
            + "<h2>Published numbers (their own protocols)</h2>"
            + sortable_table(published, scalar_columns(published))
            + SORT_JS
        )  # fmt: skip
        header = [("protocol", f"v{protocol['version']} hash {protocol['hash']}"),
                  ("corpus", f"{protocol['corpus']} sha256 {protocol['corpus_sha256']}"),
                  ("models", ", ".join(result["models"])), ("wall time", f"{result['wall_s']:.0f} s"),
                  ("timings", result["cost_conditions"]["timings"])]  # fmt: skip
        (tmp / "report.html").write_text(page("sinklab bench", header, result.get("provenance"), body))
    return Path(out_dir)
