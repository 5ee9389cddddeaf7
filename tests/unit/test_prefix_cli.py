"""`sinklab prefix tune|apply|eval` on a tiny model: the files it writes, and its bad-input contract (one line on
stderr, exit code 2, nothing left behind), in the style of test_bad_input.py."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sinklab.cli import app
from sinklab.exploit.prefix import PrefixKV, load_prefix, save_prefix
from sinklab.models import load
from sinklab.testing import assert_refused

SMALL = ["--model", "tiny-llama", "--tune-tokens", "16", "--tune-seqs", "2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefix")
    (d / "prose.txt").write_text("A short text of prose for the prefix command and its held-out end. " * 30)
    (d / "junk.safetensors").write_text("not a tensor file")
    gemma, _ = load("tiny-gemma3")
    save_prefix(PrefixKV.from_tokens(gemma, [1]), d / "gemma.safetensors")  # no model name: only the shapes differ
    prefix = PrefixKV.from_tokens(gemma, [1])
    prefix.meta["model"] = "tiny-gemma3"
    save_prefix(prefix, d / "named.safetensors")
    return d


def test_tune_apply_eval(files, tmp_path):
    out = tmp_path / "tuned"
    res = CliRunner().invoke(
        app,
        ["prefix", "tune", *SMALL, "--n", "2", "--steps", "3", "--text", str(files / "prose.txt"), "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    record = json.loads((out / "tune.json").read_text())
    assert record["n"] == 2 and len(record["history"]["kl"]) == 3 and record["provenance"]["sinklab_commit"] is not None
    assert load_prefix(out / "prefix.safetensors").meta["model"] == "tiny-llama"
    prefix = ["--prefix", str(out / "prefix.safetensors"), "--model", "tiny-llama"]
    res = CliRunner().invoke(app, ["prefix", "apply", "once upon", *prefix, "--max-new-tokens", "4", "--window", "8"])
    assert res.exit_code == 0, res.output
    ev = tmp_path / "eval"
    args = ["prefix", "eval", *prefix, "--tune-tokens", "16", "--tune-seqs", "2", "--eval-tokens", "40"]
    res = CliRunner().invoke(app, [*args, "--window", "8", "--text", str(files / "prose.txt"), "--out", str(ev)])
    assert res.exit_code == 0, res.output
    record = json.loads((ev / "eval.json").read_text())
    assert [r["method"] for r in record["rows"]] == ["none", "keep-first-4", "prefix-2"]
    assert record["split"]["disjoint"] and "provenance" in record
    for row in record["rows"]:
        assert {"ppl", "ppl_w8a8", "ppl_kv4", "ppl_stream", "max_abs", "kurtosis", "sink_rate"} <= row.keys()


CASES = [
    ("prefix tune --model gpt-17", "unknown model 'gpt-17'"),
    ("prefix tune --n 0", "--n must be >= 1"),
    ("prefix tune --n -3", "--n must be >= 1"),
    ("prefix tune --steps 0", "--steps must be >= 1"),
    ("prefix tune --batch-size 0", "--batch-size must be >= 1"),
    ("prefix tune --objective mse", "unknown objective 'mse'"),
    ("prefix tune --lr 0", "lr must be > 0"),
    ("prefix tune --weight -1", "weight >= 0"),
    ("prefix tune --tune-seqs 100000", "disjoint"),
    ("prefix tune --text /no/such/file.txt", "does not exist"),
    ("prefix tune --out {d}/prose.txt", "is an existing file"),
    ("prefix tune --n 3 --init-text a", "--n 3 needs 3"),
    ("prefix apply hi --prefix {d}/missing.safetensors", "does not exist"),
    ("prefix apply hi --prefix {d}/junk.safetensors", "is not a safetensors prefix file"),
    ("prefix apply hi --prefix {d}/gemma.safetensors", "made for another model"),
    ("prefix apply hi --prefix {d}/named.safetensors", "was tuned for tiny-gemma3"),
    ("prefix apply hi --prefix {d}/gemma.safetensors --max-new-tokens 0", "--max-new-tokens must be >= 1"),
    ("prefix apply --prefix {d}/gemma.safetensors", "Missing argument"),
    ("prefix eval --prefix {d}/missing.safetensors", "does not exist"),
    ("prefix eval --prefix {d}/gemma.safetensors", "made for another model"),
    ("prefix eval --prefix {d}/gemma.safetensors --eval-tokens 1", "--eval-tokens must be >= 2"),
    ("prefix eval --prefix {d}/gemma.safetensors --window 0", "--window must be >= 1"),
    ("prefix eval --prefix {d}/gemma.safetensors --keep-first -1", "--keep-first must be >= 0"),
    ("prefix tnue", "No such command 'tnue'"),
]


@pytest.mark.parametrize("line, message", CASES, ids=[c[0] for c in CASES])
def test_prefix_bad_input(line, message, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = line.format(d=files).split(" ")
    if "--model" not in args and len(args) > 1 and args[1] in ("tune", "apply", "eval"):
        args += ["--model", "tiny-llama"]
    if args[1:2] in (["tune"], ["eval"]) and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    if args[1:2] == ["tune"]:
        args += ["--tune-tokens", "16"] + ([] if "--tune-seqs" in args else ["--tune-seqs", "2"])
    assert_refused(args, message, files, tmp_path)
