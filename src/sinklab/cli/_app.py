"""The typer app and the error contract shared by every command: bad input -> one line on stderr, exit 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import typer

from sinklab.errors import SinklabInputError

app = typer.Typer(
    name="sinklab",
    help="Attention sinks in Transformers: measure, exploit and remove them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def fail(message: str) -> None:
    """Print one line naming what is wrong and what is accepted, then exit with code 2."""
    print(f"sinklab: error: {message}", file=sys.stderr)
    raise typer.Exit(code=2)


def command(name: str | None = None, **kwargs) -> Callable:
    """Register a CLI command whose ``SinklabInputError`` becomes a one-line message and exit code 2."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapped(*args, **kw):
            try:
                return fn(*args, **kw)
            except SinklabInputError as exc:
                fail(str(exc))

        return app.command(name=name, **kwargs)(wrapped)

    return decorate


@app.callback()
def _root() -> None:
    """Attention sinks in Transformers: measure, exploit and remove them."""


# options shared by the commands that read a model and texts (scan, explain)
MODEL = typer.Option("smollm2-135m", help="Embedded name (see `sinklab models`), local dir, .gguf or hub id.")
TEXT = typer.Option(None, help="Text file, directory or .jsonl (repeatable); default: embedded corpus.")
MAX_TOKENS = typer.Option(512, help="Tokens per sequence.")
NUM_TEXTS = typer.Option(4, help="Number of sequences.")
EPS = typer.Option(0.3, help="Gu et al.'s threshold for Sink_1^eps, in (0, 1).")
DEVICE = typer.Option(None, help="cpu, cuda, cuda:1, ... (default cpu).")
DTYPE = typer.Option(None, help="float32 (default), bfloat16, float16.")
BOS = typer.Option("auto", help="auto (tokenizer default), always, never: sinks depend on it.")


def check_text_options(eps: float, max_tokens: int, num_texts: int, bos: str, min_tokens: int = 2) -> None:
    """Validate the shared options before anything slow happens."""
    if not 0.0 < eps < 1.0:
        raise SinklabInputError(f"--eps must lie in (0, 1), got {eps}")
    if max_tokens < min_tokens or num_texts < 1:
        raise SinklabInputError(
            f"--max-tokens must be >= {min_tokens} and --num-texts >= 1, got {max_tokens} and {num_texts}"
        )
    if bos not in ("auto", "always", "never"):
        raise SinklabInputError(f"unknown --bos {bos!r}; accepted: auto, always, never")
