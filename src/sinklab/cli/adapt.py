"""`sinklab adapt`: turn a pretrained model sink-free with a little training of a few parameters."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sinklab.cli._app import DEVICE, DTYPE, MODEL, TEXT, command, out_option, text_provenance


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4g}"


@command("adapt")
def adapt_command(
    model: str = MODEL,
    variant: str = typer.Option("gated", help="gated, sink, kv_bias, softmax1, softpick, sigmoid, clipped, softmax"),
    trainable: str = typer.Option("variant", help="variant, lora (peft, + variant), attention (+ variant), all"),
    tokens: int = typer.Option(131_072, metavar="N", help="training tokens (steps = N / (batch x context))"),
    out: Path = out_option("adapt", "adapt.json, adapter.safetensors, curves.png, report.html"),
    text: list[Path] = TEXT,
    corpus: str = typer.Option(None, metavar="DIR", help="a built token corpus (scripts/build_train_corpus.py)"),
    init: str = typer.Option("identity", help="identity (the model unchanged at step 0) or default (fresh init)"),
    headwise: bool = typer.Option(False, help="gated: one gate per head instead of per channel"),
    beta: float = typer.Option(1.0, metavar="X", help="weight of KL(original || adapted)"),
    mass_penalty: float = typer.Option(0.0, metavar="X", help="weight of the mean first-token attention mass"),
    act_penalty: float = typer.Option(0.0, metavar="X", help="weight of the residual max |x| / d_model"),
    lora_rank: int = typer.Option(8, metavar="N", help="LoRA rank"),
    context: int = typer.Option(256, metavar="N", help="tokens per training sequence"),
    batch_size: int = typer.Option(8, metavar="N", help="sequences per step and process"),
    lr: float = typer.Option(None, metavar="X", help="learning rate of matrices (default by --trainable)"),
    param_lr: float = typer.Option(0.2, metavar="X", help="learning rate of the variant's per-head logits"),
    eval_every: int = typer.Option(None, metavar="K", help="evaluate every K steps (default: 4 evaluations)"),
    long_context: int = typer.Option(1024, metavar="N", help="tokens per long held-out sequence"),
    window: int = typer.Option(256, metavar="N", help="streaming window of the quality metrics"),
    device: str = DEVICE,
    dtype: str = DTYPE,
    seed: int = typer.Option(0, help="seed of the data order and any random init"),
) -> None:
    """Patch a sink-free variant in, train few parameters with CE + KL to the original; measure before and after.

    Several GPUs: torchrun --nproc_per_node N --no-python sinklab adapt ...
    """
    from sinklab.remove.adapt import AdaptConfig, adapt

    config = AdaptConfig(
        model=model,
        variant=variant,
        trainable=trainable,
        tokens=tokens,
        init=init,
        headwise=headwise,
        beta=beta,
        mass_penalty=mass_penalty,
        act_penalty=act_penalty,
        lora_rank=lora_rank,
        context=context,
        batch_size=batch_size,
        lr=lr,
        param_lr=param_lr,
        eval_every=eval_every,
        long_context=long_context,
        window=window,
        text=[str(t) for t in text] if text else None,
        corpus=corpus,
        seed=seed,
        device=device,
        dtype=dtype,
        out=str(out),
    )
    result = adapt(config)
    if not result.history:  # ranks other than 0 report nothing
        return
    s = result.summary()
    table = Table(title=f"sinklab adapt {result.config.name}: {100 * result.trainable_frac:.3f} % of the parameters, "
                        f"{result.tokens:,} tokens")  # fmt: skip
    for col in ("metric", "before", "after"):
        table.add_column(col, justify="right")
    for key, label in (
        ("ppl", "perplexity"),
        ("sink_rate", "Sink_1 (T=64)"),
        ("first_token_mass", "first-token mass"),
        ("max_abs", "max |x|"),
        ("kurtosis", "kurtosis"),
        ("ppl_w8a8", "W8A8 perplexity"),
        ("ppl_kv4", "int4-KV perplexity"),
        ("stream_window_ppl", "window-only streaming ppl"),
        ("stream_sinks_ppl", "4 sinks + window ppl"),
    ):
        table.add_row(label, _fmt(s[f"{key}_before"]), _fmt(s[f"{key}_after"]))
    console = Console()
    console.print(table)
    if text:
        console.print(f"texts: {', '.join(str(f['path']) for f in text_provenance(text))}")
    console.print(f"wrote {out}/adapt.json, adapter.safetensors, curves.png and report.html")
