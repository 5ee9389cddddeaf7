"""Run the protocol: one row per model x method (x factorial cell), each saved as it finishes (``--resume``)."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from sinklab.bench import metrics
from sinklab.bench.methods import (
    NOT_IN_STREAM,
    Design,
    MethodSpec,
    applied,
    build,
    cell_label,
    cells,
    make_prefix,
)
from sinklab.bench.protocol import Protocol, protocol_hash
from sinklab.errors import SinklabInputError

PARTS_DIR = "parts"


def _part_file(out_dir: Path, model_name: str, label: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", f"{model_name}__{label}")
    return out_dir / PARTS_DIR / f"{safe}.json"


def load_part(path: Path, protocol: Protocol) -> dict | None:
    """A finished row of this protocol, or None; a row of another protocol is refused (one line)."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("protocol_hash") != protocol_hash(protocol):
        raise SinklabInputError(
            f"{path.parent.parent} holds rows of protocol {data.get('protocol_hash')}, this run is "
            f"{protocol_hash(protocol)}; use another --out or the same settings"
        )
    return data["row"]


def _save_part(path: Path, protocol: Protocol, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"protocol_hash": protocol_hash(protocol), "row": row}, indent=1))
    tmp.replace(path)


def max_length(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def _lengths(model, lengths) -> list[int]:
    limit = max_length(model)
    return [n for n in lengths if limit is None or n <= limit]


def plain_row(model, tokenizer, protocol: Protocol, causal: bool, seqs: metrics.Sequences | None = None) -> dict:
    """The model as it is: every metric at every protocol length it can take."""
    from sinklab.exploit.stream import kv_bytes

    seqs = seqs or metrics.Sequences(tokenizer, protocol)
    row = metrics.gu_metrics(model, tokenizer, protocol, seqs, causal=causal)
    lengths = _lengths(model, protocol.lengths)
    if not lengths:
        raise SinklabInputError(f"the protocol's lengths {protocol.lengths} exceed the model's {max_length(model)}")
    for length in lengths:
        if causal:
            row.update(metrics.quality_metrics(model, seqs(length), protocol))
        else:
            row.update(metrics.encoder_metrics(model, tokenizer, protocol, seqs(length)))
    if causal:
        row.update(metrics.passkey_metrics(model, tokenizer, protocol))
        row["kv_cache_bytes"] = kv_bytes(model, protocol.method_lengths[0])
    row.update(metrics.cost_metrics(model, seqs(lengths[0])))
    return row


def model_row(model, tokenizer, protocol: Protocol, spec: MethodSpec, method, seqs: metrics.Sequences) -> dict:
    """A method that changes the forward, attached for every metric."""
    with applied(model, [method]):
        row = metrics.gu_metrics(model, tokenizer, protocol, seqs, prepends=spec.name == "prefix")
        for length in protocol.method_lengths:
            row.update(metrics.quality_metrics(model, seqs(length), protocol, streaming=spec.name not in NOT_IN_STREAM))
        row.update(metrics.passkey_metrics(model, tokenizer, protocol))
        row.update(metrics.cost_metrics(model, seqs(protocol.method_lengths[0])))
    if spec.name in NOT_IN_STREAM:
        row["note"] = "streaming not measured: StreamAttention does not run attn.weights hooks"
    return row


def factorial_effects(rows: list[dict], factors: tuple[str, ...], key: str) -> dict:
    """Main effects and interactions of the factors on log perplexity (2^k design, Yates): for a set S of factors,
    effect_S = 2 / 2^k * sum over cells of prod_{f in S} (+1 on, -1 off) * log ppl. Positive = raises ppl."""
    k = len(factors)
    out = {}
    for size in range(1, k + 1):
        for subset in itertools.combinations(factors, size):
            total = 0.0
            for row in rows:
                sign = math.prod(1 if row["factors"][f] else -1 for f in subset)
                total += sign * math.log(row[key])
            out["x".join(subset)] = 2 * total / 2**k
    return out


def run_model(
    name: str,
    specs: list[MethodSpec],
    designs: list[Design],
    protocol: Protocol,
    out_dir: Path,
    device=None,
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[dict], dict]:
    """Every row of one model (plain, each method, each cell of each factorial design). Returns (rows, the model's
    record)."""
    from sinklab.measure.scanner import is_causal
    from sinklab.models import load
    from sinklab.provenance import run_provenance

    tell = progress or (lambda _: None)
    model, tokenizer = load(name, device=device, dtype=protocol.dtype)
    causal = is_causal(model)
    record = {"provenance": run_provenance(model, texts=protocol.corpus, bos=protocol.bos, seed=protocol.seeds[0]),
              "causal": causal, "max_positions": max_length(model)}  # fmt: skip
    seqs = metrics.Sequences(tokenizer, protocol)
    todo: list[tuple[str, str, Design | None, Callable[[], dict]]] = [
        ("none", "plain", None, lambda: plain_row(model, tokenizer, protocol, causal, seqs))
    ]
    if causal:
        for spec in specs:
            todo.append((spec.label, spec.role, None, _method_job(model, tokenizer, protocol, spec, device, seqs)))
        ids = seqs(protocol.method_lengths[0])
        for design in designs:
            prefix = make_prefix(model, tokenizer, design.prefix) if "prefix" in design.factors else None
            for cell in cells(design.factors):
                job = _cell_job(model, ids, design, cell, protocol, prefix)
                todo.append((cell_label(cell), "factorial", design, job))
    rows = []
    for label, role, design, job in todo:
        path = _part_file(out_dir, name, label if design is None else f"{label}@{design.label}")
        row = load_part(path, protocol) if resume else None
        if row is None:
            tell(f"{name} / {label}")
            start = time.perf_counter()
            row = {"model": name, "method": label, "role": role, "published": False, **job()}
            row["wall_s"] = time.perf_counter() - start
            _save_part(path, protocol, row)
        rows.append(row)
    key = f"ppl@{protocol.method_lengths[0]}"
    record["factorials"] = []
    for design in designs:
        cell_rows = [r for r in rows if r.get("design") == design.label]
        if not cell_rows:
            continue
        for r in cell_rows:
            r[f"d_{key}"] = r[key] - cell_rows[0][key]
        effects = factorial_effects(cell_rows, design.factors, key)
        record["factorials"].append(
            {"design": design.label, "factors": list(design.factors), "prefix": design.prefix, "metric": key,
             "log_ppl_effects": effects}
        )  # fmt: skip
    return rows, record


def _cell_job(model, ids, design: Design, cell: dict[str, bool], protocol: Protocol, prefix) -> Callable[[], dict]:
    def job() -> dict:
        ppl = metrics.cell_ppl(model, ids, cell, protocol, prefix)
        return {"design": design.label, "factors": dict(cell), f"ppl@{ids.shape[1]}": ppl}

    return job


def _method_job(model, tokenizer, protocol, spec: MethodSpec, device, seqs) -> Callable[[], dict]:
    def job() -> dict:
        ids = seqs(protocol.method_lengths[0])
        if spec.role == "evaluator":
            return metrics.evaluator_metrics(model, ids, spec.name, protocol)
        if spec.role == "press":
            return metrics.press_metrics(model, ids, spec.name, protocol)
        if spec.name == "adapted":
            from sinklab.remove.adapt import load_adapted

            adapted, tok = load_adapted(spec.path, device=device, dtype=protocol.dtype)
            return plain_row(adapted, tok, protocol, True)
        return model_row(model, tokenizer, protocol, spec, build(spec, model, tokenizer, protocol), seqs)

    return job


def run_bench(
    models: list[str],
    methods: str | None,
    factorial: str | list[str] | None,
    protocol: Protocol,
    out_dir: str | Path,
    device=None,
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
    cores: str = "unknown",
) -> dict:
    """Every row of every model (parts saved under ``out_dir/parts`` as they finish; ``resume`` reuses them), the
    published rows, provenance; the bench.json record (not yet written: see ``bench.report.write_bench``).
    ``factorial``: one design or a list of them (``methods.parse_designs``); ``cores``: ``shared`` / ``idle`` /
    ``unknown``, what the timings were measured on (``cost_conditions``)."""
    from sinklab.bench.methods import parse_designs, parse_methods
    from sinklab.bench.published import published_rows
    from sinklab.provenance import describe_texts, run_provenance

    metrics.check_cores(cores)
    specs, designs = parse_methods(methods), parse_designs(factorial)
    start, start_load = time.perf_counter(), os.getloadavg()
    rows, records = [], {}
    for name in models:
        mine, records[name] = run_model(name, specs, designs, protocol, Path(out_dir), device, resume, progress)
        rows += mine
    corpus = describe_texts(None) if protocol.corpus == "embedded" else protocol.corpus
    return {
        "benchmark": "sinklab-bench",
        "protocol": protocol.to_dict(),
        "rows": rows + published_rows(),
        "models": records,
        "wall_s": time.perf_counter() - start,
        "wall_s_rows": sum(r["wall_s"] for r in rows),
        "cost_conditions": metrics.cost_conditions(cores, start_load),
        "provenance": run_provenance(None, texts=corpus, bos=protocol.bos, seed=protocol.seeds[0]),
    }
