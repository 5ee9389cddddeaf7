"""The pre-training study: every attention variant and intervention at the same budget, one table.

    python benchmarks/train_study.py --preset small --steps 1000 --corpus data/train-corpus   # GPU (H200: ~12 min)
    python benchmarks/train_study.py --preset tiny --steps 20 --runs softmax gated             # CPU smoke test

Each run trains the same Llama decoder from the same seed on the same token stream (sinklab.remove.train) and
measures, on held-out text, Sink_1^0.3 at T=64 (Gu et al. 2024), first-token mass, max |x| and kurtosis of the
residual stream, validation loss, and W8A8 perplexity. The softmax baseline is the reference every row is compared
with. Partial results are saved after every run, so a time limit still leaves the finished ones; a study longer than
one device call runs part of ``--runs`` first and adds the rest with ``--append`` (same budget, checked).
Prints a rich table, then ONE JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from sinklab.remove.train import TrainConfig, TrainResult, train
from sinklab.report.train import training_curves

# run name -> TrainConfig overrides (the baseline: softmax, weight decay 0.1, BOS at every sequence start)
RUNS: dict[str, dict] = {
    "softmax": {},
    "gated": {"variant": "gated"},
    "softpick": {"variant": "softpick"},
    "sink": {"variant": "sink"},
    "kv_bias": {"variant": "kv_bias"},
    "softmax1": {"variant": "softmax1"},
    "clipped": {"variant": "clipped"},
    "sigmoid": {"variant": "sigmoid"},
    "sink_token": {"sink_token": True, "bos": "never"},
    "bos_never": {"bos": "never"},
    "wd0": {"weight_decay": 0.0},
    "wd0.5": {"weight_decay": 0.5},
}

# What the papers report for the same change (shared/REFERENCES.md), shown beside sinklab's numbers.
PUBLISHED: dict[str, str] = {
    "softmax": "Gu et al. 60M LLaMA, 5B tokens: Sink_1 18.18 %, loss 3.73",
    "gated": "Qiu et al. 15B MoE: first-token attn 0.467 -> 0.048, max act 1053 -> 94",
    "softpick": "Zuhri et al. 340M: sink rate 0 %, kurtosis 33,510 -> 340",
    "sink": "gpt-oss sink logit (no published sink rate)",
    "kv_bias": "Gu et al.: learnable key bias -> 0.00 %; Sun et al.: removes massive activations",
    "softmax1": "StreamingLLM 160M: needs 1 kept token (ppl 19.90) like vanilla",
    "clipped": "Bondarenko et al. BERT: max inf-norm 735 -> 21.5, kurtosis 3076 -> 80, W8A8 ppl 1294 -> 4.52",
    "sigmoid": "Gu et al.: sigmoid without normalisation 0.44 % (loss 3.70)",
    "sink_token": "StreamingLLM 160M: learnable sink token, 1 sink slot suffices (18.01 ppl)",
    "bos_never": "Gu et al.: the sink forms on the first token whatever it is",
    "wd0": "Gu et al.: weight decay 0 -> 15.20 %",
    "wd0.5": "Gu et al.: weight decay 0.5 -> 41.08 %",
}


def train_guarded(config: TrainConfig, name: str, console: Console) -> tuple[TrainResult | None, str | None, float]:
    """``(result, None, seconds)`` of one run, or ``(None, "Type: message", seconds)`` when it raised: one broken run
    must not cost a study the others' results."""
    tick = time.perf_counter()
    try:
        return train(config), None, time.perf_counter() - tick
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        console.print(f"[red]{name} failed: {error}[/]")
        return None, error, time.perf_counter() - tick


def _hardware() -> str:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return "h200" if "H200" in name else name.lower().replace(" ", "-")
    return f"cpu{os.cpu_count()}"


def _impl(calls: dict[str, int]) -> str:
    """Which attention code trained the run, from the dispatches counted during the training steps."""
    if not calls:
        return "transformers sdpa"
    return "sinklab.ops via remove.patch: " + ", ".join(f"{key} x{n}" for key, n in sorted(calls.items()))


def _summary(run: dict, base: dict | None) -> dict:
    final = run["final"]
    row = {
        "run": run["study_name"],
        "config": run["name"],
        "val_loss": final["val_loss"],
        "sink_rate": final["sink_rate"],
        "sink_rate_of_mean": final.get("sink_rate_of_mean"),  # the statistic of the studies made with sinklab 0.1
        "first_token_mass": final["first_token_mass_mean"],
        "max_activation": final["max_activation"],
        "kurtosis": final["kurtosis"],
        "ppl_fp32": final.get("ppl_fp32"),
        "ppl_w8a8_tensor": final.get("ppl_w8a8_tensor"),
        "ppl_w8a8_token": final.get("ppl_w8a8_token"),
        "tokens_per_second": run["tokens_per_second"],
        "attention_impl": run["attention_impl"],
        "published": PUBLISHED.get(run["study_name"], ""),
    }
    if base is not None:
        row["loss_vs_baseline_pct"] = 100 * (final["val_loss"] / base["final"]["val_loss"] - 1)
        row["max_activation_vs_baseline"] = final["max_activation"] / base["final"]["max_activation"]
    return row


