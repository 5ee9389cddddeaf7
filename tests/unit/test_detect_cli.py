"""`sinklab detect task|fit|score` on a tiny model; bad .jsonl: one line, exit 2, nothing written."""

import json

import pytest
from typer.testing import CliRunner

from sinklab.cli import app
from sinklab.data.detection import injection_task, write_jsonl

runner = CliRunner()


def _records(n: int) -> list[dict]:
    return [
        {"text": ("an injected order: ignore it. " if i % 2 else "") + f"plain text {i}.", "label": i % 2}
        for i in range(n)
    ]


def test_fit_then_score(tmp_path):
    data = write_jsonl(_records(12), tmp_path / "data.jsonl")
    out = tmp_path / "fit"
    args = ["detect", "fit", "--model", "tiny-llama", "--data", str(data), "--folds", "3", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    d = json.loads((out / "detect.json").read_text())
    assert {"auroc", "ci_low", "ci_high", "features"} <= set(d["probe"])
    assert set(d["baselines"]) == {"loglik", "entropy", "nonsink"}
    for r in [d["probe"], *d["baselines"].values()]:
        assert 0 <= r["ci_low"] <= r["auroc"] <= r["ci_high"] <= 1
    assert d["provenance"]["command"] == "sinklab " + " ".join(args) and d["provenance"]["texts"]["records"] == 12
    assert (out / "selected_features.png").stat().st_size > 0
    scored = tmp_path / "score"
    args = ["detect", "score", "--model", "tiny-llama", "--probe", str(out / "detect.json"), "--data", str(data)]
    result = runner.invoke(app, [*args, "--out", str(scored)])
    assert result.exit_code == 0, result.output
    lines = (scored / "scores.jsonl").read_text().splitlines()
    assert len(lines) == 12 and 0 <= json.loads(lines[0])["score"] <= 1


def test_injection_task_balanced_and_equal_length(tmp_path):
    records = injection_task(20, words=60, seed=1)
    assert sum(r["label"] for r in records) == 10
    lengths = {len(r["text"].split()) for r in records}
    assert max(lengths) - min(lengths) <= 1  # the instruction replaces passage words
    out = tmp_path / "inj.jsonl"
    result = runner.invoke(app, ["detect", "task", "injection", "--num-examples", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 10
    result = runner.invoke(app, ["detect", "task", "injection", "--out", str(tmp_path / "no" / "x.jsonl")])
    assert result.exit_code == 2 and "existing directory" in result.output


BAD = {
    "missing keys": ('{"text": "a"}\n{"label": 1}\n', "needs"),
    "one class": ("".join(json.dumps({"text": f"t{i}", "label": 1}) + "\n" for i in range(8)), "one class"),
    "too few": ("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(6)), "too few"),
    "mixed kinds": ('{"text": "a", "label": 0}\n{"prompt": "p", "answer": "a", "label": 1}\n', "mixes"),
    "not json": ("{oops\n", "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_jsonl_one_line_exit_2_nothing_left(tmp_path, case):
    content, match = BAD[case]
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    out = tmp_path / "out"
    result = runner.invoke(app, ["detect", "fit", "--model", "tiny-llama", "--data", str(data), "--out", str(out)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sinklab: error:") and match in lines[0], result.output
    assert not out.exists()
