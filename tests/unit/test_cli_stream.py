"""`sinklab stream` and `sinklab eval-stream` on the tiny model: outputs, exit codes, no partial output."""

import json

import pytest
from typer.testing import CliRunner

from sinklab.cli import app

runner = CliRunner()


def test_stream_prompt_runs_and_reports():
    res = runner.invoke(
        app,
        [
            "stream",
            "--model",
            "tiny-llama",
            "--prompt",
            "hello",
            "--sinks",
            "2",
            "--window",
            "8",
            "--max-new-tokens",
            "20",
            "--ignore-eos",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "20 tokens" in res.output and "cache 10 tokens" in res.output


def test_stream_interactive_without_stdin_exits_cleanly():
    res = runner.invoke(app, ["stream", "--model", "tiny-llama", "--interactive", "--max-new-tokens", "3"], input="")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    "args",
    [
        ["--prompt", "x", "--sinks", "8", "--window", "8"],
        ["--prompt", "x", "--window", "-3"],
        ["--prompt", "x", "--positions", "rope"],
        [],
    ],
)
def test_stream_bad_input(args):
    res = runner.invoke(app, ["stream", "--model", "tiny-llama", *args])
    assert res.exit_code == 2
    assert len(res.output.strip().splitlines()) == 1 and "error" in res.output


def test_eval_stream_writes_json_and_plots(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            "eval-stream",
            "--model",
            "tiny-llama",
            "--text",
            str(text),
            "--tokens",
            "48",
            "--window",
            "16",
            "--sinks",
            "2",
            "--policies",
            "dense,window,sink,recompute,int8-sinks,knorm,h2o-norm",
            "--recompute-points",
            "4",
            "--chunk",
            "3",
            "--sweep",
            "0,1,2,4,8",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    record = json.loads((out / "stream.json").read_text())
    assert set(record["policies"]) == {"dense", "window", "sink", "recompute", "int8-sinks", "knorm", "h2o-norm"}
    for row in record["policies"].values():
        assert row["ppl"] > 1 and row["peak_mem_mb"] > 0 and row["tokens_per_s"] > 0
    assert record["policies"]["sink"]["peak_mem_mb"] < record["policies"]["dense"]["peak_mem_mb"]
    assert {record["policies"][p]["scored"] for p in ("dense", "window", "sink")} == {"parallel"}
    assert record["policies"]["knorm"]["scored"] == "token by token, chunk 3"
    assert set(record["sweep"]["ppl_by_num_sinks"]) == {"0", "1", "2", "4", "8"}
    assert record["sweep"]["ppl_by_num_sinks"]["2"] == record["policies"]["sink"]["ppl"]
    assert (out / "ppl_vs_position.png").stat().st_size > 0 and (out / "sinks_sweep.png").stat().st_size > 0


def test_eval_stream_exact_decode_gives_the_parallel_perplexities(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    base = ["eval-stream", "--model", "tiny-llama", "--text", str(text), "--tokens", "40", "--window", "12"]
    base += ["--sinks", "2", "--policies", "dense,window,sink"]
    records = {}
    for extra in ([], ["--exact-decode"], ["--evict", "before"]):
        out = tmp_path / "-".join(["out", *extra])
        res = runner.invoke(app, [*base, *extra, "--out", str(out)])
        assert res.exit_code == 0, res.output
        records[" ".join(extra)] = json.loads((out / "stream.json").read_text())["policies"]
    assert not (tmp_path / "out" / "sinks_sweep.png").exists()  # no sweep unless asked
    for policy in ("dense", "window", "sink"):
        assert abs(records[""][policy]["ppl"] / records["--exact-decode"][policy]["ppl"] - 1) < 1e-4
        assert records["--exact-decode"][policy]["scored"] == "token by token, chunk 1"
    assert records["--evict before"]["sink"]["ppl"] != records[""]["sink"]["ppl"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "4", "--sinks", "4"], "larger than"),
        (["--sinks", "-1"], ">= 0"),
        (["--tokens", "10", "--window", "12"], "exceed"),
        (["--tokens", "5000"], "fewer than"),
        (["--policies", "dense,magic"], "unknown policy"),
        (["--chunk", "13"], "chunk"),
        (["--window", "0"], ">= 1"),
        (["--sweep", "0,x,4"], "--sweep"),
        (["--sweep", "-1"], "--sweep"),
        (["--evict", "sometimes"], "evict"),
    ],
)
def test_eval_stream_bad_input_leaves_no_output(tmp_path, args, message):
    text = tmp_path / "t.txt"
    text.write_text("short text. " * 20)
    out = tmp_path / "out"
    base = ["eval-stream", "--model", "tiny-llama", "--text", str(text), "--tokens", "48", "--window", "12"]
    res = runner.invoke(app, [*base, "--out", str(out), *args])
    assert res.exit_code == 2 and message in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".stream-*"))
