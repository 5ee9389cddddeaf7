"""The hybrid study (benchmarks/hybrid_study.py): layer layouts, the models they build, and the CPU smoke run."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from sinklab.errors import SinklabInputError
from sinklab.hf import ModelView
from sinklab.remove.train import TrainConfig, build_model

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.fixture
def study(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports train_study, its neighbour
    return importlib.import_module("hybrid_study")


def test_layouts_put_one_full_layer_at_the_end_of_each_group(study):
    patterns = {name: "".join(study.LETTERS[t] for t in study.layer_types(mix, 8)) for name, mix in study.RUNS.items()}
    assert patterns == {
        "softmax": "FFFFFFFF",
        "linear-1:1": "LFLFLFLF",
        "linear-1:3": "LLLFLLLF",  # OLMo-Hybrid's and Qwen3-Next's layout
        "linear-1:7": "LLLLLLLF",
        "sliding-5:1": "SSSSSFSS",  # Gemma 3: every sixth layer global
        "sliding": "SSSSSSSS",
        "gated-1:0": "FFFFFFFF",
        "gated-1:3": "LLLFLLLF",
    }
    assert study.layer_types(study.RUNS["linear-1:7"], 2) == [study.LINEAR, study.FULL]  # too shallow: keep one


def test_every_run_builds_its_layout_and_only_softmax_layers_are_sites(study):
    for name, mix in study.RUNS.items():
        architecture, fields = study.model_config(mix, "tiny", 16)
        model = build_model(TrainConfig(preset="tiny", architecture=architecture, model_config=fields).resolved(), 263)
        sites = {a.layer: (a.kind, a.window) for a in ModelView(model).attention}
        types = fields["layer_types"]
        expected = {i: ("sliding", 16) if t == study.SLIDING else ("full", None) for i, t in enumerate(types)}
        assert sites == {i: kind for i, kind in expected.items() if types[i] != study.LINEAR}, name
        mlps = {type(m).__name__ for m in ModelView(model).mlps}
        assert not any("Moe" in n for n in mlps), f"{name}: MoE must be off ({mlps})"


def test_unknown_architecture_is_refused():
    with pytest.raises(SinklabInputError, match="unknown architecture 'no_such_model'"):
        TrainConfig(architecture="no_such_model").resolved()


def test_smoke_run_writes_rows_plot_and_one_json_line(study, tmp_path, capsys):
    out = tmp_path / "hybrid.json"
    study.main(["--preset", "tiny", "--steps", "2", "--runs", "linear-1:1", "sliding-5:1", "--seeds", "0", "1",
                "--out", str(out)])  # fmt: skip
    record = json.loads(out.read_text())
    assert [(row["run"], row["seed"]) for row in record["rows"]] == [
        ("linear-1:1", 0), ("sliding-5:1", 0), ("linear-1:1", 1), ("sliding-5:1", 1)
    ]  # fmt: skip
    assert not record.get("failed")
    rows = {row["run"]: row for row in record["rows"] if row["seed"] == 0}
    assert {"softmax_share", "layer_pattern", "sink_rate", "first_token_mass", "max_activation", "val_loss"} <= set(
        rows["linear-1:1"]
    )
    assert rows["linear-1:1"]["softmax_share"] == 0.5 and rows["linear-1:1"]["layer_pattern"] == "LF"
    assert rows["sliding-5:1"]["softmax_share"] == 1.0 and rows["sliding-5:1"]["full_attention_share"] == 0.5
    assert rows["sliding-5:1"]["sink_rate_sliding"] is not None and rows["linear-1:1"]["sink_rate_sliding"] is None
    assert record["linear_kernel"]["olmo_hybrid"].startswith("transformers torch reference")  # no fla here
    assert record["provenance"]["transformers"] and out.with_suffix(".png").exists()
    assert record["provenance"]["command"].startswith("python3 benchmarks/hybrid_study.py --preset tiny --steps 2 ")
    losses = [row["val_loss"] for row in record["rows"] if row["run"] == "linear-1:1"]
    assert losses[0] != losses[1]  # two seeds, two models
    layout = record["by_layout"]["linear-1:1"]
    assert layout["seeds"] == [0, 1] and layout["sink_rate_sliding"] is None
    assert layout["val_loss"] == {"mean": sum(losses) / 2, "min": min(losses), "max": max(losses), "n": 2}
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["run"], r["seed"]) for r in last["rows"]] == [(r["run"], r["seed"]) for r in record["rows"]]
    assert set(last["by_layout"]) == {"linear-1:1", "sliding-5:1"}


def test_a_layout_without_linear_layers_names_no_linear_kernel(study, tmp_path):
    """gated-1:0 (Qwen3-Next with every layer softmax) trains without Gated DeltaNet: the record's ``linear_kernel``
    stays empty, so a machine without fla cannot overwrite the kernel that trained gated-1:3."""
    record = study.main(["--preset", "tiny", "--steps", "2", "--runs", "gated-1:0", "--out", str(tmp_path / "g.json")])
    assert record["rows"][0]["architecture"] == "qwen3_next" and record["linear_kernel"] == {}


def test_the_linear_kernel_is_read_through_either_wrapper_transformers_ships(study):
    """transformers <= 5.24 returns its pick's wrapper (closure ``implementation``); 5.25, whose ``kernels`` dependency
    wraps that wrapper in a module calling it as ``func``, adds ``supported_devices``. Both name the picked function."""

    def kernel(query):
        return query

    def decorate(implementation, devices=None):
        supported_devices = devices

        def wrapped(*args):  # reads both, as transformers' does
            return implementation(*args) if supported_devices != () else None

        return wrapped

    class Func(torch.nn.Module):  # what kernels' use_kernel_forward_from_hub makes of a function
        pass

    def as_module(func):
        def forward(self, *args):
            return func(*args)

        Func.forward = forward
        return Func()

    assert study.picked_implementation(decorate(kernel)) == (kernel, None)
    assert study.picked_implementation(as_module(decorate(kernel, ("cuda",)))) == (kernel, ("cuda",))
    assert study.picked_implementation(kernel) == (kernel, None)


def test_the_plot_legend_says_how_many_seeds_each_arm_averages(study):
    """An arm whose layouts have different numbers of seeds says so, never the most seeds of any layout."""
    assert study._arm_label("gated", [{"seeds": [0]}, {"seeds": [0, 1]}]) == "gated, mean of 1-2 seeds per point"
    assert study._arm_label("linear", [{"seeds": [0, 1, 2]}] * 2) == "linear, mean of 3 seeds per point"
    assert study._arm_label("sliding", [{"seeds": [0]}]) == "sliding, 1 seed"


def test_resume_runs_only_the_missing_seeds_and_refuses_another_budget(study, tmp_path, capsys):
    out = tmp_path / "hybrid.json"
    base = ["--preset", "tiny", "--steps", "2", "--runs", "sliding", "--out", str(out)]
    first = study.main([*base, "--seeds", "0"])
    again = study.main([*base, "--seeds", "0", "1", "--resume"])
    assert "sliding seed 0: in" in capsys.readouterr().out
    assert [(row["run"], row["seed"]) for row in again["rows"]] == [("sliding", 0), ("sliding", 1)]
    assert again["rows"][0] == first["rows"][0]  # kept, not re-trained
    assert len(again["calls"]) == 2 and again["by_layout"]["sliding"]["seeds"] == [0, 1]
    assert first["missing"] == [] and again["missing"] == []
    later = ["--preset", "tiny", "--steps", "2", "--runs", "sliding", "--out", str(tmp_path / "later.json")]
    none = study.main([*later, "--seeds", "0", "1", "--time-limit", "0"])  # every run would end past the limit
    assert none["rows"] == [] and none["skipped"] == none["missing"] == ["sliding/s0", "sliding/s1"]
    one = study.main([*later, "--seeds", "1", "--resume"])
    assert [row["seed"] for row in one["rows"]] == [1] and one["missing"] == ["sliding/s0"]  # still owed
    with pytest.raises(SystemExit) as exit_info:
        study.main(["--preset", "tiny", "--steps", "3", "--runs", "sliding", "--out", str(out), "--resume"])
    assert exit_info.value.code == 2
    assert "--resume: steps 3 differs from the record's 2" in capsys.readouterr().err
    older = json.loads(out.read_text())
    older["provenance"]["sinklab"] = "0.2.1"
    out.write_text(json.dumps(older))
    with pytest.raises(SystemExit):
        study.main([*base, "--seeds", "0", "1", "2", "--resume"])
    assert "--resume: the record was made with sinklab 0.2.1, this is" in capsys.readouterr().err


def test_a_study_cut_off_mid_way_leaves_a_record_that_owes_only_what_it_lacks(study, tmp_path, monkeypatch):
    """The record written after each run recomputes ``missing``: a call that ends mid-study (the machine went cold)
    leaves a file that a --resume reads correctly, not the resumed record's list of what it owed before."""
    out = tmp_path / "hybrid.json"
    base = ["--preset", "tiny", "--steps", "2", "--runs", "sliding", "linear-1:1", "--out", str(out)]
    study.main([*base, "--seeds", "0", "--time-limit", "0"])  # owes both runs
    assert json.loads(out.read_text())["missing"] == ["sliding/s0", "linear-1:1/s0"]
    trained = study.train_guarded

    def cut_off_after_one(config, name, console):
        if name == "linear-1:1":
            raise KeyboardInterrupt  # the call ends here, before the study's final write
        return trained(config, name, console)

    monkeypatch.setattr(study, "train_guarded", cut_off_after_one)
    with pytest.raises(KeyboardInterrupt):
        study.main([*base, "--seeds", "0", "--resume"])
    left = json.loads(out.read_text())
    assert [(row["run"], row["seed"]) for row in left["rows"]] == [("sliding", 0)]
    assert left["missing"] == ["linear-1:1/s0"]


