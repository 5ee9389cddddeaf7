"""benchmarks/ship.sh's background studies on the device: launched in their own session, watched, copied to $OUT."""

import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

SHIP_SH = Path(__file__).resolve().parents[2] / "benchmarks" / "ship.sh"

pytestmark = pytest.mark.skipif(not all(map(shutil.which, ("bash", "tar", "sleep"))), reason="needs bash and tar")


def _watch(work: Path, out: Path, seconds: int) -> tuple[subprocess.CompletedProcess, float]:
    script = f'source "{SHIP_SH}"; OUT="{out}"; watch_study "{work}" {seconds}'
    start = time.perf_counter()
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    return done, time.perf_counter() - start


def test_watch_study_ends_at_its_limit_with_the_running_study_copied(tmp_path):
    """A study still running when the watch's SECONDS pass: the watch returns at SECONDS (not at the next 30 s
    poll, which ran one call past its limit and lost a finished 50M run) and $OUT holds the runs so far."""
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "softmax-50M-s0").mkdir(parents=True)
    out.mkdir()
    (work / "softmax-50M-s0" / "history.jsonl").write_text('{"step": 250}\n')
    (work / "softmax-50M-s0" / "log.txt").write_text("train:  6% (250/4000)\r")
    (work / "orchestrator.log").write_text("started softmax-50M-s0\n")
    study = subprocess.Popen(["sleep", "60"])
    try:
        (work / "study.pid").write_text(str(study.pid))
        done, seconds = _watch(work, out, 2)
    finally:
        study.kill()
    assert done.returncode == 0, done.stderr
    assert seconds < 10, seconds
    assert "softmax-50M-s0: train:  6% (250/4000)" in done.stdout and "study exited" not in done.stdout
    assert (out / "orchestrator.log").read_text() == "started softmax-50M-s0\n"
    with tarfile.open(out / "runs.tgz") as runs:
        assert sorted(runs.getnames()) == ["softmax-50M-s0/history.jsonl", "softmax-50M-s0/log.txt"]
    assert not (out / ".runs.tgz").exists()


def test_watch_study_stops_polling_when_the_study_exits(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "softmax-s0").mkdir(parents=True)
    out.mkdir()
    for name in ("train.json", "rescan-step-4.json", "explain-step-4.json"):  # the records of a saver's checkpoint
        (work / "softmax-s0" / name).write_text("{}")
    (work / "gu-study.json").write_text('{"benchmark": "gu_study"}')
    (work / "orchestrator.log").write_text("finished\n")
    (work / "study.pid").write_text("999999999")  # no such process: the study has exited
    done, seconds = _watch(work, out, 1)
    assert done.returncode == 0, done.stderr
    assert "study exited" in done.stdout and seconds < 10
    assert (out / "gu-study.json").read_text() == '{"benchmark": "gu_study"}'
    with tarfile.open(out / "runs.tgz") as runs:
        assert sorted(runs.getnames()) == [
            "softmax-s0/explain-step-4.json", "softmax-s0/rescan-step-4.json", "softmax-s0/train.json"
        ]  # fmt: skip


def test_a_hybrid_study_started_in_its_own_session_comes_back_through_the_watch(tmp_path):
    """The device path of the hybrid study on the CPU: start_hybrid launches hybrid_study.py in its own session (pid in
    WORK/study.pid), watch_study polls it to its end and copies its record and plot to $OUT."""
    import json
    import sys

    work, out = tmp_path / "hyb", tmp_path / "out"
    out.mkdir()
    root = SHIP_SH.parents[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "SRC": str(root / "src"),
           "WATCH_EVERY": "1"}  # fmt: skip
    script = (
        f'source "{SHIP_SH}"; export SINKLAB_CACHE="{tmp_path / "cache"}"; OUT="{out}"; '
        f'start_hybrid "{work}" --preset tiny --steps 2 --runs softmax --seeds 0 && watch_study "{work}" 50'
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=root, env=env)
    assert done.returncode == 0, done.stderr
    assert "study exited" in done.stdout, done.stdout + (work / "orchestrator.log").read_text()
    record = json.loads((out / "hybrid-h200.json").read_text())
    assert [(row["run"], row["seed"]) for row in record["rows"]] == [("softmax", 0)]
    assert (out / "hybrid-h200.png").exists() and "softmax seed 0 done" in (out / "orchestrator.log").read_text()


