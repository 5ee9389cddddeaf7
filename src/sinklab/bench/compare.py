"""``sinklab bench --compare A.json B.json``: what changed between two runs of one protocol."""

from __future__ import annotations

import json
from pathlib import Path

from sinklab.bench.metrics import COST_KEYS
from sinklab.errors import SinklabInputError


def read_bench(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SinklabInputError(f"--compare {path}: not a readable bench.json ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or "protocol" not in data or "rows" not in data:
        raise SinklabInputError(f"--compare {path}: not a bench.json (no protocol and rows)")
    return data


def compare_runs(a_path: str | Path, b_path: str | Path) -> dict:
    """Per (model, method) present in both, each numeric metric of A and B and B - A (timings excluded), with the
    provenance of the comparison. Refuses two protocols (or corpora) in one line: numbers of different protocols do
    not compare."""
    from sinklab.provenance import run_provenance

    a, b = read_bench(a_path), read_bench(b_path)
    pa, pb = a["protocol"], b["protocol"]
    if pa.get("corpus_sha256") != pb.get("corpus_sha256"):
        ca, cb = pa.get("corpus_sha256"), pb.get("corpus_sha256")
        raise SinklabInputError(
            f"--compare: the corpora differ ({ca} vs {cb}); results of different corpora do not compare"
        )
    if pa.get("hash") != pb.get("hash"):
        raise SinklabInputError(f"--compare: the protocols differ ({pa.get('hash')} vs {pb.get('hash')}); "
                                "results of different protocols do not compare")  # fmt: skip
    index = {(r["model"], r["method"]): r for r in b["rows"] if not r.get("published")}
    changes, same = [], 0
    for ra in a["rows"]:
        rb = index.get((ra["model"], ra["method"]))
        if ra.get("published") or rb is None:
            continue
        for key, va in ra.items():
            vb = rb.get(key)
            if key in COST_KEYS or key == "wall_s" or isinstance(va, bool) or not isinstance(va, int | float):
                continue
            if not isinstance(vb, int | float) or vb == va:
                same += vb == va
                continue
            changes.append({"model": ra["model"], "method": ra["method"], "metric": key, "a": va, "b": vb,
                            "b_minus_a": vb - va})  # fmt: skip

    def keys(x: dict) -> set:
        return {(r["model"], r["method"]) for r in x["rows"]}

    return {
        "protocol": pa["hash"],
        "changed": changes,
        "unchanged": same,
        "only_in_a": sorted(keys(a) - keys(b)),
        "only_in_b": sorted(keys(b) - keys(a)),
        "files": [str(a_path), str(b_path)],
        "provenance": run_provenance(None),
    }