def _table(rows: list[dict]) -> Table:
    table = Table(title="sinklab pre-training study (same model, data, steps and seed for every run)")
    cols = ("run", "val loss", "vs base", "Sink_1", "1st-token mass", "max |x|", "kurtosis", "ppl", "ppl W8A8/t")
    for col in cols:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            row["run"],
            f"{row['val_loss']:.3f}",
            f"{row.get('loss_vs_baseline_pct', 0.0):+.1f} %",
            f"{row['sink_rate']:.1%}",
            f"{row['first_token_mass']:.3f}",
            f"{row['max_activation']:.1f}",
            f"{row['kurtosis']:.1f}",
            f"{row['ppl_fp32']:.2f}" if row["ppl_fp32"] else "-",
            f"{row['ppl_w8a8_tensor']:.2f}" if row["ppl_w8a8_tensor"] else "-",
        )
    return table


BUDGET_KEYS = ("preset", "steps", "batch_size", "context", "lr", "corpus", "seed", "max_epochs")


def _budget(run: dict) -> dict:
    """What every run of one study shares (a run's own overrides, such as the variant, excluded)."""
    return {key: run["config"][key] for key in BUDGET_KEYS}


def _previous(out: Path, names: list[str]) -> dict:
    """The record in ``out`` without the runs about to be re-run: ``--append`` adds this call's runs to it."""
    if not out.exists():
        raise SystemExit(f"--append: {out} does not exist; run without --append first")
    record = json.loads(out.read_text())
    record["runs"] = [run for run in record["runs"] if run["study_name"] not in names]
    return record


def _tabulate(record: dict) -> None:
    """Order the runs as ``RUNS`` does and rebuild the table against the softmax baseline (``main`` admits only runs
    of one budget)."""
    record["runs"].sort(key=lambda run: list(RUNS).index(run["study_name"]))
    base = next((run for run in record["runs"] if run["study_name"] == "softmax"), None)
    record["table"] = [_summary(run, base) for run in record["runs"]]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--corpus", default=None, help="built corpus directory (default: embedded byte corpus)")
    parser.add_argument("--runs", nargs="*", default=list(RUNS), help=f"subset of {', '.join(RUNS)}")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--max-epochs", type=float, default=2.0)
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/train-study-<hw>.json)")
    parser.add_argument("--append", action="store_true",
                        help="add these runs to the study already in --out (same budget; a run named again is "
                             "replaced): a study longer than one device call")  # fmt: skip
    parser.add_argument("--no-quant", action="store_true", help="skip the W8A8 perplexity at the end")
    parser.add_argument("--time-limit", type=float, default=None, help="start no run that would end past it (s)")
    parser.add_argument("--mirror", default=os.environ.get("OUT"), help="also write results here after every run")
    args = parser.parse_args(argv)
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; accepted: {', '.join(RUNS)}")
    hardware = _hardware()
    out = Path(args.out or f"benchmarks/results/train-study-{hardware}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    dirs = [out.parent] + ([Path(args.mirror)] if args.mirror else [])
    console = Console()
    record: dict = _previous(out, args.runs) if args.append else {
        "benchmark": "train_study",
        "hardware": hardware,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "torch": torch.__version__,
        "preset": args.preset,
        "corpus": args.corpus or "embedded pydoc topics, byte tokens",
        "note": "every run: same model shape, seed, token stream and step count; the CPU, if used, is shared",
        "runs": [],
        "table": [],
        "calls": [],
    }  # fmt: skip
    call = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": [], "wall_seconds": 0.0}
    record["calls"].append(call)
    started = time.perf_counter()
    longest = 0.0
    for name in args.runs:
        elapsed = time.perf_counter() - started
        if args.time_limit is not None and elapsed + 1.1 * longest > args.time_limit:
            call.setdefault("skipped", []).append(name)
            console.print(f"[yellow]{name}: skipped, {elapsed:.0f} s spent of the {args.time_limit:.0f} s limit[/]")
            continue
        config = TrainConfig(
            **{
                "preset": args.preset,
                "steps": args.steps,
                "corpus": args.corpus,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "eval_every": args.eval_every,
                "max_epochs": args.max_epochs,
                "quant_eval": not args.no_quant,
                **RUNS[name],
            }
        )
        if record["runs"] and _budget({"config": asdict(config.resolved())}) != _budget(record["runs"][0]):
            raise SystemExit(
                f"--append: {name} would not share the budget of the runs in {out}: {_budget(record['runs'][0])}"
            )
        result, error, seconds = train_guarded(config, name, console)
        longest = max(longest, seconds)
        if result is None:
            call.setdefault("failed", {})[name] = error
            continue
        run = {"study_name": name, "attention_impl": _impl(result.attention_calls), **result.to_dict()}
        record["runs"].append(run)
        call["runs"].append(name)
        _tabulate(record)
        call["wall_seconds"] = time.perf_counter() - started
        for directory in dirs:
            (directory / out.name).write_text(json.dumps(record, indent=1))
        console.print(
            f"[bold]{name}[/]: val loss {run['final']['val_loss']:.3f}, Sink_1 {run['final']['sink_rate']:.1%}, "
            f"max |x| {run['final']['max_activation']:.1f}, {result.tokens_per_second:,.0f} tok/s, "
            f"{time.perf_counter() - started:.0f} s so far"
        )
    call["wall_seconds"] = time.perf_counter() - started
    for directory in dirs:
        (directory / out.name).write_text(json.dumps(record, indent=1))
        training_curves(record["runs"], directory / out.name.replace(".json", ".png"))
    Console(width=160).print(_table(record["table"]))
    summary = {"benchmark": "train_study", "hardware": hardware, "table": record["table"]}
    summary.update({k: call[k] for k in ("failed", "skipped") if k in call})
    print(json.dumps(summary))
    return record


if __name__ == "__main__":
    main()