def test_then_study_starts_the_second_study_only_once_the_first_has_exited(tmp_path):
    """Two studies in one call (the ninth lease: the 50M subset, then sigmoid-long-s0): while the first runs nothing
    starts and $OUT is left alone; once it has exited its copies move to $OUT/<first>/ and the second is launched."""
    first, second, out, bin_ = tmp_path / "ds", tmp_path / "gu60", tmp_path / "out", tmp_path / "bin"
    for folder in (first, out, bin_):
        folder.mkdir()
    (bin_ / "python3").write_text('#!/bin/sh\necho "fake python3 $*"\n')  # stands in for benchmarks/gu_study.py
    (bin_ / "python3").chmod(0o755)
    (out / "gu-study.json").write_text('{"sizes": ["50000000"]}')
    (out / "runs.tgz").write_bytes(b"runs")
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"}
    script = f'source "{SHIP_SH}"; OUT="{out}"; then_study "{first}" "{second}" --first sigmoid-long-s0'

    running = subprocess.Popen(["sleep", "60"])
    try:
        (first / "study.pid").write_text(str(running.pid))
        refused = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, env=env)
    finally:
        running.kill()
        running.wait()
    assert refused.returncode == 1 and f"then_study: {first} still runs; nothing started" in refused.stdout
    assert sorted(p.name for p in out.iterdir()) == ["gu-study.json", "runs.tgz"] and not second.exists()

    started = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, env=env)
    assert started.returncode == 0, started.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ds"]
    assert sorted(p.name for p in (out / "ds").iterdir()) == ["gu-study.json", "runs.tgz"]
    assert (second / "study.pid").read_text().strip().isdigit()
    for _ in range(100):  # the launched process writes its log in its own session
        if (second / "orchestrator.log").read_text():
            break
        time.sleep(0.05)
    assert (second / "orchestrator.log").read_text() == (
        f"fake python3 benchmarks/gu_study.py --first sigmoid-long-s0 --work {second} --out {second}/gu-study.json\n"
    )


def test_then_hybrid_starts_the_hybrid_study_once_the_first_has_exited(tmp_path):
    """then_hybrid: a hybrid study after a gu_study one in the same call, the first's copies set aside the same way."""
    first, second, out, bin_ = tmp_path / "gu60", tmp_path / "hyb", tmp_path / "out", tmp_path / "bin"
    for folder in (first, out, bin_):
        folder.mkdir()
    (bin_ / "python3").write_text('#!/bin/sh\necho "fake python3 $*"\n')
    (bin_ / "python3").chmod(0o755)
    (out / "gu-study.json").write_text("{}")
    (first / "study.pid").write_text("999999999")  # no such process: the first study has exited
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"}
    script = f'source "{SHIP_SH}"; OUT="{out}"; then_hybrid "{first}" "{second}" --runs sliding --seeds 1 --resume'
    started = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, env=env)
    assert started.returncode == 0, started.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gu60"] and (out / "gu60" / "gu-study.json").exists()
    for _ in range(100):
        if (second / "orchestrator.log").read_text():
            break
        time.sleep(0.05)
    assert (second / "orchestrator.log").read_text() == (
        f"fake python3 benchmarks/hybrid_study.py --runs sliding --seeds 1 --resume --out {second}/hybrid-h200.json\n"
    )


def test_lease_left_counts_down_from_the_budget_call_1_wrote(tmp_path):
    """lease_start in call 1 writes the time and budget_left_s; lease_left M is that budget less M and the seconds
    since (the fourteenth lease's limits, each from one function)."""
    env = {**os.environ, "LEASE_CLOCK": str(tmp_path)}
    script = f'source "{SHIP_SH}"; lease_start 1800; lease_left 240'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) in (1560, 1559) and (tmp_path / "lease_budget").read_text() == "1800\n"
    (tmp_path / "lease_t0").write_text(f"{int(time.time()) - 1000}\n")  # call 1 was 1000 s ago
    later = subprocess.run(["bash", "-c", f'source "{SHIP_SH}"; lease_left 100'], capture_output=True, text=True,
                           timeout=30, env=env)  # fmt: skip
    assert int(later.stdout) in (700, 699)


