"""`sinklab bench`: the standardized attention-sink benchmark, models x metrics x methods under one protocol."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sinklab.cli._app import BOS, DEVICE, EPS, command, out_option
from sinklab.errors import SinklabInputError


def _ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SinklabInputError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise SinklabInputError(f"{flag} needs at least one value")
    return values


def leaderboard(rows: list[dict], length: int, gu: int) -> Table:
    table = Table(title="sinklab bench")
    keys = (f"ppl@{length}", f"d_ppl_kv4@{length}", f"d_ppl_w8a8@{length}", f"ppl_window@{length}",
            f"ppl_sinks@{length}", f"sink_rate@{gu}", f"dormant_share@{gu}", f"value_norm_ratio@{gu}",
            "passkey_in_window", "passkey_beyond_window")  # fmt: skip
    for col in ("model", "method", *keys):
        table.add_column(col)
    for r in rows:
        if not r.get("published"):
            cells = [r.get(k) for k in keys]
            table.add_row(r["model"], r["method"], *("" if v is None else f"{v:.4g}" for v in cells))
    return table


def _compare(paths: list[Path], out: Path) -> None:
    import json

    from sinklab.bench import compare_runs
    from sinklab.report.files import staged_output

    if len(paths) != 2:
        raise SinklabInputError(f"--compare takes two bench.json files (A then B), got {len(paths)}")
    result = compare_runs(*paths)
    table = Table(title=f"sinklab bench --compare (protocol {result['protocol']})")
    for col in ("model", "method", "metric", "A", "B", "B - A"):
        table.add_column(col)
    for c in result["changed"]:
        table.add_row(c["model"], c["method"], c["metric"], f"{c['a']:.6g}", f"{c['b']:.6g}", f"{c['b_minus_a']:+.4g}")
    Console().print(table)
    Console().print(f"{len(result['changed'])} changed, {result['unchanged']} unchanged")
    with staged_output(out) as tmp:
        (tmp / "compare.json").write_text(json.dumps(result, indent=1))
    Console().print(f"wrote {out}/compare.json")


@command("bench")
def bench_command(
    models: str = typer.Option(
        "smollm2-135m", metavar="LIST", help="Comma-separated models (any `sinklab.load` name)."
    ),
    methods: str = typer.Option(
        "all",
        metavar="LIST",
        help="Methods: act, zerotuning, prefix, kv-quant, stream-attention, knorm, h2o, "
        "adapted=DIR, prefix=FILE; all; none.",
    ),
    factorial: list[str] = typer.Option(
        ["sinks,kv4,w8a8"],
        metavar="LIST",
        help="2-4 factors of sinks, kv4, w8a8, act, prefix (or prefix=FILE) crossed 2^k; repeat for more designs "
        "(none: no factorial).",
    ),
    lengths: str = typer.Option(
        "512,2048", metavar="LIST", help="Perplexity lengths of the plain model; methods run at the first."
    ),
    num_texts: int = typer.Option(1, metavar="K", help="Sequences per length."),
    eps: float = EPS,
    bos: str = BOS,
    dtype: str = typer.Option("float32", metavar="DTYPE", help="float32, bfloat16, float16."),
    corpus: str = typer.Option("embedded", metavar="FILE", help="Text file, directory or .jsonl (default: embedded)."),
    window: int = typer.Option(256, metavar="N", help="Streaming window (recent tokens)."),
    sinks: int = typer.Option(4, metavar="N", help="Sinks kept by the streaming cache."),
    keep_first: int = typer.Option(4, metavar="N", help="Keys kept in full precision by the int4 KV cache."),
    passkey_tokens: int = typer.Option(1024, metavar="N", help="Passkey prompt length."),
    out: Path = out_option("bench", "bench.json, bench.csv, plots, report.html (compare.json with --compare)"),
    resume: bool = typer.Option(False, "--resume", help="Reuse the rows already under DIR/parts (same protocol)."),
    cores: str = typer.Option(
        "unknown", metavar="STATE", help="shared, idle or unknown: the cores the timings ran on (marked in the JSON)."
    ),
    compare: tuple[Path, Path] | None = typer.Option(
        None, "--compare", metavar="A B", help="Compare two bench.json files (A then B) instead of running."
    ),
    device: str = DEVICE,
) -> None:
    """Run the benchmark protocol (or compare two runs); write bench.json, bench.csv, plots and report.html."""
    from sinklab.bench import make_protocol, run_bench
    from sinklab.bench.methods import parse_designs, parse_methods
    from sinklab.bench.metrics import check_cores
    from sinklab.bench.report import write_bench
    from sinklab.progress import Progress

    if compare and any(p is not None for p in compare):
        _compare(list(compare), out)
        return
    parse_methods(methods), parse_designs(factorial)  # refused before any model loads
    check_cores(cores)
    lens = _ints("--lengths", lengths)
    if not models.strip():
        raise SinklabInputError("--models needs at least one model name")
    protocol = make_protocol(corpus, lengths=lens, method_lengths=lens[:1], num_texts=num_texts, eps=eps, bos=bos,
                             dtype=dtype, window=window, num_sinks=sinks, keep_first=keep_first,
                             passkey_tokens=passkey_tokens)  # fmt: skip
    names = [m.strip() for m in models.split(",") if m.strip()]
    with Progress() as progress:
        bar = progress.add_task("bench rows", total=None)
        result = run_bench(names, methods, factorial, protocol, out, device=device, resume=resume, cores=cores,
                           progress=lambda what: progress.update(bar, advance=1, info=what))  # fmt: skip
    write_bench(result, out)
    Console().print(leaderboard(result["rows"], lens[0], protocol.gu_length))
    Console().print(f"protocol {result['protocol']['hash']}, {result['wall_s']:.0f} s; wrote {out}/bench.json, "
                    "bench.csv, plots and report.html")  # fmt: skip
