"""benchmarks/profile_kernels.py without a GPU: ncu's raw CSV parser, the metric filter, the bound rule, and the
parent's loop against a fake ncu (no ncu found; one cell failing; the JSON written)."""

from __future__ import annotations

import importlib
import json
import stat
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"

GMMA = "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active"
CSV = (
    "==PROF== Connected to process 4242 (/usr/bin/python3.11)\n"
    '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
    '"Device","CC","dram__throughput.avg.pct_of_peak_sustained_elapsed","gpu__time_duration.sum",'
    '"l1tex__t_bytes_pipe_lsu_mem_local_op_ld.sum","l1tex__t_bytes_pipe_lsu_mem_local_op_st.sum",'
    '"launch__registers_per_thread","sm__inst_issued.avg.pct_of_peak_sustained_active",'
    f'"{GMMA}",'
    '"smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",'
    '"smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",'
    '"smsp__average_warps_issue_stalled_selected_per_issue_active.ratio"\n'
    '"","","","","","","","","","","","%","usecond","Kbyte","byte","register/thread","%","%","ratio","ratio","ratio"\n'
    '"0","4242","python3.11","127.0.0.1","attn_fwd","1","7","(256, 1, 1)","(32, 32, 1)","0","9.0",'
    '"3.10","1,234.56","0","0","184","45.2","71.5","0.40","0.90","3.0"\n'
    '"1","4242","python3.11","127.0.0.1","bwd_preprocess","1","7","(128, 1, 1)","(64, 32, 1)","0","9.0",'
    '"65.0","3.20","0","0","32","10.0","0","0.10","2.5","1.0"\n'
    '==PROF== Profiling "attn_bwd_dkdv": 0%....50%....100% - 38 passes\n'
    '"2","4242","python3.11","127.0.0.1","attn_bwd_dkdv","1","7","(256, 1, 1)","(32, 32, 1)","0","9.0",'
    '"5.0","2,345.00","1.5","616","255","52.0","41.0","2.10","0.30","1.0"\n'
    '"3","4242","python3.11","127.0.0.1","void at::native::vectorized_elementwise_kernel<4, at::native::'
    'FillFunctor<float>, at::detail::Array<char *, 1>>(int, T2, T3)","1","7","(128, 1, 1)","(2, 1, 1)","0",'
    '"9.0","1.0","1.10","n/a","","16","2.0","","","",""\n'
)


