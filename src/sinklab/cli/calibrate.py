"""`sinklab calibrate`: choose the heads and beta/gamma of ACT or ZeroTuning on a calibration split of a
multiple-choice task; report the held-out accuracy against the plain model and a random-head control."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sinklab.cli._app import DEVICE, DTYPE, MODEL, command, out_option
from sinklab.errors import SinklabInputError


def _values(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SinklabInputError(f"--values must be comma-separated numbers, got {text!r}") from None


def _heads(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise SinklabInputError(f"--heads must be JSON like '{{\"3\": [0, 2]}}', got {text!r}") from None


def summary_table(result: dict) -> Table:
    table = Table(title=f"sinklab calibrate: {result['method']['method']} on {result['task']}")
    for col in ("held-out", "accuracy", "95 % CI"):
        table.add_column(col)
    for name in ("before", "after", "control"):
        r = result["heldout"][name]
        table.add_row(name, f"{r['accuracy']:.3f}", f"{r['ci_low']:.3f} .. {r['ci_high']:.3f}")
    d = result["heldout_delta"]["after_minus_before"]
    table.add_row("after - before", f"{d['mean']:+.3f}", f"{d['ci_low']:+.3f} .. {d['ci_high']:+.3f}")
    return table


@command("calibrate")
def calibrate_command(
    model: str = MODEL,
    method: str = typer.Option("zerotuning", metavar="NAME", help="act or zerotuning."),
    task: str = typer.Option("kv-recall", metavar="TASK", help="cloze, kv-recall or a FILE.jsonl of choices."),
    num_examples: int = typer.Option(100, metavar="N", help="Examples, split into calibration and held out."),
    heldout_fraction: float = typer.Option(0.5, metavar="X", help="Share of the examples held out, in (0, 1)."),
    strategy: str = typer.Option(
        None, metavar="NAME", help="grid, sweep, greedy, entropy (default: act grid, zerotuning sweep)."
    ),
    unit: str = typer.Option("layer", metavar="UNIT", help="layer or head: what one candidate is."),
    candidates: int = typer.Option(6, metavar="N", help="Candidate units (strongest sinks first)."),
    values: str = typer.Option(None, metavar="LIST", help="beta or gamma values, e.g. 0.5,1.5,2.5."),
    heads: str = typer.Option(None, metavar="JSON", help='Restrict candidates to these heads, e.g. {"3": [0, 2]}.'),
    eps: float = typer.Option(0.1, metavar="X", help="ACT's sink threshold on alpha_k, in (0, 1]."),
    seed: int = typer.Option(0, metavar="N", help="Seed of the task, the split, the control and the bootstrap."),
    batch_size: int = typer.Option(16, min=1, metavar="N", help="Rows per forward pass."),
    out: Path = out_option("calibrate", "calibration.json, plots, report.html"),
    device: str = DEVICE,
    dtype: str = DTYPE,
) -> None:
    """Calibrate ACT or ZeroTuning heads on one split of a task, report on the held-out split."""
    from sinklab.data.choice import choice_task
    from sinklab.exploit.redistribute._common import check_positive
    from sinklab.exploit.redistribute.calibrate import calibrate, check_options
    from sinklab.exploit.redistribute.report import write_calibration
    from sinklab.hf import sites
    from sinklab.models import load
    from sinklab.progress import Progress, status
    from sinklab.provenance import file_sources, run_provenance

    parsed_values = _values(values)
    check_options(method, strategy, unit, parsed_values, candidates)
    check_positive("--eps", eps, upper=1.0)
    if num_examples < 4 or not 0 < heldout_fraction < 1:
        raise SinklabInputError(f"--num-examples must be >= 4 and --heldout-fraction in (0, 1), got {num_examples} "
                                f"and {heldout_fraction}")  # fmt: skip
    parsed_heads = _heads(heads)
    examples = choice_task(task, num_examples, seed)  # bad files are refused before the slow load
    with status(f"loading {model}"):
        net, tokenizer = load(model, device=device, dtype=dtype)
    with Progress() as progress:
        bar = progress.add_task("calibrating", total=None)
        result = calibrate(
            net, tokenizer, examples, method, strategy=strategy, unit=unit, candidates=candidates,
            values=parsed_values, heads=parsed_heads, heldout_fraction=heldout_fraction, eps=eps, seed=seed,
            batch_size=batch_size, progress=lambda step: progress.update(bar, advance=1, info=step),
        )  # fmt: skip
    source = file_sources([task]) if task.endswith(".jsonl") else f"generated task {task!r} (seed {seed})"
    result = {"model": model, "task": task, **result}
    result["provenance"] = run_provenance(net, texts=source, seed=seed)
    model_sites = sites(net)
    write_calibration(result, out, model_sites.view.num_layers, max(s.info.num_heads for s in model_sites.attention))
    Console().print(summary_table(result))
    Console().print(f"wrote {out}/calibration.json, plots and report.html")