@pytest.mark.parametrize(("budget", "started"), [(1000, True), (300, False)])
def test_watch_then_hybrid_starts_the_hybrid_study_with_the_lease_s_seconds_left(tmp_path, budget, started):
    """watch_then_hybrid after a gu_study that has exited: the hybrid study starts with --time-limit the lease's
    seconds left less 240 and is watched until it exits; with 150 s or less to give it, nothing starts."""
    import re

    first, second, out, bin_ = tmp_path / "gu60", tmp_path / "hyb", tmp_path / "out", tmp_path / "bin"
    for folder in (first, out, bin_):
        folder.mkdir()
    (bin_ / "python3").write_text('#!/bin/sh\necho "fake python3 $*"\n')
    (bin_ / "python3").chmod(0o755)
    (first / "study.pid").write_text("999999999")  # no such process: the gu study has exited
    (first / "orchestrator.log").write_text("finished\n")
    (first / "gu-study.json").write_text("{}")
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "LEASE_CLOCK": str(tmp_path), "WATCH_EVERY": "1"}
    script = (f'source "{SHIP_SH}"; OUT="{out}"; lease_start {budget}; CALL_SECONDS=20; '
              f'watch_then_hybrid "{first}" "{second}" --runs sliding --seeds 2 --resume')  # fmt: skip
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    [limit] = re.findall(r"watch_then_hybrid: hybrid time limit (\d+) s", done.stdout)
    # the watch's one poll sleeps 1 s between lease_start and the limit, and both clocks read whole seconds
    assert budget - 243 <= int(limit) <= budget - 240
    assert (out / "gu60" / "gu-study.json").exists() == started and (second / "study.pid").exists() == started
    if started:
        log = (second / "orchestrator.log").read_text()
        assert re.fullmatch(rf"fake python3 benchmarks/hybrid_study.py --runs sliding --seeds 2 --resume "
                            rf"--time-limit {limit} --out {second}/hybrid-h200.json\n", log), log  # fmt: skip
        assert "study exited" in done.stdout.split("hybrid time limit")[1]  # the hybrid study watched to its exit