@pytest.fixture
def prof(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("profile_kernels")


def test_parses_ncu_raw_csv_into_rows_with_units_passes_and_bounds(prof):
    rows = prof.parse_ncu_csv(CSV, variant="softmax", shape="T4k-D128", impl="sinklab-triton")
    assert [r["kernel"] for r in rows] == [
        "attn_fwd",
        "bwd_preprocess",
        "attn_bwd_dkdv",
        "vectorized_elementwise_kernel",
    ]
    assert [r["pass"] for r in rows] == ["fwd", "other", "dkdv", "other"]
    fwd, pre, dkdv, fill = rows
    assert fwd["variant"] == "softmax" and fwd["shape"] == "T4k-D128" and fwd["impl"] == "sinklab-triton"
    assert fwd["launch"] == 0 and fwd["duration_us"] == pytest.approx(1234.56)  # thousands separator
    assert fwd["launch__registers_per_thread"] == 184 and fwd["block_size"] == "(256, 1, 1)"
    assert fwd["bound"] == "tensor-bound" and fwd["tensor_pct"] == pytest.approx(71.5)
    assert pre["bound"] == "memory-bound"
    assert dkdv["spill_bytes"] == pytest.approx(1500 + 616)  # Kbyte -> bytes
    assert dkdv["bound"] == "latency-bound: top stall barrier, spills 2116 B"
    assert dkdv["top_stalls"][0] == ["barrier", 2.1]  # "selected" is not a stall
    assert all(r[0] != "selected" for r in dkdv["top_stalls"])
    assert fill["duration_us"] == pytest.approx(1.1) and fill[GMMA] is None and fill["spill_bytes"] is None
    assert prof.parse_ncu_csv("no csv here\n==ERROR== failed") == []


def test_units_names_and_passes(prof):
    assert prof.number("1,234") == 1234 and prof.number("n/a") is None and prof.number("") is None
    assert prof.to_base(2.0, "msecond") == 2000 and prof.to_base(3.0, "nsecond") == pytest.approx(0.003)
    assert prof.to_base(2.0, "Mbyte") == 2e6 and prof.to_base(5.0, "%") == 5.0
    assert prof.short_name("void flash::compute_attn_ws<Ktraits, true>(Params)") == "compute_attn_ws"
    assert prof.pass_of("attn_bwd_dq") == "dq" and prof.pass_of("colsum_kernel") == "colsum"
    assert prof.pass_of("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_3") == "bwd"
    assert prof.pass_of("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7") == "fwd"
    assert prof.bound_of({prof.ISSUE: 80.0}) == "issue-bound"
    assert prof.bound_of({}) == "unknown"


def test_metric_filter_keeps_listed_names_only(prof):
    listing = (
        "Device gh100 (GH100)\n---------------------------------------------------------------\n"
        "Metric Name                         Metric Type  Metric Unit  Metric Description\n"
        "dram__throughput                    Throughput   %            DRAM throughput\n"
        "gpu__time_duration                  Counter      nsecond      duration\n"
        "sm__throughput                      Throughput   %            SM throughput\n"
        "sm__warps_active                    Counter      warp         active warps\n"
        "sm__pipe_tensor_op_hmma_cycles_active Counter    cycle        hmma\n"
    )
    known = prof.parse_query_metrics(listing)
    assert "dram__throughput" in known and "Metric" not in known
    kept, dropped = prof.filter_metrics(list(prof.METRICS), known)
    assert prof.DURATION in kept and "launch__registers_per_thread" in kept  # no launch__ listed: kept
    assert GMMA in dropped and "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active" in kept
    assert prof.filter_metrics(["a__b.sum"], set()) == (["a__b.sum"], [])  # nothing listed: no filter


def test_no_ncu_writes_a_json_saying_so(prof, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prof, "find_ncu", lambda: None)
    out = tmp_path / "ncu.json"
    assert prof.main(["--out", str(out), "--baselines", "--warm-jobs", "0"]) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "profile_kernels" and record["ncu"] is None and "ncu not found" in record["errors"][0]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == 0


FAKE_NCU = """#!{python}
import sys
args = sys.argv[1:]
if "--version" in args:
    print("NVIDIA (R) Nsight Compute Command Line Profiler\\nVersion 2025.1.0.0 (build 1)")
    sys.exit(0)
if "--query-metrics" in args:
    print("dram__throughput Throughput % x\\ngpu__time_duration Counter ns x\\nsm__throughput T % x")
    print("sm__warps_active C w x\\nsm__inst_issued C i x")
    sys.exit(0)
assert args[args.index("--clock-control") + 1] == "none"
if args[args.index("--variant") + 1] == "softpick":
    sys.stderr.write("==ERROR== the child crashed\\n")
    sys.exit(1)
open(args[args.index("--log-file") + 1], "w").write(open({csv!r}).read())
"""


def test_parent_loop_with_a_fake_ncu_keeps_every_cell_but_the_failing_one(prof, tmp_path, monkeypatch, capsys):
    (tmp_path / "in.csv").write_text(CSV)
    ncu = tmp_path / "ncu"
    ncu.write_text(FAKE_NCU.format(python=sys.executable, csv=str(tmp_path / "in.csv")))
    ncu.chmod(ncu.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(prof, "find_ncu", lambda: str(ncu))
    out = tmp_path / "ncu.json"
    argv = [
        "--out",
        str(out),
        "--variants",
        "softmax",
        "softpick",
        "--shapes",
        "T4k-D64",
        "--baselines",
        "sdpa-cudnn",
        "--warm-jobs",
        "0",
    ]
    assert prof.main(argv) == 0
    record = json.loads(out.read_text())
    assert record["ncu"] == "Version 2025.1.0.0 (build 1)"
    assert GMMA in record["metrics_dropped"] and prof.DURATION in record["metrics"]
    cells = {(c["impl"], c["variant"]): c for c in record["cells"]}
    assert cells["sdpa-cudnn", "softmax"]["kernels"] == 4 and cells["sinklab-triton", "softmax"]["kernels"] == 4
    assert cells["sinklab-triton", "softpick"]["rc"] == 1 and "crashed" in cells["sinklab-triton", "softpick"]["tail"]
    assert len(record["rows"]) == 8 and any("softpick" in e for e in record["errors"])
    printed = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(printed[-1])
    assert summary["cells"] == 3 and summary["cells_ok"] == 2
