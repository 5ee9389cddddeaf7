"""Every Triton kernel under Triton's interpreter on the CPU, against the variants' naive definitions.

``TRITON_INTERPRET=1`` must be set before triton is imported, so the kernels run in one subprocess (this file
with ``--worker``) that prints one JSON line per case; the tests below assert on those lines. Small shapes
(T <= 45, D 16/32) with 16 x 16 tiles, so every block kind (masked edges, unmasked interior, GQA heads, padded
rows with no key) is exercised. float32 must match to 1e-5 and float16 to 1e-2 (bfloat16 is not supported by
the interpreter's numpy backend; it runs natively in tests/gpu). Skipped when triton is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
CASES_DIR = HERE.parents[1] / "gpu"  # kernel_cases.py, shared with the native GPU tests

# (name, dtype, kwargs of make_case)
SHAPES = [
    ("causal-gqa-pad-fp32", "float32", dict(T=37, S=45, D=16, causal=True, pad=True)),
    ("window-fp16-defaults", "float16", dict(B=1, T=33, S=33, D=32, causal=False, window=9, Hkv=4, defaults=True)),
]
VARIANTS = ("softmax", "softmax1", "sink", "kv_bias", "softpick", "clipped", "sigmoid")
TOL = {"float32": 1e-5, "float16": 1e-2}


def _worker() -> None:
    import torch

    sys.path.insert(0, str(CASES_DIR))
    import kernel_cases

    torch.manual_seed(0)
    for name, dtype, kw in SHAPES:
        for variant in VARIANTS:
            case = kernel_cases.make_case(variant, dtype=getattr(torch, dtype), **kw)
            errs = kernel_cases.check(variant, case)
            print(json.dumps({"case": f"{variant}/{name}", "dtype": dtype, "errors": errs}), flush=True)
        case = kernel_cases.make_case("softmax", dtype=getattr(torch, dtype), **kw)
        err = kernel_cases.check_colsum(case)
        print(json.dumps({"case": f"colsum/{name}", "dtype": dtype, "errors": {"colsum": err}}), flush=True)


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(HERE), "--worker"], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["case"]: r for r in lines}


@pytest.mark.xdist_group("triton_interpret")
@pytest.mark.parametrize("shape", [s[0] for s in SHAPES])
@pytest.mark.parametrize("variant", [*VARIANTS, "colsum"])
def test_kernel_matches_naive(results, variant, shape):
    r = results[f"{variant}/{shape}"]
    tol = TOL[r["dtype"]]
    bad = {k: e for k, e in r["errors"].items() if math.isnan(e) or e > tol}
    assert not bad, f"{variant}/{shape}: relative errors above {tol}: {bad}"


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker()
