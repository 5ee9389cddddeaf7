"""sinklab's command line: one module per command, all registered on one typer app.

Importing this package is light: ``main`` (the console entry point) imports torch and the commands itself, so a
Ctrl-C during that start-up is one line and exit code 130 too; ``sinklab.cli.app`` imports them on first use.
"""

import importlib
import sys

COMMANDS = ("adapt", "bench", "calibrate", "detect", "explain", "models", "prefix", "scan", "stream", "train")  # each


def _build_app():
    for name in COMMANDS:
        importlib.import_module(f"sinklab.cli.{name}")
    from sinklab.cli._app import app

    return app


def __getattr__(name: str):
    if name == "app":
        return _build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    try:
        app = _build_app()
    except KeyboardInterrupt:  # during start-up (torch, transformers): the same line as inside a command
        print("sinklab: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    app()


__all__ = ["COMMANDS", "app", "main"]
