"""`sinklab scan`: where the sinks are, how strong, and where the massive activations sit."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sinklab.cli._app import command
from sinklab.errors import SinklabInputError


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
    model: str = typer.Option("smollm2-135m", help="Embedded name (see `sinklab models`), local dir, .gguf or hub id."),
    text: list[Path] = typer.Option(
        None, help="Text file, directory or .jsonl (repeatable); default: embedded corpus."
    ),
    max_tokens: int = typer.Option(512, help="Tokens per sequence."),
    num_texts: int = typer.Option(4, help="Number of sequences to scan."),
    eps: float = typer.Option(0.3, help="Gu et al.'s threshold for Sink_1^eps, in (0, 1)."),
    out: Path = typer.Option(Path("sinklab-out"), help="Output directory."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1, ... (default cpu)."),
    dtype: str = typer.Option(None, help="float32 (default), bfloat16, float16."),
    bos: str = typer.Option("auto", help="auto (tokenizer default), always, never: sinks depend on it."),
    batch_size: int = typer.Option(1, help="Sequences per forward pass."),
    sink_threshold: float = typer.Option(None, help="Mean received mass that makes any key a sink (default eps)."),
) -> None:
    """Measure attention sinks and massive activations; write metrics.json, heads.csv, plots and report.html."""
    from sinklab.data import read_texts
    from sinklab.measure import scan
    from sinklab.models import load

    if not 0.0 < eps < 1.0:
        raise SinklabInputError(f"--eps must lie in (0, 1), got {eps}")
    if max_tokens < 2 or num_texts < 1:
        raise SinklabInputError(f"--max-tokens must be >= 2 and --num-texts >= 1, got {max_tokens} and {num_texts}")
    if bos not in ("auto", "always", "never"):
        raise SinklabInputError(f"unknown --bos {bos!r}; accepted: auto, always, never")
    texts = read_texts(text)
    console = Console(stderr=True)
    with console.status(f"loading {model}"):
        net, tokenizer = load(model, device=device, dtype=dtype)
    result = scan(
        net,
        tokenizer,
        texts,
        eps,
        max_tokens=max_tokens,
        num_texts=num_texts,
        bos=bos,
        batch_size=batch_size,
        sink_threshold=sink_threshold,
        model_name=model,
    )
    result.save(out)
    Console().print(summary_table(result))
    Console().print(f"wrote {out}/metrics.json, heads.csv, plots and report.html")
