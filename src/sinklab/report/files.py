"""All-or-nothing output: a command's files appear together or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sinklab.errors import SinklabInputError


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(out_dir: str | Path) -> Path:
    """Refuse an output directory that cannot be written, before any work: an existing file, a path below a file,
    a place where no directory can be made (probed by making and removing one, which also works as root)."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise SinklabInputError(f"--out {out} is an existing file; give a directory (it may exist)")
    base = _existing_ancestor(out.absolute())
    if not base.is_dir():
        raise SinklabInputError(f"--out {out} lies below {base}, which is a file; give a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sinklab-probe.", dir=base))
    except OSError as exc:
        raise SinklabInputError(
            f"--out {out} cannot be written ({base}: {exc.strerror}); give a writable directory"
        ) from None
    return out


@contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``out_dir``; if the block succeeds, move its files into ``out_dir``.

    A failure anywhere leaves the disk as it was (no half-written report, no new parent directories); the temporary
    directory is always removed.
    """
    out_dir = check_output(out_dir).absolute()
    made = [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # innermost first
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    done = False
    try:
        yield tmp
        out_dir.mkdir(parents=True, exist_ok=True)
        for file in tmp.iterdir():
            file.replace(out_dir / file.name)
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            for parent in made:
                if parent.exists() and not any(parent.iterdir()):
                    parent.rmdir()
