"""The `sinklab scan` command: files written, one-line errors with exit code 2, nothing left behind on failure."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from sinklab.cli import app

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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "gpt-17"], "unknown model 'gpt-17'; accepted: smollm2-135m"),
        (["--eps", "0"], "--eps must lie in (0, 1)"),
        (["--eps", "1.2"], "--eps must lie in (0, 1)"),
        (["--text", "/no/such/file.txt"], "does not exist"),
        (["--max-tokens", "4096"], "exceed the model's 1024 positions"),
        (["--bos", "maybe"], "accepted: auto, always, never"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, args, message):
    out = tmp_path / "out"
    base = ["--model", "tiny-llama"] if "--model" not in args else []
    proc = subprocess.run(
        [sys.executable, "-m", "sinklab.cli", "scan", *base, *args, "--out", str(out)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_empty_text_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    result = runner.invoke(app, ["scan", "--model", "tiny-llama", "--text", str(empty), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert not (tmp_path / "o").exists()


def test_models_command():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "smollm2-135m" in result.output and "tiny-bert" in result.output
