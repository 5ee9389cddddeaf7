"""benchmarks/sink_probe.py on the embedded smollm2-135m: the four probes of sinklab train, on a corpus built with
the model's own tokenizer (document starts and windows, with and without BOS), and Gu et al.'s probe placed as up to
0.2.1; each with the sources it comes from."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from sinklab.data.train_corpus import build_corpus

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("smollm2")]

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def test_sink_probe_scans_the_probes_and_their_sources(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(480):  # about a quarter is held out: more than the 100 documents the gu60m preset measures
        (docs / f"doc{i:03d}.txt").write_text(f"Document {i}. " + " ".join(f"word{i}x{j}" for j in range(40)))
    build_corpus(tmp_path / "corpus", packages=[], extra=[docs], tokenizer="smollm2-135m", heldout=0.25)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    probe = importlib.import_module("sink_probe")
    record = probe.main(["--corpus", str(tmp_path / "corpus"), "--out", str(tmp_path / "probe.json")])
    assert json.loads((tmp_path / "probe.json").read_text())["rows"] == record["rows"]
    assert [(r["windows"], r["bos"], r["placement"]) for r in record["rows"]] == [
        ("stream", "never", "spread"), ("stream", "always", "spread"), ("documents", "never", "spread"),
        ("documents", "always", "spread"), ("documents", "never", "first"),
    ]  # fmt: skip
    for row in record["rows"]:
        assert row["model"] == "smollm2-135m" and row["sequences"] == 100
        assert sum(row["composition"]["counts"].values()) == 100 and row["sources"] <= row["composition"]["of"]
        assert 0.3 < row["sink_rate"] <= 1 and 0 <= row["sink_rate_of_mean"] <= 1
        groups = row["groups_of_4"]
        assert groups["n"] == 25 and groups["mean"] == pytest.approx(row["sink_rate"], abs=1e-9)  # disjoint, equal
        assert groups["min"] <= row["first_4"] <= groups["max"]
    assert record["provenance"]["sinklab"] and record["corpus"]["tokenizer"] == "smollm2-135m"
    assert set(record["validation_windows"]) == {"spread", "first"}
