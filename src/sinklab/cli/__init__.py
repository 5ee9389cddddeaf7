"""sinklab's command line: one module per command, all registered on one typer app."""

from sinklab.cli import calibrate, detect, explain, models, scan, stream, train  # noqa: F401  (each registers a command)
from sinklab.cli._app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
