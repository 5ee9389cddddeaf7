"""Reports: every plot has labelled axes and colour bars (checked on the figures as they are saved), the pages render
in headless Chromium with no broken image, and each page's header says how the result was made."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

import sinklab
from sinklab.report.plots import save
from sinklab.report.stream import sinks_sweep_plot

pytestmark = pytest.mark.xdist_group("reports")  # make test (--dist loadgroup) builds the reports once
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHECK = """<script>window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0}));
  const pre = document.createElement("pre"); pre.id = "sinklab-check";
  pre.textContent = JSON.stringify(images); document.body.appendChild(pre);
});</script>"""


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """A scan and an explain report of tiny models (seconds)."""
    root = tmp_path_factory.mktemp("reports")
    model, tok = sinklab.load("tiny-llama")
    sinklab.scan(model, tok, None, max_tokens=48, num_texts=2, progress=False).save(root / "scan")
    sinklab.explain(model, tok, None, max_tokens=32, num_texts=1, progress=False).save(root / "explain")
    return root


def _images(page):
    return re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', page.read_text())


@pytest.mark.parametrize("name", ["scan", "explain"])
def test_every_plot_is_labelled_and_the_header_has_provenance(reports, name):
    page = reports / name / "report.html"
    alts = [html.unescape(a) for a in _images(page)]
    assert len(alts) == len(list((reports / name).glob("*.png"))) >= 4
    for alt in alts:  # every panel: title, x and y labels (save refuses a figure without them)
        assert all(re.search(r"x = \S.*, y = \S", part) for part in alt.split("; ") if not part.startswith("colour"))
    text = page.read_text()
    assert "How this was made" in text and sinklab.__version__ in text and "token_ids_sha256" in text
    saved = json.loads((reports / name / ("metrics.json" if name == "scan" else "probes.json")).read_text())
    assert saved["provenance"]["model"]["id"] == "tiny-llama"


def test_colour_bars_and_log_scale(reports):
    alts = {a.split(":")[0]: html.unescape(a) for a in _images(reports / "scan" / "report.html")}
    heat = next(a for a in alts.values() if "first-token mass alpha_1 per head" in a)
    assert "colour = alpha_1" in heat
    attention = next(a for k, a in alts.items() if k.startswith("layer"))
    assert "colour = attention weight (log scale" in attention and "key position and token" in attention


def test_first_token_sink_has_one_token(reports):
    sinks = json.loads((reports / "scan" / "metrics.json").read_text())["sinks"]
    assert all("|" not in s["token"] for s in sinks)


def test_unlabelled_figure_is_refused(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.subplots()
    ax.imshow([[0, 1], [1, 0]])
    ax.set(xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="colour bar"):
        save(fig, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="lacks an axis label"):
        save(Figure().add_subplot().figure, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_sinks_sweep_is_a_line_plot(tmp_path):
    plot = sinks_sweep_plot({"0": 40.1, "1": 12.3, "2": 11.9, "4": 11.8}, 260, tmp_path / "sweep.png", dense_ppl=11.5)
    (panel,) = plot.panels
    assert plot.path.exists() and panel["ylabel"] == "perplexity" and panel["yscale"] == "linear"
    assert panel["lines"] >= 1 and panel["bars"] == 0


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it)")
@pytest.mark.parametrize("name", ["scan", "explain"])
def test_report_renders_in_chromium(reports, name, tmp_path):
    page = tmp_path / "page.html"
    page.write_text((reports / name / "report.html").read_text().replace("</body>", CHECK + "</body>"))
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="sinklab-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stderr[-2000:]
    images = json.loads(html.unescape(found.group(1)))
    assert images and all(i["ok"] for i in images), images  # no broken image
    assert all(" = " in i["alt"] for i in images)  # every image says what its axes show
