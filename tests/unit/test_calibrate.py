"""Multiple-choice tasks and scoring, the calibration search and its outputs, `sinklab calibrate` and its refusals."""

import json

import pytest
import torch

from sinklab.cli import app
from sinklab.data import read_texts
from sinklab.data.choice import ChoiceExample, choice_task, cloze, kv_recall, read_choices
from sinklab.errors import SinklabInputError
from sinklab.exploit.redistribute import load_method
from sinklab.exploit.redistribute.calibrate import bootstrap, calibrate
from sinklab.exploit.redistribute.score import score_choices
from sinklab.models import load


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _brute_force(model, tok, ex: ChoiceExample) -> list[float]:
    """Each choice alone, full logits: mean log p of its tokens after the context."""
    ctx = tok(ex.context)["input_ids"]
    out = []
    for c in ex.choices:
        ids = ctx + tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        out.append(float(torch.stack([logp[t - 1, ids[t]] for t in range(len(ctx), len(ids))]).mean()))
    return out


def test_scores_equal_one_choice_at_a_time():
    model, tok = load("tiny-llama")
    examples = [
        ChoiceExample("the cat sat on the", (" mat", " sofa and the chair", " x"), 0),
        ChoiceExample("ab", ("c", "d"), 1),  # one byte each: the one-row path
        ChoiceExample("a longer context with more bytes in it", (" yes", " no"), 1),
    ]
    scores = score_choices(model, tok, examples, batch_size=2)
    for n, ex in enumerate(examples):
        assert torch.allclose(
            scores.scores[n, : len(ex.choices)],
            torch.tensor(_brute_force(model, tok, ex), dtype=torch.float64),
            atol=1e-5,
        )
    assert scores.scores[1, 2] == float("-inf")  # an example with fewer choices


def test_generated_tasks_are_seeded_and_well_formed():
    corpus = " ".join(read_texts(None)[0].split())
    for make in (cloze, kv_recall):
        a, b = make(6, seed=3), make(6, seed=3)
        assert a == b and a != make(6, seed=4)
        for ex in a:
            assert len(ex.choices) == 4 and len(set(ex.choices)) == 4 and 0 <= ex.label < 4
    for ex in cloze(6, seed=3):  # the blank is the passage's next word
        assert ex.context + ex.choices[ex.label] in corpus
    for ex in kv_recall(6, seed=3):  # the answer is the value paired with the asked key; distractors are in context
        key = ex.context.rsplit("\n", 1)[1].removesuffix(" =")
        assert f"{key} ={ex.choices[ex.label]}\n" in ex.context
        assert all(f"={c}\n" in ex.context for c in ex.choices)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"context": "a", "choices": ["b", "c"]}, "missing label"),
        ({"choices": ["b", "c"], "label": 0}, "missing context"),
        ({"context": "a", "choices": ["b", "c"], "label": 2}, "out of range"),
        ({"context": "a", "choices": ["b", "c"], "label": True}, "out of range"),
        ({"context": "a", "choices": ["b"], "label": 0}, ">= 2"),
    ],
)
def test_bad_jsonl_refused(tmp_path, row, match):
    with pytest.raises(SinklabInputError, match=match):
        read_choices(_jsonl(tmp_path / "t.jsonl", [{"context": "x", "choices": ["y", "z"], "label": 0}, row]))


def test_bootstrap_interval():
    correct = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1] * 5, dtype=torch.bool)
    ci = bootstrap(correct, seed=0)
    assert ci == bootstrap(correct, seed=0)
    assert ci["ci_low"] < ci["accuracy"] == 0.75 < ci["ci_high"]


@pytest.mark.parametrize(("method", "strategy"), [("zerotuning", "sweep"), ("act", "grid"), ("zerotuning", "greedy"),
                                                  ("zerotuning", "entropy")])  # fmt: skip
def test_calibrate_strategies(method, strategy):
    model, tok = load("tiny-llama")
    examples = kv_recall(8, seed=0, num_pairs=4)
    kw = dict(strategy=strategy, unit="head", candidates=2, values=(0.5,), eps=0.03)
    result = calibrate(model, tok, examples, method, **kw)
    assert result == {**calibrate(model, tok, examples, method, **kw), "seconds": result["seconds"]}  # seeded
    assert result["split"] == {"calibration": 4, "heldout": 4}
    assert result["trace"][0]["step"] == "baseline" and len(result["candidates"]) == 2
    chosen = result["method"]["heads"]
    assert result["num_heads"] == sum(map(len, chosen.values()))
    assert sum(map(len, result["heldout"]["control"]["heads"].values())) == result["num_heads"]
    for part in ("before", "after", "control"):
        r = result["heldout"][part]
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
    assert result["objective"] == ("entropy" if strategy == "entropy" else "accuracy")


def test_cli_writes_calibration_and_the_method_loads(tmp_path):
    from typer.testing import CliRunner

    task = _jsonl(tmp_path / "t.jsonl", [{"context": f"{i} + 1 =", "choices": [" 1", " 2", " 3"], "label": i % 3}
                                         for i in range(8)])  # fmt: skip
    out = tmp_path / "out"
    args = ["calibrate", "--model", "tiny-llama", "--method", "act", "--task", str(task), "--num-examples", "8",
            "--unit", "head", "--candidates", "2", "--values", "0.5", "--eps", "0.05", "--out", str(out),
            "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "calibration.json").read_text())
    assert {"before", "after", "control"} <= saved["heldout"].keys() and saved["provenance"]["seed"] == 0
    assert load_method(out / "calibration.json").to_dict() == saved["method"]
    html = (out / "report.html").read_text()
    assert html.count("<img") == 3 and "colour = 1 chosen" in html


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--method", "nope"], "unknown method"),
        (["--values", "0,1"], "gamma must be"),
        (["--method", "act", "--values", "-0.2"], "beta must be"),
        (["--heads", '{"9": [0]}'], "layer 9"),
        (["--heads", '{"1": [7]}'], "heads 0..3"),
        (["--task", "nope"], "unknown task"),
        (["--task", "BAD"], "label"),
        (["--strategy", "nope"], "unknown strategy"),
    ],
)
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, args, match):
    from typer.testing import CliRunner

    bad = _jsonl(tmp_path / "bad.jsonl", [{"context": "a", "choices": ["b", "c"], "label": 5}])
    args = [str(bad) if a == "BAD" else a for a in args]
    out = tmp_path / "out"
    base = ["calibrate", "--model", "tiny-llama", "--num-examples", "8", "--out", str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("sinklab: error")]
    assert len(lines) == 1 and match in lines[0]
    assert not out.exists()


def test_choice_task_reads_jsonl_or_refuses(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [{"context": "a", "choices": ["b", "c"], "label": 1}] * 3)
    assert len(choice_task(str(path), 2)) == 2
    with pytest.raises(SinklabInputError, match="accepted: cloze, kv-recall"):
        choice_task("nope", 2)