def _with_fake_gu_study(tmp_path: Path, fails_first: bool, script: str, **env: str) -> subprocess.CompletedProcess:
    """bash -c SCRIPT with a python3 on PATH that stands in for gu_study.py: FAILED at the first start if asked, else
    the new run's two evaluations after 6 s; ENV beside the process's own."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "python3").write_text(
        '#!/bin/sh\necho "fake python3 $*"\nwhile [ $# -gt 0 ]; do [ "$1" = --work ] && w=$2; shift; done\n'
        f'if [ {int(fails_first)} = 1 ] && [ ! -f "$w"/tried ]; then touch "$w"/tried; echo "s2 FAILED"; exit 1; fi\n'
        'sleep 6; mkdir -p "$w"/gated-long-s2 && printf "{}\\n{}\\n" > "$w"/gated-long-s2/history.jsonl\n'
    )
    (bin_ / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", **env}
    return subprocess.run(["bash", "-c", f'source "{SHIP_SH}"; {script}'], capture_output=True, text=True, timeout=60,
                          env=env)  # fmt: skip


@pytest.mark.parametrize("fails_first", [False, True])
def test_resume_study_starts_the_study_on_the_committed_runs(tmp_path, fails_first):
    """resume_study: the committed runs copied to WORK, the study started with --long-time-limit the lease's seconds
    left less 330 and watched to its exit. The finished run copied in (3 evaluations) never passes for the new run's
    second evaluation (the fourteenth lease's restart_if_failed took it for one and stopped looking at once); a start
    that FAILS is started again with the same arguments, its limit less the seconds the failed start took."""
    import re

    record, work, out = tmp_path / "record", tmp_path / "gu60", tmp_path / "out"
    for folder in (record / "softmax-long-s0", out):
        folder.mkdir(parents=True)
    (record / "softmax-long-s0" / "train.json").write_text("{}")
    (record / "softmax-long-s0" / "history.jsonl").write_text("{}\n{}\n{}\n")
    script = (f'OUT="{out}"; lease_start 1800; CALL_SECONDS=20; '
              f'resume_study "{record}" "{work}" --first gated-long-s2 --compile')  # fmt: skip
    done = _with_fake_gu_study(tmp_path, fails_first, script, LEASE_CLOCK=str(tmp_path), WATCH_EVERY="1")
    assert done.returncode == 0, done.stderr
    launches = re.findall(r"launch \S+: pid \d+: python3 benchmarks/gu_study.py --first gated-long-s2 --compile "
                          r"--long-time-limit (\d+) ", done.stdout)  # fmt: skip
    assert len(launches) == 1 + fails_first, done.stdout
    assert int(launches[0]) in (1470, 1469)
    # the restart waited 5 s for the FAILED line and 5 s after stopping the study: its limit at least 10 s lower
    assert all(1470 - 15 <= int(later) <= int(launches[0]) - 10 for later in launches[1:]), launches
    assert ("s2 FAILED" in done.stdout) == fails_first
    written = re.findall(r"second evaluation written: (\S+)", done.stdout)
    assert written == ([] if fails_first else [f"{work}/gated-long-s2"]), done.stdout
    assert "study exited" in done.stdout and (work / "softmax-long-s0" / "train.json").exists()
    with tarfile.open(out / "runs.tgz") as runs:
        assert {"gated-long-s2/history.jsonl", "softmax-long-s0/train.json"} <= set(runs.getnames())


def test_restart_if_failed_shortens_a_limit_given_in_fractional_seconds(tmp_path):
    """gu_study takes --long-time-limit as a float; the restart counts whole seconds (bash's arithmetic stops the
    shell at '1250.5'), so a fractional limit restarts with its whole seconds less the failed start's."""
    import re

    work = tmp_path / "gu60"
    script = (f'start_study "{work}" --first gated-long-s2 --long-time-limit 1250.5; '
              f'restart_if_failed "{work}" 30 --first gated-long-s2 --long-time-limit 1250.5')  # fmt: skip
    done = _with_fake_gu_study(tmp_path, True, script)
    assert done.returncode == 0, done.stderr
    launches = re.findall(r"launch \S+: pid \d+: python3 benchmarks/gu_study.py --first gated-long-s2 "
                          r"--long-time-limit (\S+) ", done.stdout)  # fmt: skip
    assert launches[0] == "1250.5" and 1250 - 15 <= int(launches[1]) <= 1250 - 10, done.stdout


def test_the_triton_cache_goes_out_whole_and_comes_back_where_triton_looks(tmp_path):
    """keep_triton_cache packs TRITON_CACHE_DIR into $OUT/triton-cache.tgz (what the last call brings back);
    restore_triton_cache unpacks a stashed one into an empty TRITON_CACHE_DIR on the next machine, file for file."""
    cache, out, ship = tmp_path / "cache", tmp_path / "out", tmp_path / "ship"
    (cache / "AbC123").mkdir(parents=True)
    (cache / "AbC123" / "kernel.cubin").write_bytes(bytes(range(256)))
    (cache / "AbC123" / "chunk_fwd.autotune.json").write_text('{"configs_timings": [[{"BT": 64}, [0.1]]]}')
    out.mkdir()
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache)}
    keep = subprocess.run(["bash", "-c", f'source "{SHIP_SH}"; OUT="{out}"; keep_triton_cache'],
                          capture_output=True, text=True, timeout=30, env=env)  # fmt: skip
    assert keep.returncode == 0, keep.stderr
    assert "keep_triton_cache:" in keep.stdout and sorted(p.name for p in out.iterdir()) == ["triton-cache.tgz"]
    ship.mkdir()
    shutil.copy(out / "triton-cache.tgz", ship)
    fresh = tmp_path / "fresh"
    env["TRITON_CACHE_DIR"] = str(fresh)
    script = f'source "{SHIP_SH}"; SHIP="{ship}"; restore_triton_cache'
    restore = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, env=env)
    assert restore.returncode == 0, restore.stderr
    assert "2 files" in restore.stdout
    assert (fresh / "AbC123" / "kernel.cubin").read_bytes() == bytes(range(256))
    assert (fresh / "AbC123" / "chunk_fwd.autotune.json").read_text().startswith('{"configs_timings"')
    env["TRITON_CACHE_DIR"] = str(tmp_path / "none")
    missing = subprocess.run(["bash", "-c", f'source "{SHIP_SH}"; OUT="{out}"; keep_triton_cache'],
                             capture_output=True, text=True, timeout=30, env=env)  # fmt: skip
    assert missing.returncode == 1 and "no " in missing.stderr
