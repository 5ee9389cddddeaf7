"""The Gu-regime study (benchmarks/gu_study.py): plan, parallel subprocess runs, resume, checkpoints, the record."""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("train")

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.fixture
def study(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports train_study, its neighbour
    return importlib.import_module("gu_study")


def _args(**overrides) -> argparse.Namespace:
    values = dict(preset="small", steps=2400, corpus="/c", work="/w", variants=["softmax", "gated", "softpick"],
                  seeds=[0, 1], sizes=["1000000", "full"], checkpoint_steps="150,300", batch_size=None, lr=None,
                  eval_every=None, max_epochs=2.0, device=None, long_steps=None, long_eval_every=None,
                  long_seeds=[0], long_time_limit=None, long_variants=["softmax"], context=None, bos=None,
                  min_lr_ratio=None, metric_windows=None, compile=False)  # fmt: skip
    return argparse.Namespace(**{**values, **overrides})


def test_plan_puts_the_slow_variants_first_and_only_softmax_s0_checkpoints(study):
    runs = study.plan(_args())
    names = [r["name"] for r in runs]
    assert names == ["gated-s0", "gated-s1", "softmax-s0", "softmax-s1", "softpick-s0", "softpick-s1",
                     "softmax-1M-s0"]  # fmt: skip
    assert [r["name"] for r in runs if r["checkpoints"]] == ["softmax-s0"]
    small = runs[-1]
    assert small["unique_tokens"] == 1_000_000
    # small preset: 2400 steps x 48 windows of 255 tokens over 3921 windows: 29.4 epochs, allowed 31
    assert small["max_epochs"] == 31.0
    cmd = " ".join(small["command"])
    assert "--unique-tokens 1000000" in cmd and "--max-epochs 31" in cmd
    assert "-m sinklab.cli train --variant softmax --preset small --seed 0 --out /w/softmax-1M-s0" in cmd
    assert "--checkpoint-steps 150,300" in " ".join(runs[2]["command"])
    assert not any("--checkpoint-steps" in r["command"] for r in runs if r["name"] != "softmax-s0")


def test_gu_recipe_flags_reach_every_run(study):
    """Gu et al.'s recipe: the gu60m preset, no BOS (their packing), a constant learning rate; the sizes' epochs
    follow the context the runs train at."""
    runs = study.plan(_args(preset="gu60m", bos="never", min_lr_ratio=1.0, context=1024, steps=100,
                            metric_windows="documents", compile=True))  # fmt: skip
    for run in runs:
        cmd = " ".join(run["command"])
        assert "--preset gu60m" in cmd and "--bos never" in cmd and "--min-lr-ratio 1.0" in cmd
        assert run["command"][-1] == "--compile"
        assert "--metric-windows documents" in cmd
        assert "--context 1024" in cmd
    # 100 steps x 16 windows of 1023 tokens over 977 windows of the 1M subset: 1.6 epochs, allowed 3
    assert [r["max_epochs"] for r in runs if r["unique_tokens"]] == [3.0]
    assert not any("--bos" in r["command"] or "--compile" in r["command"] for r in study.plan(_args()))


def test_long_baseline_runs_first_and_takes_the_checkpoints(study):
    runs = study.plan(_args(long_steps=24000, long_eval_every=500, variants=["softmax", "sigmoid"], seeds=[0]))
    assert [r["name"] for r in runs] == ["softmax-long-s0", "sigmoid-s0", "softmax-s0", "softmax-1M-s0"]
    long = runs[0]
    assert [r["name"] for r in runs if r["checkpoints"]] == ["softmax-long-s0"]
    cmd = " ".join(long["command"])
    assert "--steps 24000" in cmd and "--eval-every 500" in cmd and "--checkpoint-steps 150,300" in cmd
    assert all("--steps 2400 " in " ".join(r["command"]) + " " for r in runs[1:])
    assert not any("--time-limit" in r["command"] for r in runs)
    timed = study.plan(_args(long_steps=24000, long_time_limit=1200.0, min_lr_ratio=1.0))
    assert [" ".join(r["command"]).endswith("--time-limit 1200") for r in timed] == [True] + [False] * 7
    assert study._expected_seconds(timed[0], [(timed[1], 1e6)]) == 1200.0  # it ends by its limit
    both = study.plan(_args(long_steps=24000, long_variants=["softmax", "gated"], variants=["softmax"], seeds=[0],
                            sizes=["full"], long_time_limit=900.0, min_lr_ratio=1.0))  # fmt: skip
    assert [r["name"] for r in both] == ["gated-long-s0", "softmax-long-s0", "softmax-s0"]  # the slower first
    assert [r["name"] for r in both if r["checkpoints"]] == ["softmax-long-s0"]  # softmax checkpoints only
    assert "--variant gated" in " ".join(both[0]["command"]) and both[0]["group"] == "gated-long"
    assert all(" ".join(r["command"]).endswith("--time-limit 900") for r in both[:2])
    sweep = study.plan(_args(long_steps=24000, variants=[], sizes=["1000000", "4000000"], min_lr_ratio=1.0))
    assert [r["name"] for r in sweep] == ["softmax-long-s0", "softmax-1M-s0", "softmax-4M-s0"]  # no budget runs
    variants_only = study.plan(_args(long_steps=24000, long_variants=["gated"], variants=["softmax"], seeds=[0]))
    assert [r["name"] for r in variants_only if r["checkpoints"]] == ["softmax-s0"]
    two = study.plan(_args(long_steps=24000, long_seeds=[0, 1], variants=["softmax"], seeds=[0], sizes=["full"]))
    assert [r["name"] for r in two] == ["softmax-long-s0", "softmax-long-s1", "softmax-s0"]
    assert [r["name"] for r in two if r["checkpoints"]] == ["softmax-long-s0"]
    # the long runs alone (no --variants, no --sizes): the 12000-step baseline, its 2.8 epochs allowed
    longer = study.plan(_args(long_steps=12000, long_seeds=[0, 1, 2], variants=[], sizes=[], max_epochs=3.0,
                              checkpoint_steps=""))  # fmt: skip
    assert [r["name"] for r in longer] == ["softmax-long-s0", "softmax-long-s1", "softmax-long-s2"]
    assert all("--steps 12000" in " ".join(r["command"]) and "--max-epochs 3" in " ".join(r["command"])
               for r in longer) and not any(r["checkpoints"] for r in longer)  # fmt: skip


def test_smoke_study_runs_resumes_and_checks_checkpoints(study, tmp_path, capsys):
    work, out = tmp_path / "gu", tmp_path / "gu-study.json"
    argv = ["--preset", "tiny", "--steps", "4", "--eval-every", "2", "--work", str(work), "--parallel", "2",
            "--variants", "softmax", "gated", "--seeds", "0", "1", "--sizes", "2000", "full",
            "--checkpoint-steps", "1,4", "--explain-checkpoints", "2", "--out", str(out)]  # fmt: skip
    record = study.main(argv)
    printed = capsys.readouterr().out
    assert "started gated-s0" in printed and "finished softmax-2k-s0" in printed
    assert "preflight: a tiny checkpoint saved, loaded back, rescanned and explained" in printed
    assert printed.index("preflight") < printed.index("started") and not (work / "preflight").exists()
    assert printed.index("started gated-s0") < printed.index("started softmax-s0")  # slow variants first
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["benchmark"] == "gu_study" and summary["failed"] == {} and summary["missing"] == []
    saved = json.loads(out.read_text())
    for key in ("benchmark", "hardware", "torch", "provenance", "plan", "table", "summary", "data_size", "curves",
                "checkpoints", "published"):  # fmt: skip
        assert key in saved, key
    assert [(r["run"], r["seed"]) for r in saved["table"]] == [
        ("gated", 0), ("gated", 1), ("softmax", 0), ("softmax", 1), ("softmax-2k", 0)
    ]  # fmt: skip
    row = saved["table"][-1]
    assert row["unique_tokens"] == 2000 // 63 * 63 and row["epochs"] == pytest.approx(4 * 8 / (2000 // 63))
    keys = ("sink_rate", "sink_rate_of_mean", "val_loss", "max_activation", "first_token_mass", "kurtosis",
            "ppl_fp32", "ppl_w8a8_tensor", "emergence_5", "emergence_10", "tokens", "tokens_per_second",
            "wall_seconds")  # fmt: skip
    for key in keys:
        assert row.get(key) is not None or key.startswith("emergence"), key
    assert saved["summary"]["softmax"]["sink_rate"]["n"] == 2
    assert saved["data_size"][0]["unique_tokens"] == 2000 // 63 * 63 and len(saved["data_size"]) == 2
    assert {c["name"] for c in saved["curves"]} == {"gated-s0", "gated-s1", "softmax-s0", "softmax-s1",
                                                    "softmax-2k-s0"}  # fmt: skip
    assert [c["step"] for c in saved["checkpoints"]] == [1, 4]
    for checkpoint in saved["checkpoints"]:
        assert Path(checkpoint["path"]).is_dir()
        assert checkpoint["sink_rate_equal"], checkpoint
        assert checkpoint["scan"]["max_activation"] == pytest.approx(checkpoint["history"]["max_activation"], rel=1e-4)
        explained = checkpoint["explain"]  # sinklab explain on the checkpoint, its record beside train.json
        assert set(explained["interventions"]) == {"noop", "outlier", "bias", "anchor", "emergence"}
        assert 0 <= explained["sink_rate"] <= 1 and explained["not_applicable"] == {}
        assert "zero_sink" in explained["interventions"]["noop"]
        whole = json.loads((work / "softmax-s0" / f"explain-step-{checkpoint['step']}.json").read_text())
        assert whole["num_sequences"] == 2 and study._explain_summary(whole) == explained
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert (work / "gated-s1" / "log.txt").read_text().startswith(record["plan"]["runs"][1]["command"][0])

    # a second call runs nothing: every run's train.json exists
    records = [*work.glob("*/train.json"), *work.glob("*/explain-step-*.json"), *work.glob("*/rescan-step-*.json")]
    assert len(records) == 5 + 2 + 2  # not remade by a second call
    stamps = {p: p.stat().st_mtime_ns for p in records}
    again = study.main(argv)
    printed = capsys.readouterr().out
    assert printed.count("skipped ") == 5 and "started" not in printed
    assert {p: p.stat().st_mtime_ns for p in records} == stamps
    assert again["table"] == record["table"]

    # a later lease has the run records without the checkpoints: the rescans and explain summaries stay in its record
    shutil.rmtree(work / "softmax-s0" / "checkpoints")
    later = study.main([*argv, "--aggregate-only"])
    assert later["checkpoints"] == saved["checkpoints"]
    (work / "softmax-s0" / "rescan-step-4.json").unlink()
    assert [c["scan"] is None for c in study.main([*argv, "--aggregate-only"])["checkpoints"]] == [False, True]


def test_a_run_record_of_another_plan_is_refused_not_skipped(study, tmp_path, capsys):
    """An 8000-step softmax-long-s0 in the --work of a 12000-step study is not that study's run: refused with what
    differs (exit 2), before anything trains or the record is rebuilt from it; an empty plan is refused too."""
    work, out = tmp_path / "work", tmp_path / "s.json"
    shutil.copytree(BENCHMARKS / "results" / "gu60m-v03-h200" / "softmax-long-s0", work / "softmax-long-s0")

    def argv(steps: str) -> list[str]:
        return ["--preset", "gu60m", "--bos", "never", "--min-lr-ratio", "1", "--metric-windows", "documents",
                "--steps", "1000", "--variants", "--sizes", "--long-steps", steps, "--long-eval-every", "250",
                "--long-seeds", "0", "--work", str(work), "--out", str(out)]  # fmt: skip

    for extra in (["--finish-by", "0"], ["--aggregate-only"]):
        with pytest.raises(SystemExit) as stopped:
            study.main([*argv("12000"), *extra])
        assert stopped.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.endswith(
            f"--work {work}: softmax-long-s0/train.json trained steps=8000 (the plan: 12000); "
            "accepted: a --work whose run records are the plan's runs, or one without them"
        )
        assert not out.exists()
    assert study.main([*argv("8000"), "--aggregate-only"])["missing"] == []  # the plan it was trained for
    with pytest.raises(SystemExit) as stopped:
        study.main(["--variants", "--sizes", "--work", str(work), "--aggregate-only"])
    assert stopped.value.code == 2 and "nothing to train" in capsys.readouterr().err


def test_finish_by_leaves_the_queue_for_a_later_call(study, tmp_path, capsys):
    """--finish-by: no run starts that would end past it; the record lists them as missing, nothing was trained."""
    work = tmp_path / "gu"
    argv = ["--preset", "tiny", "--steps", "2", "--work", str(work), "--variants", "softmax", "--seeds", "0", "1",
            "--finish-by", "0", "--out", str(tmp_path / "gu.json")]  # fmt: skip
    record = study.main(argv)
    assert "runs left for a later call" in capsys.readouterr().out
    assert record["missing"] == ["softmax-s0", "softmax-s1"] and record["table"] == []
    assert not list(work.glob("*/train.json"))


def test_expected_seconds_scales_the_slowest_finished_run(study):
    """A run's expected wall time: the slowest finished run of its variant, else of any variant scaled by steps
    and variant cost; 0 before any."""
    softmax = {"variant": "softmax", "steps": 1000}
    gated = {"variant": "gated", "steps": 2000}
    assert study._expected_seconds(gated, []) == 0.0
    done = [(softmax, 100.0), ({"variant": "softmax", "steps": 500}, 80.0)]
    assert study._expected_seconds(softmax, done) == pytest.approx(160.0)  # the 500-step run was slower per step
    assert study._expected_seconds(gated, done) == pytest.approx(160.0 * 2 * study.COST["gated"])
    measured = [*done, ({"variant": "gated", "steps": 1000}, 110.0)]  # its own variant's time wins once measured
    assert study._expected_seconds(gated, measured) == pytest.approx(220.0)


def test_gpus_spread_the_runs_one_gpu_each_and_are_checked(study, tmp_path, capsys, monkeypatch):
    """--gpus N: up to --parallel runs on each GPU, every run on the least busy one and seeing only it
    (CUDA_VISIBLE_DEVICES); more GPUs than the machine has are refused with the count."""
    import subprocess

    placed = []

    class Recorder(subprocess.Popen):
        def __init__(self, command, **kw):
            if "sinklab.cli" in command:  # the training runs (git and others use Popen too)
                placed.append(kw["env"].get("CUDA_VISIBLE_DEVICES"))
            super().__init__(command, **kw)

    monkeypatch.setattr(study.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(study.subprocess, "Popen", Recorder)
    argv = ["--preset", "tiny", "--steps", "2", "--variants", "softmax", "--seeds", "0", "1", "2", "--device", "cpu",
            "--work", str(tmp_path / "gu"), "--out", str(tmp_path / "gu.json")]  # fmt: skip
    record = study.main(argv)
    printed = capsys.readouterr().out
    assert record["failed"] == {} and record["plan"]["gpus"] == 2 and len(record["table"]) == 3
    assert placed[:2] == ["0", "1"]  # both GPUs busy before the third run waits for one
    assert printed.index("started softmax-s1 on GPU 1") < printed.index("finished ")
    with pytest.raises(SystemExit) as exit_info:
        study.main([*argv, "--gpus", "3"])
    assert exit_info.value.code == 2
    assert "--gpus 3: this machine has 2 visible GPUs; accepted: 0 to 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main([*argv, "--explain-checkpoints", "9"])
    assert "--explain-checkpoints 9: the tiny preset measures 8 probe sequences; accepted: 0 to 8" in (
        capsys.readouterr().err
    )


def test_first_starts_the_named_runs_first_and_refuses_unknown_names(study, tmp_path, capsys):
    work = tmp_path / "gu"
    argv = [
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--work",
        str(work),
        "--variants",
        "softmax",
        "gated",
        "--seeds",
        "0",
        "1",
        "--first",
        "softmax-s1",
        "softmax-s0",
        "--finish-by",
        "0",
        "--out",
        str(tmp_path / "gu.json"),
    ]
    record = study.main(argv)
    assert [run["name"] for run in record["plan"]["runs"]] == ["softmax-s1", "softmax-s0", "gated-s0", "gated-s1"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        study.main([*argv[:-4], "--first", "sigmoid-s0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--first: sigmoid-s0 not in the plan; accepted: gated-s0, gated-s1, softmax-s0, softmax-s1" in err


def test_a_run_cut_short_keeps_its_curve_but_no_table_row(study, tmp_path):
    """A run without train.json (the lease ended in it) is listed under ``partial`` with its last evaluation and
    drawn dashed from ``history.jsonl``; it stays missing and out of the table and summary."""
    work, out = tmp_path / "gu", tmp_path / "gu.json"
    rows = [{"step": s, "tokens": 100 * s, "sink_rate": r, "max_activation": 10.0 + s, "kurtosis": 3.0 + s,
             "val_loss": 5.0 - s / 10}
            for s, r in ((0, 0.0), (2, 0.05), (4, 0.125))]  # fmt: skip
    (work / "softmax-s1").mkdir(parents=True)
    (work / "softmax-s1" / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    record = study.main(["--preset", "tiny", "--steps", "8", "--work", str(work), "--variants", "softmax",
                         "--seeds", "0", "1", "--aggregate-only", "--out", str(out)])  # fmt: skip
    assert record["partial"] == [{"name": "softmax-s1", "run": "softmax", "seed": 1, "steps_planned": 8, **rows[-1]}]
    assert [c["name"] for c in record["curves"]] == ["softmax-s1"] and record["curves"][0]["partial"]
    assert record["curves"][0]["sink_rate"] == [0.0, 0.05, 0.125]
    assert record["table"] == [] and record["summary"] == {}
    assert record["missing"] == ["softmax-s0", "softmax-s1"]
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_the_committed_h200_runs_rebuild_the_committed_study(study, tmp_path):
    """The gu60m lease's run records (benchmarks/results/gu60m-h200/<run>/train.json, what a later lease carries
    back to resume) give the committed study table and summary again; their checkpoints stayed on that machine."""
    results = BENCHMARKS / "results"
    work = tmp_path / "gu60"
    shutil.copytree(results / "gu60m-h200", work)
    committed = json.loads((results / "gu60m-h200.json").read_text())
    record = study.main(["--preset", "gu60m", "--steps", "1000", "--variants", "softmax", "sigmoid", "gated",
                         "--seeds", "0", "1", "2", "--sizes", "full", "--checkpoint-steps", "200,500,1000",
                         "--work", str(work), "--aggregate-only", "--out", str(tmp_path / "gu.json")])  # fmt: skip
    added = ("steps", "stopped_early")  # columns the study gained after that lease
    assert [{k: v for k, v in row.items() if k not in added} for row in record["table"]] == committed["table"]
    assert all(row["steps"] == 1000 and row["stopped_early"] is None for row in record["table"])
    assert record["summary"] == committed["summary"]
    assert sorted(record["missing"]) == ["gated-s1", "gated-s2", "sigmoid-s2"]
    assert [c["step"] for c in record["checkpoints"]] == [200, 500, 1000]
    assert all(c["scan"] is None and c["sink_rate_equal"] is None for c in record["checkpoints"])
    assert all(c["sink_rate_equal"] for c in committed["checkpoints"])  # rescanned on the H200 where they were saved


def test_runs_of_another_sinklab_version_are_moved_aside_and_trained_again(study, tmp_path, capsys):
    """A train.json made by another sinklab version (which may measure differently) is never skipped into one
    table with this version's runs: its directory is kept beside, renamed, and the run trains again."""
    work = tmp_path / "gu"
    argv = ["--preset", "tiny", "--steps", "2", "--work", str(work), "--variants", "softmax", "--seeds", "0",
            "--out", str(tmp_path / "gu.json")]  # fmt: skip
    study.main(argv)
    path = work / "softmax-s0" / "train.json"
    record = json.loads(path.read_text())
    record["provenance"]["sinklab"] = "0.0.1"
    path.write_text(json.dumps(record))
    capsys.readouterr()
    again = study.main(argv)
    assert "re-running softmax-s0: its train.json was made with sinklab 0.0.1" in capsys.readouterr().out
    assert (
        json.loads((work / "softmax-s0.sinklab-0.0.1" / "train.json").read_text())["provenance"]["sinklab"] == "0.0.1"
    )
    assert again["finished"] == ["softmax-s0"]
    assert json.loads(path.read_text())["provenance"]["sinklab"] != "0.0.1"


GU60M = ["--preset", "gu60m", "--bos", "never", "--min-lr-ratio", "1", "--metric-windows", "documents",
         "--steps", "1000", "--eval-every", "100", "--sizes", "full"]  # fmt: skip
LONG = ["--variants", "softmax", "--seeds", "0", "--long-steps", "8000", "--long-eval-every", "250",
        "--checkpoint-steps", "1000,2000,3000,4000,5000,6000,7000,8000", "--long-time-limit", "1400"]  # fmt: skip


VARIANTS_021 = ["--variants", "softmax", "gated", "sigmoid", "--seeds", "0", "1"]
DATA_SIZE = [*LONG, "--steps", "4000", "--eval-every", "250", "--variants", "--sizes", "10000000", "50000000"]
# ten 0.3.0 leases: the baseline's seeds 0-2 (the third's saving the checkpoints), the 1000-step softmax and
# variants at seeds 0-2, gated's and sigmoid's long seeds 0-2; then the 10M- and 50M-token subsets beside the
# baseline's seeds
V03 = [*LONG, "--variants", "softmax", "gated", "sigmoid", "--seeds", "0", "1", "2", "--long-seeds", "2", "1", "0",
       "--long-variants", "softmax", "gated", "sigmoid"]  # fmt: skip
DATA_SIZE_V03 = [*LONG, "--steps", "4000", "--eval-every", "250", "--variants", "--sizes", "10000000", "50000000",
                 "--long-seeds", "2", "1", "0"]  # fmt: skip
# the baseline's 12,000-step group (2.8 epochs, no checkpoints), seed 0 first: long runs only
TWELVE_K = ["--variants", "--sizes", "--long-steps", "12000", "--long-eval-every", "250", "--long-seeds", "0", "1", "2",
            "--max-epochs", "3", "--long-time-limit", "1471"]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "beside", "argv", "missing", "rescans"),
    [
        ("gu60m-long-h200", None, LONG, ["softmax-s0"], 8),
        ("gu60m-1000-h200", None, VARIANTS_021, ["softmax-s1"], 0),
        ("gu60m-datasize-h200", "gu60m-long-h200", DATA_SIZE, [], 0),
        ("gu60m-v03-h200", None, V03, [], 8),
        ("gu60m-datasize-v03-h200", "gu60m-v03-h200", DATA_SIZE_V03, [], 0),
        ("gu60m-12k-v03-h200", None, TWELVE_K, ["softmax-long-s2"], 0),
    ],
)
def test_the_h200_leases_runs_rebuild_their_committed_studies(study, tmp_path, name, beside, argv, missing, rescans):
    """The gu60m leases at sinklab 0.2.1 (all 100 probe sequences): the 8000-step baseline, the 1000-step variants
    (seeds 0 and 1, two leases) and the data-size subsets trained beside the baseline (its step-4000 row is the
    full-size point); at 0.3.0 (spread probes) the baseline's seeds 0-2 (the third's saving the checkpoints), the
    1000-step softmax and variants at seeds 0-2, gated's and sigmoid's long seeds 0-2 (ten leases) and the 10M and
    50M subsets beside that baseline, and the baseline's 12,000-step group (seeds 0 and 1 so far). Their run records
    give the committed tables again; each saver's checkpoints were rescanned on its machine to exactly its history
    (0.2.1's seed 0 and 0.3.0's seed 2; the 0.3.0 seeds 0 and 1 lost theirs to a shadowed package and a device bug in
    explain), and the committed rescan and explain records give the record's checkpoints again."""
    results = BENCHMARKS / "results"
    work = tmp_path / "work"
    shutil.copytree(results / name, work)
    if beside:
        shutil.copytree(results / beside, work, dirs_exist_ok=True)
    committed = json.loads((results / f"{name}.json").read_text())
    record = study.main([*GU60M, *argv, "--work", str(work), "--aggregate-only", "--out", str(tmp_path / "s.json")])
    assert record["table"] == committed["table"] and record["summary"] == committed["summary"]
    assert record["data_size"] == committed["data_size"] and record["missing"] == missing
    assert all(row["stopped_early"] is None for row in record["table"])
    rescanned = [c for c in committed["checkpoints"] if c["scan"] is not None]
    assert all(c["sink_rate_equal"] for c in rescanned) and len(rescanned) == rescans
    # the rescan and explain records beside train.json give the committed checkpoints again (0.2.1 kept no explain;
    # a study beside the saver's lease had no rescans, and its rebuild has the saver's)
    rebuilt = {(c["run"], c["step"]): c for c in record["checkpoints"]}
    assert beside or len(rebuilt) == len(committed["checkpoints"])
    for kept in committed["checkpoints"]:
        same = [k for k in kept if kept["scan"] is not None or k not in ("scan", "sink_rate_equal",
                                                                         "max_activation_abs_diff")]  # fmt: skip
        assert {k: rebuilt[kept["run"], kept["step"]][k] for k in same} == {k: kept[k] for k in same}
    assert all(c["sink_rate_equal"] for c in record["checkpoints"])
    assert sum(c.get("explain") is not None for c in committed["checkpoints"]) == (8 if name == "gu60m-v03-h200" else 0)


@pytest.mark.parametrize(
    ("name", "budgets"),
    [
        ("gu60m-12k-v03-h200", "long run 12000 steps"),
        ("gu60m-v03-h200", "1000 steps, long run 8000 steps"),
        ("gu60m-datasize-v03-h200", "4000 steps, long run 8000 steps"),
        ("gu60m-1000-h200", "1000 steps"),
    ],
)
def test_the_titles_name_only_the_step_budgets_the_plan_trains(study, name, budgets):
    """A study of long runs alone (no --variants, no --sizes) has no short runs: its figure and table name only the
    long runs' steps, not the --steps no run used."""
    record = json.loads((BENCHMARKS / "results" / f"{name}.json").read_text())
    assert study._budgets(record["plan"]) == budgets
    assert study._table(record).title == f"sinklab Gu-regime study ({budgets})"


def test_the_full_size_data_point_comes_from_the_long_constant_lr_run(study, tmp_path):
    """--sizes without 'full' beside a long constant-lr baseline: the full-size point is that run's evaluation at the
    budget's step (the same schedule and data order as a run of that many steps), named as such; a cosine long run
    gives none (its first steps are not a shorter run's)."""
    work = tmp_path / "work"
    shutil.copytree(BENCHMARKS / "results" / "gu60m-long-h200", work)
    argv = [*GU60M, *LONG, "--work", str(work), "--aggregate-only", "--out", str(tmp_path / "s.json")]
    argv[argv.index("--steps") + 1] = "4000"
    argv[argv.index("--sizes") + 1] = "10000000"  # trained in a later lease: missing here
    record = study.main(argv)
    [point] = record["data_size"]
    long = json.loads((work / "softmax-long-s0" / "train.json").read_text())
    at_4000 = next(row for row in long["history"] if row["step"] == 4000)
    assert point["from"] == "softmax-long-s0 at step 4000" and point["full"] and point["steps"] == 4000
    assert point["sink_rate"] == at_4000["sink_rate"] == pytest.approx(0.088375)
    assert point["epochs"] == pytest.approx(long["final"]["epochs"] / 2)
    assert "softmax-10M-s0" in record["missing"]
    long["config"]["min_lr_ratio"] = 0.1
    (work / "softmax-long-s0" / "train.json").write_text(json.dumps(long))
    assert study.main(argv)["data_size"] == []


def test_a_failed_checkpoint_rescan_keeps_the_table_and_says_why(study, tmp_path, monkeypatch, capsys):
    """On the H200 (0.3.0) loading a checkpoint back failed (a script shadowed a package transformers imports) and
    the study wrote no record at all; now the table is written and the error named, and the summary says no match."""
    work = tmp_path / "work"
    shutil.copytree(BENCHMARKS / "results" / "gu60m-long-h200", work)

    def broken(*_):
        raise ModuleNotFoundError("Could not import module 'LlamaConfig'")

    monkeypatch.setattr(study, "_checkpoints", broken)
    record = study.main([*GU60M, *LONG, "--work", str(work), "--aggregate-only", "--out", str(tmp_path / "s.json")])
    assert [row["name"] for row in record["table"]] == ["softmax-long-s0"] and record["checkpoints"] == []
    assert record["checkpoint_errors"] == {
        "softmax-long-s0": "ModuleNotFoundError: Could not import module 'LlamaConfig'"
    }
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["checkpoints_match"] is False and summary["checkpoint_errors"] == record["checkpoint_errors"]


def test_a_broken_checkpoint_path_stops_the_study_before_any_run(study, tmp_path, monkeypatch):
    """The fifth H200 lease trained its baseline for 900 s and then could not explain one checkpoint (a CPU tensor
    met a CUDA weight); the preflight now runs that path on a tiny checkpoint first and stops with the error."""
    work = tmp_path / "gu"

    def broken(*_, **__):
        raise RuntimeError("Expected all tensors to be on the same device")

    monkeypatch.setattr(study.sinklab, "explain", broken)
    argv = ["--preset", "tiny", "--steps", "4", "--eval-every", "2", "--work", str(work), "--variants", "softmax",
            "--seeds", "0", "--sizes", "full", "--checkpoint-steps", "2", "--explain-checkpoints", "2"]  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        study.main(argv)
    assert str(stopped.value).startswith("gu_study: the checkpoint path fails on this machine (RuntimeError: "
                                         "Expected all tensors to be on the same device); no run started")  # fmt: skip
    assert sorted(p.name for p in work.iterdir()) == ["preflight"]  # no run directory, no study record
    record = study.main([*argv, "--explain-checkpoints", "0"])  # rescans only: the explain is not on the path
    assert record["failed"] == {} and record["missing"] == [] and record["checkpoints"][0]["scan"] is not None


def test_the_plot_draws_explain_per_checkpoint_once_per_intervention(study):
    """The seventh lease's saver: the explain panels draw Sink_1 without intervention and after each of the seven
    interventions on the model (bias's zero_sink is noop's and drawn once; the emergence probe's inputs are not
    interventions), at the eight checkpoints' training tokens, with the record's numbers; a study without explain
    says so."""
    from matplotlib.figure import Figure

    record = json.loads((BENCHMARKS / "results" / "gu60m-v03-h200.json").read_text())
    sink_ax, loss_ax = Figure().subplots(1, 2)
    study._explain_over_checkpoints(sink_ax, loss_ax, record["checkpoints"])
    labels = [line.get_label() for line in sink_ax.get_lines()]
    assert labels == ["softmax-long-s2: no intervention", "zero_sink", "zero_middle", "clamp_massive",
                      "clamp_massive_all_layers", "mean_sink", "drop_first", "move_first"]  # fmt: skip
    tokens = [c["tokens"] for c in record["checkpoints"]]
    assert list(sink_ax.get_lines()[0].get_xdata()) == tokens  # the no-intervention line
    last = record["checkpoints"][-1]["explain"]["interventions"]["outlier"]["clamp_massive"]
    assert sink_ax.get_lines()[3].get_ydata()[-1] == pytest.approx(100 * last["sink_rate"])
    assert loss_ax.get_lines()[2].get_ydata()[-1] == pytest.approx(last["loss_delta"])
    empty, _ = Figure().subplots(1, 2)
    study._explain_over_checkpoints(empty, _, [{**c, "explain": None} for c in record["checkpoints"]])
    assert not empty.get_lines() and empty.texts[0].get_text() == "no explain on checkpoints in this study"
