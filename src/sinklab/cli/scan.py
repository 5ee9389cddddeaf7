"""`sinklab scan`: where the sinks are, how strong, and where the massive activations sit."""

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
    text_provenance,
)
from sinklab.errors import check_fraction


def summary_table(result) -> Table:
    d = result.to_dict()
    layer, head = result.strongest_head()
    table = Table(title=f"sinklab scan: {d['model']}", show_header=False)
    table.add_row("layers x heads", f"{d['num_layers']} x {d['num_heads']} ({d['num_kv_heads']} KV heads)")
    table.add_row("sequences x tokens", f"{d['num_sequences']} x {d['sequence_length']}")
    table.add_row(f"Sink_1^{d['eps']} (Gu et al.)", f"{d['sink_rate']:.1%}")
    table.add_row(
        "strongest sink head", f"layer {layer} head {head}: alpha_1 = {result.first_token_mass[layer, head]:.3f}"
    )
    for sink in d["sinks"][:3]:
        table.add_row(
            "sink", f"position {sink['position']} {sink['token']!r}: {sink['heads']} heads, mass {sink['mass']:.2f}"
        )
    table.add_row(
        "largest |hidden|", f"{float(result.layer_max_abs.max()):.1f} ({len(d['massive_activations'])} massive)"
    )
    return table


@command("scan")
def scan_command(
    model: str = MODEL,
    text: list[Path] = TEXT,
    max_tokens: int = MAX_TOKENS,
    num_texts: int = NUM_TEXTS,
    eps: float = EPS,
    out: Path = out_option("scan", "metrics.json, heads.csv, plots, report.html"),
    device: str = DEVICE,
    dtype: str = DTYPE,
    bos: str = BOS,
    batch_size: int = typer.Option(1, min=1, metavar="N", help="Sequences per forward pass."),
    sink_threshold: float = typer.Option(
        None, metavar="X", help="Mean received mass that makes any key a sink, in (0, 1) (default eps)."
    ),
) -> None:
    """Measure attention sinks and massive activations; write metrics.json, heads.csv, plots and report.html."""
    from sinklab.measure import scan

    check_text_options(eps, max_tokens, num_texts, bos, min_tokens=2)
    if sink_threshold is not None:
        check_fraction("--sink-threshold", sink_threshold)
    net, tokenizer, seqs = model_and_sequences(model, text, max_tokens, num_texts, bos, device, dtype)
    result = scan(
        net,
        tokenizer,
        seqs,
        eps,
        max_tokens=max_tokens,
        num_texts=num_texts,
        bos=bos,
        batch_size=batch_size,
        sink_threshold=sink_threshold,
        model_name=model,
    )
    result.provenance["texts"]["source"] = text_provenance(text)
    result.save(out)
    Console().print(summary_table(result))
    Console().print(f"wrote {out}/metrics.json, heads.csv, plots and report.html")
