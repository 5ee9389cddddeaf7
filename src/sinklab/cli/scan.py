"""`sinklab scan`: where the sinks are, how strong, and where the massive activations sit; on an image encoder
(``--images``), the [CLS] and register sinks, high-norm patch tokens and sink maps over the images."""

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
from sinklab.errors import SinklabInputError, check_fraction

DEVICE_MAP = typer.Option(
    None,
    metavar="MAP",
    help="Split the model with accelerate: auto, balanced, balanced_low_0, sequential (every visible GPU, then cpu, "
    'then disk), a device, or a JSON object {"model.layers.0": 0, ...}; replaces --device.',
)
MAX_MEMORY = typer.Option(
    None,
    metavar="LIMITS",
    help="With --device-map auto/balanced/sequential: per-device limits, e.g. 0=20GiB,cpu=64GiB.",
)
OFFLOAD_FOLDER = typer.Option(None, metavar="DIR", help="Where modules a --device-map puts on disk are kept.")


def placement_options(
    ctx: typer.Context, device: str, device_map, max_memory, offload_folder
) -> tuple[str | None, dict]:
    """(device, placement) for ``sinklab.load``, checked before anything slow: --device-map replaces --device
    (given both, refused)."""
    from sinklab.models.zoo import placement_kwargs

    placement = placement_kwargs(device_map, max_memory, offload_folder)
    if not placement:
        return device, {}
    if ctx.get_parameter_source("device").name not in ("DEFAULT", "DEFAULT_MAP"):
        raise SinklabInputError("give --device or --device-map, not both (a single device: --device-map cuda:0)")
    return None, placement


IMAGES = typer.Option(
    None,
    metavar="DIR",
    help="Image file or directory (repeatable) for an image encoder; default for one: matplotlib's sample images.",
)


def summary_table(result) -> Table:
    d = result.to_dict()
    layer, head = result.strongest_head()
    vision = result.vision
    table = Table(title=f"sinklab scan: {d['model']}", show_header=False)
    table.add_row("layers x heads", f"{d['num_layers']} x {d['num_heads']} ({d['num_kv_heads']} KV heads)")
    if vision is None:
        table.add_row("sequences x tokens", f"{d['num_sequences']} x {d['sequence_length']}")
    else:
        prefix = ", ".join(vision.prefix) or "no prefix tokens"
        table.add_row(
            "images x tokens",
            f"{d['num_sequences']} x {d['sequence_length']} ({prefix} + {vision.grid[0]}x{vision.grid[1]} patches)",
        )
    table.add_row(f"Sink_1^{d['eps']} (Gu et al.)", f"{d['sink_rate']:.1%}")
    table.add_row("heads sinks on average", f"{int(result.sink_heads.sum())} ({d['sink_rate_of_mean']:.1%})")
    table.add_row(
        "strongest sink head", f"layer {layer} head {head}: alpha_1 = {result.first_token_mass[layer, head]:.3f}"
    )
    if result.sink_slot_mass is not None:
        from sinklab.report.html import slot_summary

        table.add_row("learned sink slot", slot_summary(result))
    for sink in d["sinks"][:3]:
        table.add_row(
            "sink", f"position {sink['position']} {sink['token']!r}: {sink['heads']} heads, mass {sink['mass']:.2f}"
        )
    if vision is not None:
        for i, label in enumerate(vision.prefix):
            mass = vision.prefix_mass[..., i]
            table.add_row(f"{label} mass", f"mean {float(mass.mean()):.3f}, largest {float(mass.max()):.3f}")
        peak = vision.patch_peak
        table.add_row("top patch mass", f"mean {float(peak.mean()):.3f}, largest {float(peak.max()):.3f}")
        norm = vision.to_dict()["high_norm"]
        table.add_row(
            "high-norm patches (output)",
            f"{norm['above_threshold'][-1]} with norm > {vision.high_norm:g}, {norm['above_ratio'][-1]} > "
            f"{vision.norm_ratio:g} x median, of {norm['patches']}",
        )
    table.add_row(
        "largest |hidden|", f"{float(result.layer_max_abs.max()):.1f} ({len(d['massive_activations'])} massive)"
    )
    return table


@command("scan")
def scan_command(
    ctx: typer.Context,
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
    images: list[Path] = IMAGES,
    high_norm: float = typer.Option(
        150.0, metavar="X", help="Images: a patch token is high-norm when its norm > X (Darcet et al. 2024)."
    ),
    norm_ratio: float = typer.Option(
        3.0, metavar="K", help="Images: ... or when its norm > K x the median patch norm (scale-free), K > 1."
    ),
    device_map: str = DEVICE_MAP,
    max_memory: str = MAX_MEMORY,
    offload_folder: Path = OFFLOAD_FOLDER,
) -> None:
    """Measure attention sinks and massive activations; write metrics.json, heads.csv, plots and report.html.
    On an image encoder: [CLS] and register sinks, high-norm patch tokens and sink maps over the images."""
    from sinklab.measure import scan
    from sinklab.models import is_vision_model

    check_text_options(eps, max_tokens, num_texts, bos, min_tokens=2)
    if sink_threshold is not None:
        check_fraction("--sink-threshold", sink_threshold)
    device, placement = placement_options(ctx, device, device_map, max_memory, offload_folder)
    if images is not None or is_vision_model(model):
        _scan_images(
            model, text, images, eps, out, device, dtype, batch_size, sink_threshold, high_norm, norm_ratio, placement
        )
        return
    net, tokenizer, seqs = model_and_sequences(model, text, max_tokens, num_texts, bos, device, dtype, **placement)
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
    if result.skipped_layers:
        Console().print(skipped_line(result.skipped_layers))
    Console().print(f"wrote {out}/metrics.json, heads.csv, plots and report.html")


def _scan_images(
    model: str,
    text: list[Path] | None,
    images: list[Path] | None,
    eps: float,
    out: Path,
    device: str,
    dtype: str | None,
    batch_size: int,
    sink_threshold: float | None,
    high_norm: float,
    norm_ratio: float,
    placement: dict | None = None,
) -> None:
    """`sinklab scan` on an image encoder: images read (and refused) before the slow load."""
    from sinklab.data.images import read_images
    from sinklab.measure.vision import scan_images
    from sinklab.models import is_vision_model, load
    from sinklab.progress import status

    if not is_vision_model(model):
        raise SinklabInputError(
            f"--images needs an image encoder (ViT, DeiT, DINOv2 with or without registers, CLIP or SigLIP vision: "
            f"tiny-vit, tiny-dinov2-reg, ..., a local directory or hub id); {model} is not one"
        )
    if text:
        raise SinklabInputError(f"--text is for text models; {model} is an image encoder: give --images DIR or none")
    if not high_norm > 0 or not norm_ratio > 1:
        raise SinklabInputError(f"--high-norm must be > 0 and --norm-ratio > 1, got {high_norm} and {norm_ratio}")
    items = read_images(images)
    with status(f"loading {model}"):
        net, processor = load(model, device=device, dtype=dtype, **(placement or {}))
    result = scan_images(
        net, processor, items, eps, batch_size=batch_size, sink_threshold=sink_threshold, high_norm=high_norm,
        norm_ratio=norm_ratio, model_name=model,
    )  # fmt: skip
    result.save(out)
    Console().print(summary_table(result))
    Console().print(f"wrote {out}/metrics.json, heads.csv, plots, sink maps and report.html")
