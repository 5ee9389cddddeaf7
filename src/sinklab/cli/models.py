"""`sinklab models`: the embedded models, their size, whether they are installed and how to get them."""

from rich.console import Console
from rich.table import Table

from sinklab.cli._app import command


@command("models")
def models_command() -> None:
    """List the embedded and tiny test models with size, status and install command."""
    from sinklab.models import model_status

    table = Table(title="sinklab models")
    for col in ("name", "params", "architecture", "status", "install"):
        table.add_column(col, overflow="fold")
    for row in model_status():
        table.add_row(row["name"], row["params"], row["architecture"], row["status"], row["install"])
    Console().print(table)
    Console().print("Any HF hub id, local directory or .gguf file also works with --model.")
