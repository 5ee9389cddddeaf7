"""The typer app and the contract every command shares.

Bad input (a ``SinklabInputError``, a usage error, a typo flag): one line on stderr, exit code 2, nothing written.
Ctrl-C at any moment: one line, exit code 130. ``-h``/``--help`` everywhere, ``--version``, flags without a
``<bool>`` placeholder, renamed options kept as hidden aliases, outputs under ``sinklab-out/<command>`` by default,
the device defaulting to CUDA if available, else CPU.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

from sinklab.errors import SinklabInputError, check_fraction

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

# old option name -> current name, accepted by every command that has the current one (hidden from --help)
RENAMED = {"--tokens": "--max-tokens", "--num-sinks": "--sinks"}


INTERRUPTED = 130  # the shell's code for SIGINT


def error_line(message: str) -> str:
    """The one line a user error prints."""
    return "sinklab: error: " + " ".join(str(message).split())


# type names (typer's bare_type, or click's type.name before typer 0.20) -> the placeholder shown in --help
METAVARS = {"int": "N", "integer": "N", "float": "X", "str": "TEXT", "text": "TEXT", "Path": "PATH", "path": "PATH"}
METAVARS["list[Path]"] = "FILE"  # a repeatable --text


def _clean_metavars(params: list) -> list:
    """Flags show no placeholder (`--help`, not `--help <bool>`); values a plain one (N, X, TEXT, PATH)."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.metavar is None:
            name = param.bare_type() if hasattr(param, "bare_type") else param.type.name
            param.metavar = METAVARS.get(name, name.upper())
    return params


class SinklabCommand(TyperCommand):
    """A command whose flags show no value placeholder and which accepts the old option names in ``RENAMED``."""

    def get_params(self, ctx):
        return _clean_metavars(super().get_params(ctx))

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        names = {opt for param in self.params for opt in param.opts}
        renamed = []
        for arg in args:
            old, eq, value = arg.partition("=")
            new = RENAMED.get(old)
            renamed.append(new + eq + value if new in names else arg)
        return super().parse_args(ctx, renamed)


class SinklabGroup(TyperGroup):
    """The ``sinklab`` group: turns user errors and Ctrl-C into one line and an exit code, records the command."""

    def get_params(self, ctx):
        return _clean_metavars(super().get_params(ctx))

    def main(self, args=None, prog_name=None, **extra):
        from sinklab.provenance import command_line

        standalone = extra.pop("standalone_mode", True)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            with command_line(argv):
                code = super().main(argv, prog_name or "sinklab", standalone_mode=False, **extra)
        except SinklabInputError as exc:
            code = _say(error_line(exc), 2)
        except ClickException as exc:  # usage errors: unknown option, bad value, missing argument
            message = exc.format_message().strip()  # empty after `sinklab` alone: its help is already shown
            code = _say(error_line(message), exc.exit_code) if message else exc.exit_code
        except (KeyboardInterrupt, typer.Abort):
            code = INTERRUPTED
        code = code if isinstance(code, int) else 0
        if code == INTERRUPTED:  # typer turns Ctrl-C inside a command into this code, silently
            _say("sinklab: interrupted", code)
        if standalone:
            sys.exit(code)
        return code


def _say(line: str, code: int) -> int:
    print(line, file=sys.stderr, flush=True)
    return code


app = typer.Typer(
    name="sinklab",
    cls=SinklabGroup,
    help="Attention sinks in Transformers: measure, exploit and remove them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def command(name: str | None = None, **kwargs) -> Callable:
    """Register a CLI command on the sinklab app."""
    return app.command(name=name, cls=SinklabCommand, **kwargs)


def _version(value: bool) -> None:
    if value:
        from sinklab import __version__

        print(f"sinklab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Attention sinks in Transformers: measure, exploit and remove them."""


def _device(value: str | None) -> str:
    from sinklab.models import resolve_device

    return str(resolve_device(value))


def _out(value: Path) -> Path:
    from sinklab.report.files import check_output

    check_output(value)
    return value


def out_option(command_name: str, what: str) -> Path:
    """``--out DIR`` checked before any work, default ``sinklab-out/<command>``."""
    return typer.Option(
        Path("sinklab-out") / command_name, metavar="DIR", callback=_out, help=f"Output directory: {what}."
    )


# options shared by the commands that read a model and texts
MODEL = typer.Option(
    "smollm2-135m", metavar="NAME", help="Embedded name (see `sinklab models`), local dir, .gguf or hub id."
)
TEXT = typer.Option(None, metavar="FILE", help="Text file, directory or .jsonl (repeatable); default: embedded corpus.")
MAX_TOKENS = typer.Option(512, metavar="N", help="Tokens per sequence.")
NUM_TEXTS = typer.Option(4, metavar="K", help="Number of sequences.")
EPS = typer.Option(0.3, metavar="X", help="Gu et al.'s threshold for Sink_1^eps, in (0, 1).")
DEVICE = typer.Option(
    None, metavar="DEVICE", callback=_device, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)."
)
DTYPE = typer.Option(None, metavar="DTYPE", help="float32 (default), bfloat16, float16.")
BOS = typer.Option("auto", metavar="MODE", help="auto (tokenizer default), always, never: sinks depend on it.")


def check_text_options(eps: float, max_tokens: int, num_texts: int, bos: str, min_tokens: int = 2) -> None:
    """Validate the shared options before anything slow happens."""
    check_fraction("--eps", eps)
    if max_tokens < min_tokens or num_texts < 1:
        raise SinklabInputError(
            f"--max-tokens must be >= {min_tokens} and --num-texts >= 1, got {max_tokens} and {num_texts}"
        )
    if bos not in ("auto", "always", "never"):
        raise SinklabInputError(f"unknown --bos {bos!r}; accepted: auto, always, never")


def model_and_sequences(
    model: str, text: list[Path] | None, max_tokens: int, num_texts: int, bos: str, device, dtype, **placement
):
    """Read the texts (before the slow load), load the model, then cut exactly ``num_texts`` sequences of
    ``max_tokens`` tokens or refuse with the numbers the texts give. Returns (model, tokenizer, sequences).
    ``placement``: ``device_map``, ``max_memory``, ``offload_folder`` for ``sinklab.load`` (then ``device`` None)."""
    from sinklab.data import read_texts, token_sequences
    from sinklab.models import load
    from sinklab.progress import status

    texts = read_texts(text)
    with status(f"loading {model}"):
        net, tokenizer = load(model, device=device, dtype=dtype, **placement)
    return net, tokenizer, token_sequences(tokenizer, texts, max_tokens, num_texts, bos, exact=True)


def text_provenance(text: list[Path] | None):
    """The ``texts`` source of a CLI run: each file's name, size and hash, or the embedded corpus."""
    from sinklab.provenance import describe_texts, file_sources

    return file_sources(text) if text else describe_texts(None)


def skipped_line(skipped: list[dict]) -> str:
    """The layers a measurement skipped and why: 'skipped layers 0, 1, 2 (linear_attention): no softmax attention'."""
    kinds = sorted({s["type"] for s in skipped})
    layers = ", ".join(str(s["layer"]) for s in skipped)
    return f"skipped layers {layers} ({', '.join(kinds)}): no softmax attention to measure"
