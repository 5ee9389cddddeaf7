"""sinklab's command line: one module per command, all registered on one typer app."""

import sinklab.cli.explain  # registers `sinklab explain`
import sinklab.cli.stream  # registers `sinklab stream` and `sinklab eval-stream`
import sinklab.cli.train  # noqa: F401
from sinklab.cli import models, scan  # noqa: F401  (each import registers its command)
from sinklab.cli._app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
