"""`sinklab train`: pre-train a small Llama decoder with one attention variant or intervention, measure its sinks."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sinklab.cli._app import DEVICE, command, out_option


@command("train")
def train_command(
    variant: str = typer.Option("softmax", help="softmax, softmax1, sink, kv_bias, softpick, clipped, sigmoid, gated"),
    preset: str = typer.Option(
        "tiny", help="tiny (CPU, seconds), small (GPU study, ~50M parameters) or gu60m (Gu et al.'s 60M, context 2048)"
    ),
    steps: int = typer.Option(None, help="optimizer steps (default: the preset's)"),
    out: Path = out_option("train", "train.json and curves.png"),
    corpus: str = typer.Option(None, help="corpus directory from scripts/build_train_corpus.py (default: embedded)"),
    weight_decay: float = typer.Option(0.1, help="AdamW weight decay on weight matrices"),
    sink_token: bool = typer.Option(False, help="prepend a learnable sink token to every sequence (StreamingLLM)"),
    bos: str = typer.Option("always", help="always: every sequence starts with BOS; never: no BOS"),
    batch_size: int = typer.Option(None, help="sequences per step and process (default: the preset's)"),
    lr: float = typer.Option(None, help="peak learning rate (default: the preset's)"),
    min_lr_ratio: float = typer.Option(0.1, help="final learning rate of the cosine over the peak (1: constant)"),
    context: int = typer.Option(None, help="training sequence length (default: the preset's)"),
    metric_windows: str = typer.Option(
        "stream", help="Sink_1 measured on: stream (held-out T=64 windows) or documents (their first 64 tokens, Gu)"
    ),
    eval_every: int = typer.Option(None, help="evaluate every K steps (default: the preset's)"),
    max_epochs: float = typer.Option(2.0, help="refuse runs that pass over the training tokens more often"),
    unique_tokens: int = typer.Option(
        None,
        metavar="N",
        help="train on N tokens of the training split only, whole windows spread evenly over it "
        "(they repeat; default: all)",
    ),
    checkpoint_steps: str = typer.Option(
        None, metavar="S1,S2,...", help="save the model + tokenizer at these steps under OUT/checkpoints/step-S"
    ),
    compile_steps: bool = typer.Option(
        False, "--compile", help="torch.compile the training steps (evaluations run the plain model)"
    ),
    time_limit: float = typer.Option(
        None,
        metavar="S",
        help="stop at the first step S seconds after the start and record the run of the steps "
        "taken (needs --min-lr-ratio 1; a device lease that ends)",
    ),
    device: str = DEVICE,
    seed: int = typer.Option(0, help="seed of the initialisation and the data order"),
) -> None:
    """Train from scratch on held-out-checked text; record Sink_1, first-token mass, max |x|, kurtosis, W8A8 ppl.

    Several GPUs: torchrun --nproc_per_node N --no-python sinklab train ...
    """
    from sinklab.errors import SinklabInputError
    from sinklab.remove.train import TrainConfig, train

    try:
        checkpoints = tuple(int(s) for s in (checkpoint_steps or "").split(",") if s.strip())
    except ValueError:
        raise SinklabInputError(
            f"--checkpoint-steps {checkpoint_steps!r} is not a comma-separated list of integers"
        ) from None
    config = TrainConfig(
        variant=variant,
        preset=preset,
        steps=steps,
        corpus=corpus,
        weight_decay=weight_decay,
        sink_token=sink_token,
        bos=bos,
        batch_size=batch_size,
        lr=lr,
        min_lr_ratio=min_lr_ratio,
        context=context,
        metric_windows=metric_windows,
        eval_every=eval_every,
        max_epochs=max_epochs,
        unique_tokens=unique_tokens,
        checkpoint_steps=checkpoints,
        compile=compile_steps,
        time_limit=time_limit,
        device=device,
        seed=seed,
        out=str(out),
    )
    result = train(config)
    if not result.history:  # ranks other than 0 report nothing
        return
    final = result.final
    table = Table(title=f"sinklab train {result.config.name} ({result.params / 1e6:.2f}M parameters)")
    for col in ("step", "val loss", "Sink_1", "first-token mass", "max |x|", "kurtosis"):
        table.add_column(col, justify="right")
    for row in result.history:
        table.add_row(
            str(row["step"]),
            f"{row['val_loss']:.3f}",
            f"{row['sink_rate']:.1%}",
            f"{row['first_token_mass_mean']:.3f}",
            f"{row['max_activation']:.1f}",
            f"{row['kurtosis']:.1f}",
        )
    console = Console()
    console.print(table)
    if "ppl_fp32" in final:
        console.print(
            f"perplexity fp32 {final['ppl_fp32']:.2f}, W8A8 per-tensor {final['ppl_w8a8_tensor']:.2f}, "
            f"per-token {final['ppl_w8a8_token']:.2f}; {result.tokens_per_second:,.0f} tokens/s"
        )
    console.print(
        f"{final['unique_tokens']:,} unique training tokens, {final['epochs']:.2f} epochs; Sink_1 emergence "
        + ", ".join(f"{key.removeprefix('sink_rate_')}: {step}" for key, step in final["emergence"].items())
    )
    for checkpoint in final.get("checkpoints", []):
        console.print(f"checkpoint step {checkpoint['step']}: {checkpoint['path']}")
    console.print(f"wrote {out}/train.json and {out}/curves.png")
