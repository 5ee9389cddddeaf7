"""Comparison helpers for checking a fast path against its naive twin, and the bad-input contract of the CLI (used by
sinklab's tests, usable by yours).

Tolerances (shared/DESIGN.md), relative error ||a - b|| / ||b||: float64 1e-10, float32 1e-5, bf16/fp16 1e-2.
NaN never passes.
"""

from __future__ import annotations

from pathlib import Path

import torch

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64; inf if either holds NaN; 0 for two zero tensors."""
    a, b = actual.detach().double(), expected.detach().double()
    if torch.isnan(a).any() or torch.isnan(b).any():
        return float("inf")
    num, den = (a - b).norm().item(), b.norm().item()
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, name: str = ""
) -> None:
    """Assert the relative error is within the tolerance of ``dtype`` (default: ``actual``'s dtype)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    tol = TOLERANCE[dtype or actual.dtype]
    err = rel_err(actual, expected)
    assert err <= tol, f"{name}: relative error {err:.3g} > {tol:g}"


def _numbers(record: object, path: str = "") -> list[tuple[str, object]]:
    """Every leaf of a nested JSON-like record as (path, value)."""
    if isinstance(record, dict):
        return [n for k, v in record.items() for n in _numbers(v, f"{path}.{k}")]
    if isinstance(record, list):
        return [n for i, v in enumerate(record) for n in _numbers(v, f"{path}[{i}]")]
    return [(path, record)]


def assert_same_record(
    actual: dict, expected: dict, rtol: float = TOLERANCE[torch.float32], quantum: float = 0.0
) -> None:
    """Two records (a ``to_dict()``, a parsed JSON) have the same keys and leaves: floats within ``rtol`` of
    max(1, |expected|) plus ``quantum`` (NaN equals NaN there), everything else (flags, counts, names, indices) exactly
    equal. ``quantum``: the rounding step of records whose floats were rounded (two values within ``rtol`` can round
    one step apart)."""
    a, b = _numbers(actual), _numbers(expected)
    assert [p for p, _ in a] == [p for p, _ in b], "the records differ in their keys"
    for (path, x), (_, y) in zip(a, b, strict=True):
        if isinstance(x, float) and isinstance(y, float):
            assert abs(x - y) <= rtol * max(1.0, abs(y)) + quantum or (x != x and y != y), f"{path}: {x!r} != {y!r}"
        else:
            assert x == y, f"{path}: {x!r} != {y!r}"


def assert_refused(args: list[str], message: str, *watched: Path) -> None:
    """The bad-input contract for one CLI call: exit 2, one stderr line ``sinklab: error: ...`` containing
    ``message``, no traceback, and nothing new under the ``watched`` directories."""
    from typer.testing import CliRunner

    from sinklab.cli import app

    def listing() -> set[str]:
        return {str(p) for d in watched for p in Path(d).rglob("*")}

    before = listing()
    result = CliRunner().invoke(app, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("sinklab: error: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert listing() == before  # nothing left behind
