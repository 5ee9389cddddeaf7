"""`sinklab explain`: one measured probe and one intervention per mechanism the literature proposes for sinks."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sinklab.cli._app import (
    BOS,
    DEVICE,
    DTYPE,
    EPS,
    MAX_TOKENS,
    MODEL,
    NUM_TEXTS,
    TEXT,
    check_text_options,
    command,
    model_and_sequences,
    out_option,
    skipped_line,
    text_provenance,
)


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
    model: str = MODEL,
    text: list[Path] = TEXT,
    max_tokens: int = MAX_TOKENS,
    num_texts: int = NUM_TEXTS,
    probes: str = typer.Option(
        "noop,outlier,bias,anchor,emergence", metavar="LIST", help="Comma-separated probes to run."
    ),
    eps: float = EPS,
    out: Path = out_option("explain", "probes.json, report.html, plots"),
    device: str = DEVICE,
    dtype: str = DTYPE,
    bos: str = BOS,
    seed: int = typer.Option(0, metavar="N", help="Seed of the random-token runs and interventions."),
) -> None:
    """Test the no-op, outlier-circuit, implicit-bias, anchoring and emergence explanations of attention sinks."""
    from sinklab.measure.probes import explain
    from sinklab.measure.probes.runner import MIN_TOKENS, parse_probes

    names = parse_probes(probes)
    check_text_options(eps, max_tokens, num_texts, bos, min_tokens=MIN_TOKENS)
    net, tokenizer, seqs = model_and_sequences(model, text, max_tokens, num_texts, bos, device, dtype)
    result = explain(net, tokenizer, seqs, probes=names, eps=eps, num_texts=None, bos=bos, model_name=model, seed=seed)
    result.provenance["texts"]["source"] = text_provenance(text)
    result.save(out)
    summary = result.to_dict()
    Console().print(summary_table(summary))
    if summary["skipped_layers"]:
        Console().print(skipped_line(summary["skipped_layers"]))
    Console().print(f"wrote {out}/probes.json, plots and report.html")
