"""How a result was made, stored under ``provenance`` in every result file: versions, command line, model identity,
texts or images (with content hashes), BOS mode, dtype, device, seed and the UTC date."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

_COMMAND: ContextVar[tuple[str, str | None] | None] = ContextVar("sinklab_command", default=None)


@contextmanager
def command_line(argv: list[str]):
    """Within this block results record ``argv`` as the command that made them, and the commit the command started
    on (a commit made while it runs does not relabel it; the CLI sets it)."""
    token = _COMMAND.set((" ".join(["sinklab", *argv]), _git_commit()))
    try:
        yield
    finally:
        _COMMAND.reset(token)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), *args], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _git_commit() -> str | None:
    """The commit of the checkout sinklab runs from (an editable install or a source tree), with ``-dirty`` when
    tracked files differ from it; else ``$SINKLAB_COMMIT`` (a copy of the tree without its .git, such as a device
    run's, says its commit there), else None."""
    lines = (_git("rev-parse", "--show-toplevel", "--short", "HEAD") or "").split()
    if len(lines) == 2:
        top, commit = lines
        if (Path(top) / "src" / "sinklab" / Path(__file__).name).resolve() == Path(__file__).resolve():
            return commit + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")
    return os.environ.get("SINKLAB_COMMIT") or None  # not a checkout of sinklab (or another repository's)


def digest(data: object) -> str:
    """sha256 (first 16 hex digits) of a numpy array's bytes, or of token ids, texts or any JSON-able value."""
    blob = data.tobytes() if hasattr(data, "tobytes") else json.dumps(data, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _model_part(model) -> dict:
    from sinklab.models import model_source

    if model is None:
        return {}
    name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    param = next(model.parameters(), None)
    out = {
        **model_source(name),
        "class": type(model).__name__,
        "dtype": None if param is None else str(param.dtype).removeprefix("torch."),
        "device": None if param is None else str(param.device),
    }
    placed = getattr(model, "hf_device_map", None)  # accelerate's placement (from_pretrained(device_map=...))
    if placed:
        out["device_map"] = {name: str(device) for name, device in placed.items()}
        out["device"] = ",".join(dict.fromkeys(out["device_map"].values()))
    return out


def run_provenance(
    model=None,
    *,
    sequences: list[list[int]] | None = None,
    texts: str | list | dict | None = None,
    bos: str | None = None,
    seed: int | None = None,
    images: dict | None = None,
) -> dict:
    """A JSON-able record of how a result was made.

    ``model``: the model (its source and file hash, dtype and device are read from it);
    ``sequences``: the token ids measured (hashed); ``texts``: where they came from (file names, "embedded corpus");
    ``images``: the images measured (``image_record``).
    """
    from sinklab import __version__

    command, commit = _COMMAND.get() or (f"python api ({Path(sys.argv[0]).name or 'interactive'})", _git_commit())
    out = {
        "sinklab": __version__,  # the code that runs, whatever an install's metadata says
        "sinklab_commit": commit,
        "transformers": _version("transformers"),
        "torch": _version("torch"),
        "python": platform.python_version(),
        "command": command,
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": _model_part(model),
        "bos": bos,
        "seed": seed,
    }
    if texts is not None or sequences is not None:
        out["texts"] = {"source": texts if texts is not None else "token ids"}
        if sequences is not None:
            out["texts"].update(
                sequences=len(sequences), tokens=sum(map(len, sequences)), token_ids_sha256=digest(sequences)
            )
    if images is not None:
        out["images"] = images
    return out


def image_record(items, pixels, preprocessing: str) -> dict:
    """The images of a scan: each one's file (path, size, content hash) or, in memory, its pixels' hash, with its
    width x height; the hash of the pixel values the model saw and how they were made. ``items``: objects with
    ``name``, ``path`` (None in memory) and a PIL ``image`` (``sinklab.data.images.ImageItem``), or None when the
    caller gave pixel values."""
    import numpy as np

    sources = []
    for item in items or ():
        source = {"name": item.name, "width": item.image.width, "height": item.image.height}
        if item.path is not None:
            data = Path(item.path).read_bytes()
            source.update(path=str(item.path), bytes=len(data), sha256=hashlib.sha256(data).hexdigest()[:16])
        else:
            source["pixels_sha256"] = digest(np.asarray(item.image))
        sources.append(source)
    return {
        "source": sources or "pixel values",
        "count": int(pixels.shape[0]),
        "pixel_values_sha256": digest(pixels.detach().cpu().float().contiguous().numpy()),
        "preprocessing": preprocessing,
    }


def describe_texts(texts_or_ids) -> str:
    """Where the texts of an API call came from; the token ids' hash pins their content."""
    if texts_or_ids is None:
        return f"embedded corpus (pydoc_data.topics of Python {platform.python_version()})"
    if isinstance(texts_or_ids, str):
        return "1 string"
    if isinstance(texts_or_ids, list | tuple) and texts_or_ids and all(isinstance(x, str) for x in texts_or_ids):
        return f"{len(texts_or_ids)} strings"
    return "token ids"


def file_sources(paths) -> list[dict]:
    """Each text file read (as ``sinklab.data.read_texts`` reads them): path, size and content hash."""
    from sinklab.data.corpus import text_files

    return [
        {"path": str(f), "bytes": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()[:16]}
        for f in text_files(paths)
    ]