def test_resume_on_another_token_stream_stops_before_mixing_it_in(study, tmp_path, capsys):
    """A --resume whose corpus was rebuilt differently (same path, other tokens) trains one run, finds that its
    training tokens' digest differs from the record's, and stops: the run goes under ``failed``, not into the table."""
    out = tmp_path / "hybrid.json"
    base = ["--preset", "tiny", "--steps", "2", "--runs", "sliding", "--out", str(out)]
    study.main([*base, "--seeds", "0"])
    kept = json.loads(out.read_text())
    for run in kept["runs"]:
        run["provenance"]["texts"]["source"]["train_tokens_sha256"] = "0123456789abcdef"
    out.write_text(json.dumps(kept))
    record = study.main([*base, "--seeds", "0", "1", "2", "--resume"])
    assert [(row["run"], row["seed"]) for row in record["rows"]] == [("sliding", 0)]
    assert list(record["failed"]) == ["sliding/s1"]
    assert "differ from the record's (0123456789abcdef)" in record["failed"]["sliding/s1"]
    assert record["missing"] == ["sliding/s1", "sliding/s2"] and "the study stops" in capsys.readouterr().out


def test_compiled_runs_train_the_same_hybrid(study, tmp_path):
    """--compile: a hybrid's training steps (transformers' torch Gated DeltaNet included) through torch.compile give
    eager's row; each run's record says it was compiled."""
    argv = ["--preset", "tiny", "--steps", "2", "--runs", "linear-1:1"]
    eager = study.main([*argv, "--out", str(tmp_path / "eager.json")])
    compiled = study.main([*argv, "--compile", "--out", str(tmp_path / "compiled.json")])
    assert [run["config"]["compile"] for run in compiled["runs"]] == [True]
    assert eager["runs"][0]["config"]["compile"] is False
    for key in ("sink_rate", "first_token_mass", "max_activation", "val_loss"):
        assert compiled["rows"][0][key] == pytest.approx(eager["rows"][0][key], rel=1e-5, abs=1e-6), key


