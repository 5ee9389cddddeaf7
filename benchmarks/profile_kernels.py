"""Nsight Compute profiles of the attention kernels (issue 12): the measured bound of every kernel of one forward
and one backward per (variant, shape), for benchmarks/KERNELS_NOTES.md.

    python3 benchmarks/profile_kernels.py --out $OUT/kernels-ncu-h200.json

One ``ncu`` process per (implementation, variant, shape) cell, so a failing cell loses only itself. ncu runs this
script again as its child (``--child``): the child builds the inputs of benchmarks/time_kernels.py once, runs forward +
backward twice outside the profiled range (Triton compiles there), then profiles exactly one forward and one
backward between ``torch.cuda.profiler.start()`` and ``stop()`` (``--profile-from-start off``). ncu is always run
with ``--clock-control none``: the card's clocks and settings are never touched. The metric list is filtered to the
names ``ncu --query-metrics`` lists; a cell that ncu still rejects for its metrics is retried with a core set.

Rows (``rows`` in the JSON): one per kernel launch {variant, shape, impl, launch, kernel, pass (fwd / dkdv / dq /
colsum / bwd / other, guessed from the name), duration_us, every metric by its raw name, tensor_pct, top_stalls,
bound}. The table skips launches shorter than 5 us (elementwise kernels); the JSON keeps them.

``bound`` (a fixed rule, ``bound_of``): tensor pipe (the largest of the gmma / hmma / tensor pipe metrics) >= 60 %
of peak -> "tensor-bound"; else issue slots (sm__inst_issued, % of peak active) >= 70 % -> "issue-bound"; else
DRAM throughput >= 60 % -> "memory-bound"; else "latency-bound: top stall <reason>" (the largest
smsp__average_warps_issue_stalled_<reason>_per_issue_active.ratio, "selected" excluded). Local-memory (spill)
traffic > 0 bytes appends ", spills <N> B".

The JSON (--out) is written after every cell: {benchmark: "profile_kernels", device, torch, triton, ncu,
command, metrics, rows, errors, cells}. Prints a table, then ONE JSON line last.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("softmax", "softmax1", "sink", "kv_bias", "softpick", "sigmoid", "clipped")
SHAPES = ("T4k-D128", "T4k-D64")
TRITON_IMPL = "sinklab-triton"
BASELINE_VARIANT = {"sdpa-cudnn": "softmax", "sdpa-flash": "softmax", "sdpa": "softmax", "fa4": "softmax",
                    "fa4-sink": "sink", "flex-sink": "sink"}  # fmt: skip
MIN_TABLE_US = 5.0

TENSOR = (
    "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active",  # wgmma (Hopper)
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",  # mma.sync
    "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",  # any tensor pipe
)
STALL_REASONS = ("long_scoreboard", "short_scoreboard", "barrier", "math_pipe_throttle", "mio_throttle", "wait",
                 "not_selected", "lg_throttle", "dispatch_stall", "no_instruction", "membar", "branch_resolving",
                 "drain", "imc_miss", "sleeping", "tex_throttle", "selected")  # fmt: skip
STALL = tuple(f"smsp__average_warps_issue_stalled_{r}_per_issue_active.ratio" for r in STALL_REASONS)
DURATION = "gpu__time_duration.sum"
ISSUE = "sm__inst_issued.avg.pct_of_peak_sustained_active"
DRAM = "dram__throughput.avg.pct_of_peak_sustained_elapsed"
REGS = "launch__registers_per_thread"
SPILL = ("l1tex__t_bytes_pipe_lsu_mem_local_op_ld.sum", "l1tex__t_bytes_pipe_lsu_mem_local_op_st.sum")
OCCUPANCY = "sm__warps_active.avg.pct_of_peak_sustained_active"
CORE = (DURATION, "sm__throughput.avg.pct_of_peak_sustained_elapsed", DRAM, REGS, OCCUPANCY, "launch__grid_size",
        "launch__block_size")  # fmt: skip
METRICS = (
    *CORE[:2],
    ISSUE,
    *TENSOR,
    DRAM,
    REGS,
    *SPILL,
    OCCUPANCY,
    "sm__maximum_warps_per_active_cycle_pct",  # theoretical occupancy
    "launch__occupancy_limit_registers",
    "launch__occupancy_limit_shared_mem",
    "launch__shared_mem_per_block_static",
    "launch__shared_mem_per_block_dynamic",
    "launch__grid_size",
    "launch__block_size",
    *STALL,
)


# ---------------------------------------------------------------- parsing (pure: tested in tests/unit)
def number(text: str) -> float | None:
    """A number as ncu prints it ("1,234.5", "12", "n/a", "") or None."""
    text = (text or "").strip().replace(",", "")
    if not text:
        return None
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


_TIME = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6}
_BYTES = {"byte": 1, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "tbyte": 1e12, "kib": 1024, "mib": 2**20,
          "gib": 2**30, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9}  # fmt: skip


def to_base(value: float | None, unit: str) -> float | None:
    """Bytes in bytes, times in microseconds; every other unit as printed."""
    if value is None:
        return None
    u = (unit or "").strip().lower()
    if u in _TIME:
        return value * _TIME[u]
    if u in _BYTES:
        return value * _BYTES[u]
    return value


def short_name(name: str) -> str:
    """'void ns::kernel<T>(args)' -> 'kernel' (Triton names have neither)."""
    s = (name or "").strip()
    depth, out = 0, []
    for ch in s:  # drop template arguments and parameter lists, however nested
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth = max(depth - 1, 0)
        elif depth == 0:
            out.append(ch)
    s = "".join(out).strip()
    s = s.split()[-1] if s.split() else (name or "").strip()
    return s.split("::")[-1] or (name or "").strip()


def pass_of(kernel: str) -> str:
    """fwd / dkdv / dq / colsum / bwd / other from a kernel name."""
    k = kernel.lower()
    if "colsum" in k:
        return "colsum"
    if "dkdv" in k or "dk_dv" in k:
        return "dkdv"
    if re.search(r"(^|_)dq($|_)|bwd_dq|convert_dq|dq_", k):
        return "dq"
    if "preprocess" in k:
        return "other"
    if "bwd" in k or "bprop" in k or "backward" in k or "dgrad" in k:
        return "bwd"
    if "fwd" in k or "fprop" in k or "forward" in k or "flash" in k or "attn" in k or "sdpa" in k:
        return "fwd"
    return "other"


def tensor_pct(row: dict) -> float | None:
    vals = [row[m] for m in TENSOR if row.get(m) is not None]
    return max(vals) if vals else None


def top_stalls(row: dict, n: int = 3) -> list[list]:
    """The n largest stall reasons [[reason, warps per issue], ...] ("selected" is issuing, not a stall)."""
    got = [
        (r, row.get(m)) for r, m in zip(STALL_REASONS, STALL, strict=True) if r != "selected" and row.get(m) is not None
    ]
    got.sort(key=lambda x: -x[1])
    return [[r, round(v, 3)] for r, v in got[:n]]


def spill_bytes(row: dict) -> float | None:
    vals = [row[m] for m in SPILL if row.get(m) is not None]
    return sum(vals) if vals else None


def bound_of(row: dict) -> str:
    """The fixed rule of the module docstring."""
    tensor, issue, dram = tensor_pct(row), row.get(ISSUE), row.get(DRAM)
    if tensor is not None and tensor >= 60:
        bound = "tensor-bound"
    elif issue is not None and issue >= 70:
        bound = "issue-bound"
    elif dram is not None and dram >= 60:
        bound = "memory-bound"
    else:
        stalls = top_stalls(row, 1)
        bound = f"latency-bound: top stall {stalls[0][0]}" if stalls else "latency-bound"
        if tensor is None and issue is None and dram is None:
            bound = "unknown"
    spill = spill_bytes(row)
    if spill:
        bound += f", spills {spill:.0f} B"
    return bound


def parse_ncu_csv(text: str, **labels) -> list[dict]:
    """Rows of ncu's ``--csv --page raw`` output (a header of column names, then a units row, then one row per
    kernel launch; lines that are not CSV, such as "==PROF==" messages, are skipped). Metric columns (names with
    "__") become floats in base units (bytes; times in us), or None; ``labels`` are added to every row."""
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    start = next((i for i, ln in enumerate(lines) if ln.startswith('"ID"')), None)
    if start is None:
        return []
    table = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    header, body = table[0], table[1:]
    units = [""] * len(header)
    if body and not (body[0] and body[0][0].strip()):  # the units row: no launch ID
        units, body = body[0] + [""] * (len(header) - len(body[0])), body[1:]
    rows = []
    for cells in body:
        if not cells or not cells[0].strip() or cells[0] == "ID":
            continue
        raw = dict(zip(header, cells, strict=False))
        name = raw.get("Kernel Name", "")
        row = {**labels, "launch": int(number(raw.get("ID", "")) or 0), "kernel": short_name(name),
               "kernel_full": name[:300]}  # fmt: skip
        for col, unit, cell in zip(header, units, cells, strict=False):
            if "__" in col:
                row[col] = to_base(number(cell), unit)
        for col in ("Block Size", "Grid Size"):
            if col in raw:
                row[col.lower().replace(" ", "_")] = raw[col]
        row["pass"] = pass_of(row["kernel"])
        row["duration_us"] = row.get(DURATION)
        row["tensor_pct"] = tensor_pct(row)
        row["spill_bytes"] = spill_bytes(row)
        row["top_stalls"] = top_stalls(row)
        row["bound"] = bound_of(row)
        rows.append(row)
    return rows


def parse_query_metrics(text: str) -> set[str]:
    """Base metric names of ``ncu --query-metrics`` (first token of each line that looks like unit__name)."""
    names = set()
    for line in text.splitlines():
        tok = line.strip().split(" ")[0] if line.strip() else ""
        if re.fullmatch(r"[a-z0-9]+__[A-Za-z0-9_]+(\.[A-Za-z0-9_.]+)?", tok):
            names.add(tok.split(".")[0])
    return names


def filter_metrics(wanted: list[str], known: set[str]) -> tuple[list[str], list[str]]:
    """(kept, dropped): a metric is kept when its base name is listed; launch__ metrics are kept when the listing
    has none (some ncu versions list only hardware metrics); no filtering when the listing misses the core set."""
    if not known or not any(m.split(".")[0] in known for m in CORE if not m.startswith("launch__")):
        return list(wanted), []
    has_launch = any(k.startswith("launch__") for k in known)
    kept, dropped = [], []
    for m in wanted:
        base = m.split(".")[0]
        ok = base in known or (m.startswith("launch__") and not has_launch)
        (kept if ok else dropped).append(m)
    return kept, dropped


# ---------------------------------------------------------------- the child: one forward + one backward, profiled
def child(variant: str, shape_name: str, impl_name: str, warm_only: bool = False) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import time_kernels as kernels  # the same shapes, inputs and implementations as the timed table
    import torch

    impl = kernels.IMPLS[impl_name]
    reason = impl.reason()
    if reason:
        print(f"SKIP: {impl_name}: {reason}", file=sys.stderr)
        return 3
    if variant not in impl.variants:
        print(f"SKIP: {impl_name} has no variant {variant}", file=sys.stderr)
        return 3
    shape = kernels.SHAPES[shape_name]
    q, k, v, do = kernels.Inputs(shape).get(impl.layout)
    params = kernels.params_for(variant, shape.H, shape.D, kernels.DEVICE)
    leaves = [q, k, v, *(x for x in params.values() if isinstance(x, torch.Tensor))]

    def step():
        for x in leaves:
            x.grad = None
        impl.run(variant, q, k, v, params, shape).backward(do)

    for _ in range(2):  # compile / autotune outside the profiled range
        step()
    torch.cuda.synchronize()
    if warm_only:  # fills Triton's on-disk cache so the profiled run does not compile
        print(f"WARMED {impl_name} {variant} {shape_name}", file=sys.stderr)
        return 0
    for x in leaves:
        x.grad = None
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    step()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"PROFILED {impl_name} {variant} {shape_name}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- the parent
def find_ncu() -> str | None:
    found = shutil.which("ncu")
    if found:
        return found
    for pattern in (
        "/usr/local/cuda*/bin/ncu",
        "/opt/nvidia/nsight-compute/*/ncu",
        "/usr/local/NVIDIA-Nsight-Compute*/ncu",
    ):
        hits = sorted(glob.glob(pattern), reverse=True)
        if hits:
            return hits[0]
    return None


def run_cmd(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, str]:
    """(rc, stdout, stderr) of cmd in its own process group, killed (that group only) after timeout; rc 124 then."""
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True, cwd=ROOT)  # fmt: skip
    except OSError as e:
        return 127, "", f"{type(e).__name__}: {e}"
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out or "", err or ""
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):  # the group of the process started here, nothing else
            os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return 124, out or "", (err or "") + f"\ntimeout after {timeout:.0f} s"


def versions() -> dict:
    from importlib import metadata

    out = {}
    for pkg in ("torch", "triton"):
        try:
            out[pkg] = metadata.version(pkg)
        except Exception as e:
            out[pkg] = f"unknown ({type(e).__name__})"
    try:
        rc, so, _ = run_cmd(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], 30)
        out["device"] = so.strip().splitlines()[0] if rc == 0 and so.strip() else "unknown"
    except Exception as e:
        out["device"] = f"unknown ({type(e).__name__})"
    return out


def fa4_available() -> bool:
    import importlib.util

    try:
        return (
            importlib.util.find_spec("flash_attn") is not None
            and importlib.util.find_spec("flash_attn.cute") is not None
        )
    except Exception:
        return False


def metric_error(text: str) -> bool:
    t = text.lower()
    return "metric" in t and ("failed to find" in t or "not found" in t or "invalid" in t or "unknown" in t)


def profile_cell(ncu: str, impl: str, variant: str, shape: str, metrics: list[str], timeout: float,
                 logdir: Path) -> tuple[list[dict], dict]:  # fmt: skip
    log = logdir / f"ncu-{impl}-{variant}-{shape}.csv"
    cmd = [ncu, "--clock-control", "none", "--target-processes", "all", "--profile-from-start", "off", "--csv",
           "--page", "raw", "--metrics", ",".join(metrics), "--log-file", str(log), "-f",
           sys.executable, str(Path(__file__).resolve()), "--child", "--variant", variant, "--shape", shape,
           "--impl", impl]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    t0 = time.time()
    rc, so, se = run_cmd(cmd, timeout, env)
    text = log.read_text(errors="replace") if log.exists() else ""
    rows = parse_ncu_csv(text, variant=variant, shape=shape, impl=impl)
    if not rows:  # an ncu that printed the CSV to stdout after all
        rows = parse_ncu_csv(so, variant=variant, shape=shape, impl=impl)
    info = {"impl": impl, "variant": variant, "shape": shape, "rc": rc, "s": round(time.time() - t0, 1),
            "kernels": len(rows), "log": log.name}  # fmt: skip
    tail = "\n".join((so + "\n" + se + "\n" + text).strip().splitlines()[-15:])
    if rc != 0 or not rows:
        info["tail"] = tail[-2000:]
        info["metric_error"] = metric_error(se + so + text)
        info["skipped"] = "SKIP:" in se
    return rows, info


def warm(cells: list[tuple[str, str, str]], jobs: int, timeout: float) -> dict:
    """Run the Triton cells once without ncu, ``jobs`` processes at a time, so that their kernels are compiled
    into Triton's cache before the profiled runs (which then only load them); a failure here only costs time."""
    todo = [c for c in cells if c[0] == TRITON_IMPL]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    t0, running, done = time.time(), [], {}
    while todo or running:
        while todo and len(running) < jobs:
            impl, variant, shape = todo.pop(0)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--warm-only", "--variant", variant,
                   "--shape", shape, "--impl", impl]  # fmt: skip
            err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (a file, not a pipe: a chatty child never blocks)
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env,
                                 start_new_session=True, cwd=ROOT)  # fmt: skip
            running.append((f"{variant}/{shape}", p, err))
        time.sleep(0.5)
        for name, p, err in list(running):
            if p.poll() is not None:
                err.seek(0)
                tail = err.read()[-200:].strip()
                err.close()
                done[name] = "ok" if p.returncode == 0 else f"rc {p.returncode}: {tail}"
                running.remove((name, p, err))
            elif time.time() - t0 > timeout:
                with contextlib.suppress(OSError):  # the group of the process started here, nothing else
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                err.close()
                done[name] = "timeout"
                running.remove((name, p, err))
        if time.time() - t0 > timeout:
            for c in todo:
                done[f"{c[1]}/{c[2]}"] = "not started: warm timeout"
            todo = []
    return {"s": round(time.time() - t0, 1), "cells": done}


