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
