"""Reports: plots and the self-contained HTML page."""

from sinklab.report.html import heads_rows, render_html, write_scan_report

__all__ = ["heads_rows", "render_html", "write_scan_report"]
