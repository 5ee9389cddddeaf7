"""All-or-nothing output: a command's files appear together or not at all."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``out_dir``; if the block succeeds, move its files into ``out_dir``.

    A failure anywhere leaves ``out_dir`` as it was (no half-written report); the temporary directory is always
    removed.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        out_dir.mkdir(parents=True, exist_ok=True)
        for file in tmp.iterdir():
            file.replace(out_dir / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
