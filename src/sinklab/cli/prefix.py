"""`sinklab prefix tune|apply|eval`: learnable prefix key/values for a pretrained model (the sink it is given).

tune  trains n slots per layer and KV head with the model frozen (KL to the unchanged model + an outlier penalty) on
      the start of the text; writes prefix.safetensors and tune.json.
apply generates after a prompt with the prefix attached (``--window``: a SinkCache with zero real sinks, the prefix
      as the sink).
eval  measures the model as it is, keep-first-N and the prefix on held-out text (the end of the text, disjoint from
      what tune reads at its start): perplexity, W8A8, int4 KV, streaming, outliers, sinks; writes eval.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sinklab.cli._app import DEVICE, DTYPE, MODEL, TEXT, SinklabCommand, SinklabGroup, app, out_option
from sinklab.errors import SinklabInputError

prefix_app = typer.Typer(
    cls=SinklabGroup,
    help="Prefix key/values: tune n slots that serve as the sink, apply them, evaluate them.",
    no_args_is_help=True,
)
app.add_typer(prefix_app, name="prefix")

TUNE_TOKENS = typer.Option(128, metavar="N", help="Tokens per tuning sequence.")
TUNE_SEQS = typer.Option(16, metavar="K", help="Tuning sequences (from the start of the text).")
PREFIX = typer.Option(..., "--prefix", metavar="FILE", help="prefix.safetensors written by `sinklab prefix tune`.")


def _check_sizes(**sizes: int) -> None:
    for name, (value, least) in sizes.items():
        if value < least:
            raise SinklabInputError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")


def _load(model: str, device, dtype):
    from sinklab.models import load
    from sinklab.progress import status

    with status(f"loading {model}"):
        return load(model, device=device, dtype=dtype)


def _attach_check(prefix, net, model: str, path: Path) -> None:
    made_for = prefix.meta.get("model")
    if made_for and made_for != model:
        raise SinklabInputError(f"--prefix {path} was tuned for {made_for}, not {model}; give --model {made_for}")
    from sinklab.hf import sites

    prefix.ensure_slots(sites(net))  # shapes: refuses a prefix of another model in one line


@prefix_app.command("tune", cls=SinklabCommand)
def tune_command(
    model: str = MODEL,
    n: int = typer.Option(1, "--n", metavar="N", help="Slots per layer and KV head (>= 1)."),
    steps: int = typer.Option(60, metavar="N", help="Adam steps."),
    lr: float = typer.Option(1e-2, metavar="X", help="Learning rate."),
    batch_size: int = typer.Option(1, metavar="N", help="Sequences per step."),
    objective: str = typer.Option("outliers", metavar="NAME", help="outliers, quant or kl (see tune.py)."),
    weight: float = typer.Option(0.1, metavar="X", help="Weight of the outlier / quantization penalty."),
    tune_tokens: int = TUNE_TOKENS,
    tune_seqs: int = TUNE_SEQS,
    init_text: str = typer.Option(
        None, metavar="TEXT", help="Initialise from these tokens' KV (default: the text's first n)."
    ),
    text: list[Path] = TEXT,
    seed: int = typer.Option(0, metavar="N", help="Seed of the batch order."),
    out: Path = out_option("prefix", "prefix.safetensors, tune.json"),
    device: str = DEVICE,
    dtype: str = DTYPE,
) -> None:
    """Tune n prefix slots with the model frozen; write prefix.safetensors and tune.json."""
    from sinklab.cli._app import text_provenance
    from sinklab.data import read_texts
    from sinklab.exploit.prefix import PrefixKV, save_prefix
    from sinklab.exploit.prefix.evaluate import split_corpus
    from sinklab.exploit.prefix.tune import TuneConfig, tune
    from sinklab.progress import Progress
    from sinklab.provenance import run_provenance
    from sinklab.report.files import staged_output

    _check_sizes(
        n=(n, 1), steps=(steps, 1), batch_size=(batch_size, 1), tune_tokens=(tune_tokens, 2), tune_seqs=(tune_seqs, 1)
    )
    config = TuneConfig(steps, lr, batch_size, objective, weight, seed)
    texts = read_texts(text)
    net, tokenizer = _load(model, device, dtype)
    tune_ids, _, split = split_corpus(tokenizer, texts, tune_tokens, tune_seqs, 2, 1)
    if init_text:
        init = tokenizer(init_text, add_special_tokens=False)["input_ids"][:n]
        if len(init) < n:
            raise SinklabInputError(f"--init-text {init_text!r} gives {len(init)} tokens; --n {n} needs {n}")
    else:
        init = tune_ids[0, :n].tolist()
    prefix = PrefixKV.from_tokens(net, init)
    with Progress() as progress:
        task = progress.add_task(f"tuning {n} slot(s)", total=steps)

        def step(_, losses):
            progress.update(task, advance=1, info=f"kl {losses['kl']:.4f} penalty {losses['penalty']:.3f}")

        history = tune(net, prefix, tune_ids, config, progress=step)
    prefix.meta["model"] = model
    record = {
        "model": model,
        "n": n,
        "config": vars(config),
        "init_tokens": tokenizer.convert_ids_to_tokens(init),
        "history": history,
        "split": {k: split[k] for k in ("rule", "stream_tokens", "tune_token_range", "bos_per_sequence", "tune")},
        "provenance": {
            **run_provenance(net, sequences=tune_ids.tolist(), seed=seed),
            "texts": {"source": text_provenance(text)},
        },
    }
    with staged_output(out) as tmp:
        save_prefix(prefix, tmp / "prefix.safetensors")
        (tmp / "tune.json").write_text(json.dumps(record, indent=1) + "\n")
    first, last = history["kl"][0], history["kl"][-1]
    Console().print(f"wrote {out}/prefix.safetensors and tune.json (KL {first:.4f} -> {last:.4f} over {steps} steps)")


@prefix_app.command("apply", cls=SinklabCommand)
def apply_command(
    prompt: str = typer.Argument(..., metavar="PROMPT", help="Text to continue."),
    prefix_file: Path = PREFIX,
    model: str = MODEL,
    max_new_tokens: int = typer.Option(32, metavar="N", help="Tokens to generate."),
    window: int = typer.Option(
        0, metavar="N", help="Stream with a SinkCache of N recent tokens and 0 real sinks (0: off)."
    ),
    device: str = DEVICE,
    dtype: str = DTYPE,
) -> None:
    """Generate greedily after PROMPT with the prefix attached."""
    from sinklab.exploit.prefix import load_prefix

    _check_sizes(max_new_tokens=(max_new_tokens, 1), window=(window, 0))
    if not prompt.strip():
        raise SinklabInputError("PROMPT is empty; give some text to continue")
    prefix = load_prefix(prefix_file)
    net, tokenizer = _load(model, device, dtype)
    _attach_check(prefix, net, model, prefix_file)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(net.device)
    kwargs = {}
    if window:
        from sinklab.exploit.cache import SinkCache
        from sinklab.hf import ModelView

        kwargs[ModelView(net).cache_keyword] = SinkCache(0, window, model=net)
    with prefix(net):
        out = net.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    Console().print(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


@prefix_app.command("eval", cls=SinklabCommand)
def eval_command(
    prefix_file: Path = PREFIX,
    model: str = MODEL,
    eval_tokens: int = typer.Option(1024, metavar="N", help="Tokens per held-out sequence."),
    eval_seqs: int = typer.Option(2, metavar="K", help="Held-out sequences (from the end of the text)."),
    window: int = typer.Option(256, metavar="N", help="Streaming window."),
    keep_first: int = typer.Option(4, metavar="N", help="The keep-first-N baseline's exact keys in int4 KV."),
    tune_tokens: int = TUNE_TOKENS,
    tune_seqs: int = TUNE_SEQS,
    text: list[Path] = TEXT,
    out: Path = out_option("prefix-eval", "eval.json"),
    device: str = DEVICE,
    dtype: str = DTYPE,
) -> None:
    """Measure none, keep-first-N and the prefix on held-out text; write eval.json."""
    from sinklab.cli._app import text_provenance
    from sinklab.data import read_texts
    from sinklab.exploit.prefix import load_prefix
    from sinklab.exploit.prefix.evaluate import keep_first_row, method_row, split_corpus
    from sinklab.progress import Progress
    from sinklab.provenance import run_provenance
    from sinklab.report.files import staged_output

    _check_sizes(eval_tokens=(eval_tokens, 2), eval_seqs=(eval_seqs, 1), window=(window, 1), keep_first=(keep_first, 0))
    prefix = load_prefix(prefix_file)
    texts = read_texts(text)
    net, tokenizer = _load(model, device, dtype)
    _attach_check(prefix, net, model, prefix_file)
    _, eval_ids, split = split_corpus(tokenizer, texts, tune_tokens, tune_seqs, eval_tokens, eval_seqs)
    from sinklab.models import check_token_ids

    check_token_ids(net, eval_ids.tolist())
    with Progress() as progress:
        task = progress.add_task("rows", total=3)
        none = method_row(net, eval_ids, "none", 0, window)
        progress.advance(task)
        rows = [none, keep_first_row(net, eval_ids, none, keep_first)]
        progress.advance(task)
        with prefix(net):
            rows.append(method_row(net, eval_ids, f"prefix-{prefix.n}", prefix.n, window))
        progress.advance(task)
    record = {
        "model": model,
        "prefix": {"file": str(prefix_file), **prefix.meta, "n": prefix.n},
        "rows": rows,
        "window": window,
        "split": split,
        "provenance": {**run_provenance(net, sequences=eval_ids.tolist()), "texts": {"source": text_provenance(text)}},
    }
    with staged_output(out) as tmp:
        (tmp / "eval.json").write_text(json.dumps(record, indent=1) + "\n")
    table = Table(title=f"sinklab prefix eval: {model}, {eval_seqs} x {eval_tokens} held-out tokens")
    columns = ("ppl", "ppl_w8a8", "ppl_kv4", "ppl_stream", "max_abs", "kurtosis", "sink_rate")
    for column in ("method", *columns):
        table.add_column(column)
    for r in rows:
        table.add_row(r["method"], *(f"{r[c]:.4g}" for c in columns))
    Console().print(table)
    Console().print(f"wrote {out}/eval.json")