def test_the_h200_record_rebuilds_its_rows_from_its_runs(study):
    """The committed H200 record (benchmarks/results/hybrid-h200.json): every row and every layout's mean and range
    follow from the run records it keeps, fla's kernel trained the linear layers, and what is not trained yet is
    listed under ``missing``."""
    record = json.loads((BENCHMARKS / "results" / "hybrid-h200.json").read_text())
    assert (record["preset"]["name"], record["steps"], record["window"]) == ("small", 2000, 32)
    rebuilt = [study.summary(run["study_name"], study.RUNS[run["study_name"]], run) for run in record["runs"]]
    assert rebuilt == record["rows"] and study.by_layout(rebuilt) == record["by_layout"]
    for run in record["runs"]:
        assert run["layer_types"] == study.layer_types(study.RUNS[run["study_name"]], 8)
        assert run["final"]["tokens"] == 2000 * 48 * 255  # the same budget for every layout: 24.5M tokens
    assert set(record["linear_kernel"]) == {"olmo_hybrid", "qwen3_next"}
    assert all(kernel.startswith("flash-linear-attention (fla 0.6.0)") for kernel in record["linear_kernel"].values())
    trained = {f"{row['run']}/s{row['seed']}" for row in record["rows"]}
    assert trained.isdisjoint(record["missing"]) and len(trained | set(record["missing"])) == 3 * len(study.RUNS)
    commands = {tuple(call["command"].split()[:2]) for call in record["calls"]}
    assert commands == {("python3", "benchmarks/hybrid_study.py")}
