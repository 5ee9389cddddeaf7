"""`sinklab detect`: sink-feature probes (SinkProbe) — make a task, fit the probe with its baselines, score data."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sinklab.cli._app import DEVICE, DTYPE, MODEL, SinklabCommand, SinklabGroup, app, out_option
from sinklab.errors import SinklabInputError

detect_app = typer.Typer(
    cls=SinklabGroup,
    help="Detect prompt injection or hallucination from attention-sink features (L1 probe).",
    no_args_is_help=True,
)
app.add_typer(detect_app, name="detect")

DATA = typer.Option(..., metavar="FILE", help='.jsonl: {"text", "label"} or {"prompt", "answer", "label"} per line.')
TOP_K = typer.Option(4, min=1, metavar="N", help="Top received-mass keys per head.")
EPS = typer.Option(0.3, metavar="X", help="Mean received mass that makes a later key a secondary sink, in (0, 1).")
BATCH = typer.Option(4, min=1, metavar="N", help="Inputs per forward pass.")
MAX_TOKENS = typer.Option(4096, min=2, metavar="N", help="Longest input in tokens (a longer prompt is truncated).")
TASKS = ("injection", "hallucination")


def _load(model: str, device, dtype):
    from sinklab.models import load
    from sinklab.progress import status

    with status(f"loading {model}"):
        return load(model, device=device, dtype=dtype)


def _table(d: dict) -> Table:
    table = Table(title=f"sinklab detect: {d['model']} ({d['examples']} examples, {d['positives']} positive)")
    for column in ("features", "ROC-AUC", "95 % CI"):
        table.add_column(column)
    rows = [("sink probe", d["probe"]), *d["baselines"].items()]
    for name, r in rows:
        table.add_row(name, f"{r['auroc']:.3f}", f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
    return table


@detect_app.command("task", cls=SinklabCommand)
def task_command(
    name: str = typer.Argument(..., metavar="TASK", help="injection or hallucination."),
    out: Path = typer.Option(..., metavar="FILE", help="The .jsonl file to write."),
    num_examples: int = typer.Option(100, min=2, metavar="N", help="Records to generate."),
    model: str = MODEL,
    seed: int = typer.Option(0, metavar="N", help="Random seed."),
    device: str = DEVICE,
    dtype: str = DTYPE,
) -> None:
    """Generate a labelled task offline (hallucination: the model answers closed-book questions greedily)."""
    from sinklab.data import detection

    if name not in TASKS:
        raise SinklabInputError(f"unknown task {name!r}; accepted: {', '.join(TASKS)}")
    if out.is_dir() or not out.absolute().parent.is_dir():
        raise SinklabInputError(f"--out {out} must be a .jsonl file in an existing directory")
    if name == "injection":
        records = detection.injection_task(num_examples, seed=seed)
    else:
        net, tokenizer = _load(model, device, dtype)
        records = detection.hallucination_task(net, tokenizer, num_examples, seed=seed)
    detection.write_jsonl(records, out)
    positives = sum(r["label"] for r in records)
    Console().print(f"wrote {out}: {len(records)} records, {positives} with label 1")


@detect_app.command("fit", cls=SinklabCommand)
def fit_command(
    data: Path = DATA,
    model: str = MODEL,
    out: Path = out_option("detect", "detect.json, selected_features.png"),
    folds: int = typer.Option(5, metavar="N", help="Cross-validation folds (>= 3; each class needs N examples)."),
    top_k: int = TOP_K,
    eps: float = EPS,
    batch_size: int = BATCH,
    max_tokens: int = MAX_TOKENS,
    seed: int = typer.Option(0, metavar="N", help="Seed of the folds and the bootstrap."),
    device: str = DEVICE,
    dtype: str = DTYPE,
) -> None:
    """Fit the L1 sink probe, measure it and the baselines by cross-validated ROC-AUC; write detect.json."""
    from sinklab.data.detection import read_labelled
    from sinklab.errors import check_fraction
    from sinklab.measure.detect import check_labels, detect, require_sklearn
    from sinklab.provenance import file_sources

    check_fraction("--eps", eps)
    require_sklearn()
    records = read_labelled(data)
    check_labels([r["label"] for r in records], folds)
    net, tokenizer = _load(model, device, dtype)
    result = detect(
        net, tokenizer, records, folds=folds, top_k=top_k, eps=eps, batch_size=batch_size, max_tokens=max_tokens,
        seed=seed, model_name=model,
    )  # fmt: skip
    result.provenance["texts"] = {"source": file_sources([data]), "records": len(records)}
    result.save(out)
    Console().print(_table(result.to_dict()))
    Console().print(f"wrote {out}/detect.json and selected_features.png")


@detect_app.command("score", cls=SinklabCommand)
def score_command(
    probe: Path = typer.Option(..., metavar="FILE", help="detect.json written by `sinklab detect fit`."),
    data: Path = DATA,
    model: str = MODEL,
    out: Path = out_option("detect-score", "scores.jsonl, score.json"),
    batch_size: int = BATCH,
    max_tokens: int = MAX_TOKENS,
    device: str = DEVICE,
    dtype: str = DTYPE,
) -> None:
    """Score labelled records with a fitted probe; ROC-AUC with its interval when both labels occur."""
    from sinklab.data.detection import read_labelled
    from sinklab.measure.detect import Probe, bootstrap_auroc, require_sklearn, score
    from sinklab.provenance import file_sources, run_provenance
    from sinklab.report.files import staged_output

    require_sklearn()
    try:
        fitted = json.loads(probe.read_text())
        saved = Probe(**fitted["fitted"])
    except (OSError, ValueError, KeyError, TypeError):
        raise SinklabInputError(f"--probe {probe} is not a detect.json written by `sinklab detect fit`") from None
    records = read_labelled(data)
    net, tokenizer = _load(model, device, dtype)
    scores = score(
        net, tokenizer, saved, records, top_k=fitted["top_k"], eps=fitted["eps"], batch_size=batch_size,
        max_tokens=max_tokens,
    )  # fmt: skip
    labels = [r["label"] for r in records]
    summary = {"model": model, "probe": str(probe), "examples": len(records)}
    if len(set(labels)) == 2:
        import numpy as np

        summary.update(bootstrap_auroc(np.asarray(labels), scores))
    summary["provenance"] = {**run_provenance(net), "texts": {"source": file_sources([data])}}
    with staged_output(out) as tmp:
        lines = [json.dumps({"score": round(float(s), 6), "label": y}) for s, y in zip(scores, labels, strict=True)]
        (tmp / "scores.jsonl").write_text("\n".join(lines) + "\n")
        (tmp / "score.json").write_text(json.dumps(summary, indent=1) + "\n")
    shown = f", ROC-AUC {summary['auroc']:.3f}" if "auroc" in summary else ""
    Console().print(f"wrote {out}/scores.jsonl and score.json ({len(records)} records{shown})")
