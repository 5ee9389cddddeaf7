"""`sinklab stream` (endless generation at constant memory) and `sinklab eval-stream` (perplexity by cache policy)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from sinklab.cli._app import DEVICE, DTYPE, command, out_option, text_provenance
from sinklab.errors import SinklabInputError
from sinklab.report.files import staged_output


def _status(cache, produced: int, seconds: float, text: str):
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    rate = produced / seconds if seconds > 0 else 0.0
    line = (
        f"{produced} tokens · {rate:.1f} tokens/s · cache {cache.cache_size()} tokens "
        f"({cache.nbytes() / 2**20:.1f} MB, constant) · seen {cache.get_seq_length()}"
    )
    return Group(Panel(Text(text[-1500:]), title="stream"), Text(line, style="bold"))


def _run_stream(model, tokenizer, cache, prompt: str, max_new: int | None, temperature: float, eos, seed: int, console):
    import torch
    from rich.live import Live

    from sinklab.exploit.stream import stream_tokens

    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
    gen = torch.Generator().manual_seed(seed)
    tokens: list[int] = []
    start = time.perf_counter()
    text = ""
    with Live(_status(cache, 0, 0.0, ""), console=console, transient=True, refresh_per_second=4) as live:
        try:
            for token in stream_tokens(model, cache, ids, max_new, temperature, eos_ids=eos, generator=gen):
                tokens.append(token)
                if len(tokens) % 4 == 0:
                    text = tokenizer.decode(tokens, skip_special_tokens=True)
                    live.update(_status(cache, len(tokens), time.perf_counter() - start, text))
        except KeyboardInterrupt:
            pass
    seconds = time.perf_counter() - start
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    print(text, flush=True)
    console.print(
        f"[bold]{len(tokens)} tokens in {seconds:.1f} s ({len(tokens) / max(seconds, 1e-9):.1f} tokens/s); "
        f"cache {cache.cache_size()} tokens, {cache.nbytes() / 2**20:.1f} MB; {cache.get_seq_length()} seen"
    )


@command("stream")
def stream_command(
    model: str = typer.Option("smollm2-135m", help="embedded name, local path, .gguf file or hub id"),
    prompt: str = typer.Option(None, help="text to start the stream from"),
    interactive: bool = typer.Option(False, help="read one prompt per line from stdin until EOF"),
    sinks: int = typer.Option(4, help="number of first tokens kept (attention sinks)"),
    window: int = typer.Option(1020, help="recent tokens kept besides the current one (StreamingLLM's convention)"),
    positions: str = typer.Option("cache", help="cache (StreamingLLM) or absolute"),
    max_new_tokens: int = typer.Option(256, help="tokens per prompt; 0 streams until EOS or Ctrl-C"),
    temperature: float = typer.Option(0.7, help="sampling temperature; 0 for greedy"),
    ignore_eos: bool = typer.Option(False, help="keep streaming past end-of-sequence tokens"),
    seed: int = typer.Option(0, help="sampling seed"),
    device: str = DEVICE,
    dtype: str = DTYPE,
) -> None:
    """Generate for ever at constant memory with a sink cache; shows tokens/s and cache size live."""
    from rich.console import Console

    from sinklab.exploit.cache import SinkCache
    from sinklab.models import load

    if prompt is None and not interactive:
        raise SinklabInputError("give --prompt TEXT or --interactive")
    if prompt is not None and interactive:
        raise SinklabInputError("give either --prompt or --interactive, not both")
    if max_new_tokens < 0:
        raise SinklabInputError(f"--max-new-tokens must be >= 0 (0 = until EOS or Ctrl-C), got {max_new_tokens}")
    if not temperature >= 0:
        raise SinklabInputError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    SinkCache(sinks, window, "absolute")  # validates sizes and positions before the slow model load
    if positions not in ("cache", "absolute"):
        raise SinklabInputError(f"unknown --positions {positions!r}; accepted: cache, absolute")
    console = Console(stderr=True)
    net, tokenizer = load(model, device=device, dtype=dtype)
    cache = SinkCache(sinks, window, positions, model=net)
    eos = set() if ignore_eos else {t for t in (tokenizer.eos_token_id,) if t is not None}
    limit = max_new_tokens or None
    if not interactive:
        _run_stream(net, tokenizer, cache, prompt, limit, temperature, eos, seed, console)
        return
    for turn, line in enumerate(sys.stdin or ()):  # no stdin (CI): nothing to answer, exit cleanly
        if line.strip():
            _run_stream(net, tokenizer, cache, line.rstrip("\n") + "\n", limit, temperature, eos, seed + turn, console)


def _token_ids(tokenizer, texts: list[str], num_tokens: int):
    import torch

    ids = tokenizer("\n\n".join(texts), add_special_tokens=True)["input_ids"]
    if len(ids) < num_tokens:
        raise SinklabInputError(
            f"the text has {len(ids)} tokens, fewer than --max-tokens {num_tokens}; give a longer text or lower "
            "--max-tokens"
        )
    return torch.tensor([ids[:num_tokens]])


@command("eval-stream")
def eval_stream_command(
    model: str = typer.Option("smollm2-135m", help="embedded name, local path, .gguf file or hub id"),
    text: list[Path] = typer.Option(None, help="text file(s); default: the embedded corpus"),
    tokens: int = typer.Option(4096, "--max-tokens", help="tokens of text to stream"),
    window: int = typer.Option(256, help="recent tokens kept besides the current one (StreamingLLM's convention)"),
    sinks: int = typer.Option(4, help="number of sink tokens kept"),
    policies: str = typer.Option(
        "dense,window,sink,recompute",
        help="comma list of: dense, window, sink, recompute, int8, int8-sinks, int4, int4-sinks, knorm, h2o "
        "(accumulated attention), h2o-norm (attention per query that could attend)",
    ),
    sweep: str = typer.Option(
        "", help="number-of-sinks sweep at a fixed cache size, e.g. 0,1,2,4,8 (StreamingLLM Table 2); off by default"
    ),
    exact_decode: bool = typer.Option(
        False,
        "--exact-decode",
        help="decode dense/window/sink token by token instead of the exact parallel evaluator (same ppl, ~100x slower)",
    ),
    evict: str = typer.Option(
        "after",
        help="after: a token sees sinks + window + itself (StreamingLLM's eval, attention_sinks); before: sinks + "
        "window keys, itself included (one key fewer)",
    ),
    recompute_points: int = typer.Option(48, help="positions at which the recompute policy is measured"),
    chunk: int = typer.Option(
        1,
        help="tokens per forward call of the token-by-token policies (int*, knorm, h2o*, --exact-decode): 1 = "
        "token by token; C > 1 is faster, exact for dense and quantized caches, and changes what sink/window caches "
        "keep and when presses evict",
    ),
    out: Path = out_option("eval-stream", "stream.json and plots"),
    device: str = DEVICE,
    dtype: str = DTYPE,
) -> None:
    """Perplexity over a long text for each KV-cache policy, peak memory and tokens/s; plots and a sinks sweep."""
    from rich.console import Console
    from rich.table import Table

    from sinklab.data import read_texts
    from sinklab.exploit.stream import check_stream_args, eval_stream, parse_policies, parse_sweep
    from sinklab.models import load
    from sinklab.progress import Progress
    from sinklab.provenance import run_provenance
    from sinklab.report.stream import stream_plots

    names = parse_policies(policies)
    sweep_sinks = parse_sweep(sweep)
    check_stream_args(tokens, sinks, window, chunk, evict)
    if recompute_points < 1:
        raise SinklabInputError(f"--recompute-points must be >= 1, got {recompute_points}")
    texts = read_texts(text)
    net, tokenizer = load(model, device=device, dtype=dtype)
    ids = _token_ids(tokenizer, texts, tokens).to(net.device)
    with Progress() as progress:
        result = eval_stream(
            net,
            ids,
            names,
            sinks,
            window,
            sweep=sweep_sinks,
            recompute_points=recompute_points,
            chunk=chunk,
            progress=progress,
            exact_decode=exact_decode,
            evict=evict,
        )
    record = {
        "command": " ".join(["sinklab", *sys.argv[1:]]),
        "provenance": run_provenance(net, sequences=ids.tolist(), texts=text_provenance(text)),
        "model": model,
        "tokens": tokens,
        "sinks": sinks,
        "window": window,
        "evict": evict,
        "exact_decode": exact_decode,
        "chunk": chunk,
        "text": [str(p) for p in text] if text else "embedded corpus (pydoc_data.topics)",
        "policies": result["policies"],
        **({"sweep": result["sweep"]} if "sweep" in result else {}),
        "note": (
            f"window convention evict={evict} (after: a token sees sinks + window + itself); scored: parallel = exact "
            "parallel evaluator, token by token = decoding; peak_mem_mb: bytes of KV state the cache holds "
            "(parallel: computed); tokens_per_s: text tokens per second of wall time (shared CPU: compare policies "
            "within one run)"
        ),
    }
    with staged_output(out) as tmp:
        (tmp / "stream.json").write_text(json.dumps(record, indent=2))
        stream_plots(result, tmp, sinks, window)
    table = Table(title=f"eval-stream {model}: {tokens} tokens, {sinks} sinks + window {window} (evict {evict})")
    for col in ("policy", "ppl", "ppl after window", "peak MB", "tokens/s", "scored"):
        table.add_column(col)
    for name, row in record["policies"].items():
        table.add_row(
            name,
            f"{row['ppl']:.2f}",
            f"{row['ppl_after_window']:.2f}",
            f"{row['peak_mem_mb']:.1f}",
            f"{row['tokens_per_s']:.1f}",
            row["scored"],
        )
    Console().print(table)
    written = [out / "stream.json", out / "ppl_vs_position.png"]
    if "sweep" in record:
        by_k = ", ".join(f"{k}: {v:.2f}" for k, v in record["sweep"]["ppl_by_num_sinks"].items())
        Console().print(f"ppl by number of sinks (cache size {sinks + window} fixed): {by_k}")
        written.append(out / "sinks_sweep.png")
    Console().print(f"wrote {', '.join(map(str, written))}")