def print_table(rows: list[dict], console) -> None:
    from rich.table import Table

    def f(x, fmt="{:.0f}"):
        return "-" if x is None else fmt.format(x)

    table = Table(title=f"Nsight Compute: kernels >= {MIN_TABLE_US:.0f} us of one forward + one backward")
    for col in ("impl", "variant", "shape", "kernel", "pass", "us", "regs", "spill B", "occ %", "issue %",
                "tensor %", "dram %", "bound"):  # fmt: skip
        table.add_column(col, justify="right" if col in ("us", "regs", "spill B") or "%" in col else "left")
    for r in rows:
        if (r.get("duration_us") or 0) < MIN_TABLE_US:
            continue
        cells = [r["impl"], r["variant"], r["shape"], r["kernel"][:40], r["pass"], f(r.get("duration_us"), "{:.1f}"),
                 f(r.get(REGS)), f(r.get("spill_bytes")), f(r.get(OCCUPANCY), "{:.1f}"), f(r.get(ISSUE), "{:.1f}"),
                 f(r.get("tensor_pct"), "{:.1f}"), f(r.get(DRAM), "{:.1f}"), r["bound"]]  # fmt: skip
        table.add_row(*cells)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kernels-ncu-h200.json")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--baselines", nargs="*", default=None,
                    help="default: sdpa-cudnn, and fa4-sink where flash_attn.cute imports")  # fmt: skip
    ap.add_argument("--time-budget-s", type=float, default=240, help="start no new cell after this many seconds")
    ap.add_argument("--cell-timeout-s", type=float, default=150, help="kill one ncu run after this many seconds")
    ap.add_argument("--warm-jobs", type=int, default=7, help="compile the Triton cells first, this many at a time")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warm-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--impl", default=TRITON_IMPL, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.variant, args.shape, args.impl, args.warm_only)

    from rich.console import Console

    console = Console()
    t0 = time.time()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    logdir = args.out.parent / (args.out.stem + "-logs")
    result: dict = {"benchmark": "profile_kernels", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "rows": [], "errors": [], "cells": []}  # fmt: skip
    try:
        result.update(versions())
    except Exception as e:
        result["errors"].append(f"versions: {type(e).__name__}: {e}")

    def save():
        result["wall_s"] = round(time.time() - t0, 1)
        try:
            args.out.write_text(json.dumps(result, indent=1, default=str))
        except Exception as e:
            console.print(f"could not write {args.out}: {e}")

    def finish() -> int:
        save()
        try:
            print_table(result["rows"], console)
        except Exception as e:
            console.print(f"table: {type(e).__name__}: {e}")
        summary = {"benchmark": "profile_kernels", "out": str(args.out), "device": result.get("device"),
                   "ncu": result.get("ncu"), "cells": len(result["cells"]),
                   "cells_ok": sum(1 for c in result["cells"] if c.get("kernels")), "rows": len(result["rows"]),
                   "errors": len(result["errors"]), "wall_s": result.get("wall_s")}  # fmt: skip
        print(json.dumps(summary, default=str))
        return 0

    ncu = find_ncu()
    result["ncu_path"] = ncu
    if ncu is None:
        result["ncu"] = None
        result["errors"].append("ncu not found (PATH, /usr/local/cuda*/bin, /opt/nvidia/nsight-compute/*)")
        return finish()
    rc, so, se = run_cmd([ncu, "--version"], 60)
    result["ncu"] = (so.strip().splitlines() or ["unknown"])[-1] if rc == 0 else f"unknown (rc {rc}: {se[-200:]})"
    logdir.mkdir(parents=True, exist_ok=True)

    known: set[str] = set()
    for q in (["--query-metrics", "--chip", "gh100"], ["--query-metrics"]):
        rc, so, se = run_cmd([ncu, *q], 120)
        known = parse_query_metrics(so) if rc == 0 else set()
        if known:
            result["metrics_query"] = " ".join(q)
            break
        result["errors"].append(f"ncu {' '.join(q)}: rc {rc}: {(se or so)[-300:]}")
    metrics, dropped = filter_metrics(list(METRICS), known)
    result["metrics"], result["metrics_dropped"], result["metrics_known"] = metrics, dropped, len(known)
    console.print(f"ncu {result['ncu']}: {len(metrics)} metrics ({len(dropped)} not listed: {dropped})")
    save()

    baselines = args.baselines
    if baselines is None:
        baselines = ["sdpa-cudnn"] + (["fa4-sink"] if fa4_available() else [])
    cells = [(b, BASELINE_VARIANT.get(b, "softmax"), s) for b in baselines for s in args.shapes]
    cells += [(TRITON_IMPL, v, s) for v in args.variants for s in args.shapes]
    if args.warm_jobs > 0:
        try:
            result["warm"] = warm(cells, args.warm_jobs, max(30.0, min(150.0, args.time_budget_s / 2)))
        except Exception as e:
            result["errors"].append(f"warm: {type(e).__name__}: {e}")
        console.print(f"warm-up (Triton compile, no ncu): {result.get('warm')}")
        save()
    core_only = False
    for impl, variant, shape in cells:
        left = args.time_budget_s - (time.time() - t0)
        if left <= 0:
            result["errors"].append(f"{impl}/{variant}/{shape}: skipped: time budget")
            result["cells"].append({"impl": impl, "variant": variant, "shape": shape, "skipped": "time budget"})
            save()
            continue
        try:
            use = [m for m in metrics if m in CORE] if core_only else metrics
            rows, info = profile_cell(ncu, impl, variant, shape, use, args.cell_timeout_s, logdir)
            if not rows and info.get("metric_error") and not core_only:
                core_only = True  # ncu rejected a listed metric: the core set from here on
                result["errors"].append(f"{impl}/{variant}/{shape}: metric rejected, core set from here on")
                use = [m for m in metrics if m in CORE] or list(CORE)
                rows, info = profile_cell(ncu, impl, variant, shape, use, args.cell_timeout_s, logdir)
                info["core_only"] = True
            result["rows"].extend(rows)
            result["cells"].append(info)
            if not rows and "ERR_NVGPUCTRPERM" in info.get("tail", ""):
                result["errors"].append("ERR_NVGPUCTRPERM: no access to the GPU performance counters; stopped")
                save()
                break
            if not rows:
                result["errors"].append(f"{impl}/{variant}/{shape}: rc {info['rc']}, no kernels: "
                                        f"{info.get('tail', '')[-400:]}")  # fmt: skip
            big = [r for r in rows if (r.get("duration_us") or 0) >= MIN_TABLE_US]
            console.print(f"{impl:14s} {variant:9s} {shape:9s}: rc {info['rc']}, {len(rows)} launches, "
                          f"{info['s']:.0f} s; " + "; ".join(f"{r['kernel'][:24]} {r['duration_us']:.0f} us "
                                                             f"{r['bound']}" for r in big))  # fmt: skip
        except Exception as e:  # one cell never loses the others
            result["errors"].append(f"{impl}/{variant}/{shape}: {type(e).__name__}: {e}")
            result["cells"].append({"impl": impl, "variant": variant, "shape": shape, "error": str(e)[:300]})
        save()
    return finish()


if __name__ == "__main__":
    sys.exit(main())
