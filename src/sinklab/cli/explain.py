"""`sinklab explain`: one measured probe and one intervention per mechanism the literature proposes for sinks."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sinklab.cli._app import command
from sinklab.errors import SinklabInputError


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:+.4f}" if isinstance(x, float) else str(x)


def summary_table(d: dict) -> Table:
    """One row per intervention: what it changes, the loss change and the sink rate after it."""
    table = Table(title=f"sinklab explain: {d['model']} (Sink_1^{d['eps']} = {d['baseline']['sink_rate']:.1%})")
    for col in ("probe", "intervention", "loss change", "sink rate"):
        table.add_column(col)
    for probe, section in d["probes"].items():
        for name, eff in section["interventions"].items():
            if isinstance(eff, dict) and "sink_rate" in eff and name != "baseline":
                table.add_row(probe, name, _fmt(eff.get("loss_delta")), f"{eff['sink_rate']:.1%}")
    for probe, reason in d["not_applicable"].items():
        table.add_row(probe, "[yellow]does not apply[/]", reason, "")
    return table


@command("explain")
def explain_command(
    model: str = typer.Option("smollm2-135m", help="Embedded name (see `sinklab models`), local dir, .gguf or hub id."),
    text: list[Path] = typer.Option(
        None, help="Text file, directory or .jsonl (repeatable); default: embedded corpus."
    ),
    max_tokens: int = typer.Option(512, help="Tokens per sequence."),
    num_texts: int = typer.Option(4, help="Number of sequences."),
    probes: str = typer.Option("noop,outlier,bias,anchor,emergence", help="Comma-separated probes to run."),
    eps: float = typer.Option(0.3, help="Gu et al.'s threshold for Sink_1^eps, in (0, 1)."),
    out: Path = typer.Option(Path("sinklab-explain"), help="Output directory: probes.json, report.html, plots."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1, ... (default cpu)."),
    dtype: str = typer.Option(None, help="float32 (default), bfloat16, float16."),
    bos: str = typer.Option("auto", help="auto (tokenizer default), always, never."),
) -> None:
    """Test the no-op, outlier-circuit, implicit-bias, anchoring and emergence explanations of attention sinks."""
    from sinklab.data import read_texts
    from sinklab.measure.probes import explain
    from sinklab.measure.probes.explain import parse_probes
    from sinklab.models import load

    names = parse_probes(probes)
    if not 0.0 < eps < 1.0:
        raise SinklabInputError(f"--eps must lie in (0, 1), got {eps}")
    if max_tokens < 4 or num_texts < 1:
        raise SinklabInputError(f"--max-tokens must be >= 4 and --num-texts >= 1, got {max_tokens} and {num_texts}")
    if bos not in ("auto", "always", "never"):
        raise SinklabInputError(f"unknown --bos {bos!r}; accepted: auto, always, never")
    texts = read_texts(text)
    console = Console(stderr=True)
    with console.status(f"loading {model}"):
        net, tokenizer = load(model, device=device, dtype=dtype)
    result = explain(
        net, tokenizer, texts, probes=names, eps=eps, max_tokens=max_tokens, num_texts=num_texts, bos=bos,
        model_name=model,
    )  # fmt: skip
    result.save(out)
    Console().print(summary_table(result.to_dict()))
    Console().print(f"wrote {out}/probes.json, plots and report.html")
