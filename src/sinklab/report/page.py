"""The building blocks of every self-contained HTML report: the page (title, summary, provenance, body), inline
figures and tables."""

from __future__ import annotations

import base64
import html

from sinklab.report.plots import Plot

STYLE = """<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:14px;vertical-align:top}
.provenance td,.provenance th{font-size:12px;color:#555}
img{max-width:100%}figure{margin:1em 0}figcaption{font-size:12px;color:#666}</style>"""


def figure_html(plot: Plot) -> str:
    """The plot inline (base64 PNG), its alt text and caption naming every axis and colour bar."""
    data = base64.b64encode(plot.path.read_bytes()).decode()
    alt = html.escape(plot.alt)
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'


def _value(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_value(x)}" for k, x in v.items() if x is not None)
    if isinstance(v, list):
        return "; ".join(_value(x) for x in v)
    return str(v)


def provenance_html(provenance: dict | None) -> str:
    """The report header's record of how the result was made (``sinklab.provenance``)."""
    if not provenance:
        return "<p><em>no provenance recorded</em></p>"
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_value(v))}</td></tr>"
        for k, v in provenance.items()
        if v is not None
    )
    return f'<table class="provenance">{rows}</table>'


def page(title: str, header: list[tuple[str, str]], provenance: dict | None, body: str) -> str:
    """A self-contained report page: title, summary table, provenance, then the body."""
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in header)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>{STYLE}</head><body>'
        f"<h1>{html.escape(title)}</h1><table>{rows}</table><h2>How this was made</h2>"
        f"{provenance_html(provenance)}{body}</body></html>"
    )


def table_html(rows: list[dict], columns: list[str], limit: int = 20) -> str:
    if not rows:
        return "<p><em>none found</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>" for r in rows[:limit]
    )
    more = f"<p>{len(rows) - limit} more in metrics.json</p>" if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"
