"""Gu et al.'s pre-training regime on one machine: variants x seeds at a fixed step budget, plus a unique-data sweep.

    nohup python benchmarks/gu_study.py --preset small --steps 2400 --corpus /tmp/corpus --work /tmp/gu \\
        --parallel 6 --variants softmax gated softpick --seeds 0 1 2 --sizes 1000000 4000000 full \\
        --checkpoint-steps 150,300,600,1200,2400 --out /tmp/gu/gu-study.json > /tmp/gu/study.log 2>&1 &
    python benchmarks/gu_study.py ... --aggregate-only        # rebuild the JSON and plot from what has finished
    python benchmarks/gu_study.py ... --finish-by 1200 --first softmax-s0 softmax-s1
                                                              # a lease: runs that end within 20 minutes, baseline first
    python benchmarks/gu_study.py --preset gu60m --bos never --min-lr-ratio 1 --metric-windows documents ...
                                                              # Gu et al.'s own recipe and probe

Gu et al. ("When Attention Sink Emerges in Language Models", 2024) pre-trained 60M LLaMA models with a fixed number
of steps and measured Sink_1^0.3 at T=64 as training went on; with less unique data (repeated to fill the same
steps) the sink barely formed. The plan here: every ``--variants`` x ``--seeds`` on the full corpus, plus softmax
seed 0 on N training tokens (whole windows spread over the split) for every smaller ``--sizes`` entry (the full-size
softmax seed 0 is shared by both lists and is the one run that saves ``--checkpoint-steps`` checkpoints). Every run
is one ``python -m sinklab.cli train`` subprocess writing ``<work>/<run>/train.json`` (its output in ``log.txt``
beside it); up to ``--parallel`` share each of ``--gpus`` GPUs (every visible one by default; a run sees only its
own), the runs named by ``--first`` and then the slowest variants start first, and a run whose train.json exists is
skipped, so the study resumes where a stopped one left off (a train.json of another sinklab version is moved aside
and its run trained again: versions may measure differently; one of this version that trained another variant,
preset, seed, step count or subset than its name's run in the plan is refused). After every finished run the study
JSON (``--out``) and its plot (same name, .png) are rewritten from everything in ``--work``. Checkpoints are loaded
back through ``sinklab.load`` and scanned with ``sinklab.scan`` on the same held-out sequences the training
evaluated (both numbers recorded). Prints plain progress lines, a rich table at the end, then ONE JSON line last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from train_study import PUBLISHED as TRAIN_PUBLISHED
from train_study import _hardware, _impl

import sinklab
from sinklab.provenance import run_provenance
from sinklab.remove.train import TrainConfig, emergence, metric_ids, place, train

# Seconds per step against the softmax baseline, measured on the H200 (train-study-h200.json: each run alone at the
# small preset; gu60m-h200.json: gated 1.10, sigmoid 1.05 at gu60m): the slower runs start first, and --finish-by
# scales a finished run's time by it for a variant not measured yet in the study.
COST = {"kv_bias": 1.2, "gated": 1.15, "sink": 1.15, "sigmoid": 1.05, "softmax1": 1.05}

PUBLISHED = {
    "source": "Gu et al. 2024, When Attention Sink Emerges in Language Models",
    "softmax": TRAIN_PUBLISHED["softmax"],
    "gated": TRAIN_PUBLISHED["gated"],
    "softpick": TRAIN_PUBLISHED["softpick"],
    "sink_rate_60m_5b_tokens": 0.1818,
    "train_tokens_60m": 5_000_000_000,
    "data_size": "at a fixed step budget, sinks barely form (Sink_1 < 1 %) below about 100M unique training tokens",
    "small_data_threshold_tokens": 100_000_000,
    "emergence": "the first-token sink appears after 1-2k optimisation steps",
}


def _size_label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _sizes(values: list[str]) -> list[int | None]:
    out: list[int | None] = []
    for value in values:
        if value == "full":
            out.append(None)
            continue
        try:
            out.append(int(float(value)))
        except ValueError:
            raise SystemExit(f"--sizes: {value!r} is neither a token count nor 'full'") from None
    return out


def plan(args) -> list[dict]:
    """The runs, longest first: every variant x seed at full size, softmax seed 0 at every smaller size, and with
    ``--long-steps`` every ``--long-variants`` x ``--long-seeds`` run that long (the curves past the comparison
    budget; the first softmax seed saves the checkpoints)."""
    runs = [
        {"name": f"{v}-s{s}", "group": v, "variant": v, "seed": s, "unique_tokens": None}
        for v in args.variants
        for s in args.seeds
    ]
    sizes = _sizes(args.sizes)
    if None in sizes and not any(r["name"] == "softmax-s0" for r in runs):
        runs.append({"name": "softmax-s0", "group": "softmax", "variant": "softmax", "seed": 0, "unique_tokens": None})
    for n in sorted({n for n in sizes if n is not None}):
        group = f"softmax-{_size_label(n)}"
        runs.append({"name": f"{group}-s0", "group": group, "variant": "softmax", "seed": 0, "unique_tokens": n})
    for variant in args.long_variants if args.long_steps else []:
        for seed in args.long_seeds:
            runs.append({"name": f"{variant}-long-s{seed}", "group": f"{variant}-long", "variant": variant,
                         "seed": seed, "unique_tokens": None, "steps": args.long_steps,
                         "eval_every": args.long_eval_every, "time_limit": args.long_time_limit})  # fmt: skip
    resolved = TrainConfig(
        preset=args.preset, steps=args.steps, batch_size=args.batch_size, context=args.context
    ).resolved()
    long_softmax = args.long_steps and "softmax" in args.long_variants
    saver = f"softmax-long-s{args.long_seeds[0]}" if long_softmax else "softmax-s0"
    for run in runs:
        run.setdefault("steps", resolved.steps)
        run["checkpoints"] = run["name"] == saver and bool(args.checkpoint_steps)
        run["max_epochs"] = args.max_epochs
        if run["unique_tokens"] is not None:  # repeats the subset: allow as many epochs as the steps take
            windows = max(run["unique_tokens"] // (resolved.context - 1), 1)
            run["max_epochs"] = float(max(math.ceil(run["steps"] * resolved.batch_size / windows) + 1, 2))
        run["command"] = _command(args, run)
    # stable: seeds and sizes keep their order
    return sorted(runs, key=lambda r: -COST.get(r["variant"], 1.0) * r["steps"] / resolved.steps)


def _command(args, run: dict) -> list[str]:
    cmd = [sys.executable, "-m", "sinklab.cli", "train", "--variant", run["variant"], "--preset", args.preset]
    cmd += ["--seed", str(run["seed"]), "--out", str(Path(args.work) / run["name"])]
    cmd += ["--max-epochs", f"{run['max_epochs']:g}"]
    for flag, value in (("--steps", run["steps"]), ("--corpus", args.corpus), ("--batch-size", args.batch_size),
                        ("--lr", args.lr), ("--eval-every", run.get("eval_every") or args.eval_every),
                        ("--device", args.device), ("--context", args.context), ("--bos", args.bos),
                        ("--min-lr-ratio", args.min_lr_ratio), ("--metric-windows", args.metric_windows)):  # fmt: skip
        if value is not None:
            cmd += [flag, str(value)]
    if run["unique_tokens"] is not None:
        cmd += ["--unique-tokens", str(run["unique_tokens"])]
    if run["checkpoints"]:
        cmd += ["--checkpoint-steps", args.checkpoint_steps]
    if args.compile:
        cmd += ["--compile"]
    if run.get("time_limit") is not None:
        cmd += ["--time-limit", f"{run['time_limit']:g}"]
    return cmd


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _load_run(work: Path, run: dict) -> dict | None:
    path = work / run["name"] / "train.json"
    return json.loads(path.read_text()) if path.exists() else None


def _made_with(work: Path, run: dict) -> str | None:
    """The sinklab version of the run's train.json, or None when it has none."""
    record = _load_run(work, run)
    return None if record is None else record["provenance"].get("sinklab")


def _mismatch(run: dict, record: dict, preset: str) -> str | None:
    """What ``run``'s train.json trained otherwise than the plan has it (variant, preset, seed, steps, unique
    tokens), or None: a run record stands only for the run it is named for (an 8000-step ``softmax-long-s0`` copied
    into a 12000-step study would be skipped as if it were that run)."""
    planned = {"variant": run["variant"], "preset": preset, "seed": run["seed"], "steps": run["steps"],
               "unique_tokens": run["unique_tokens"]}  # fmt: skip
    config = record["config"]
    wrong = [f"{key}={config.get(key)!r} (the plan: {value!r})" for key, value in planned.items()
             if config.get(key) != value]  # fmt: skip
    return ", ".join(wrong) or None


def _partial_history(work: Path, run: dict) -> list[dict]:
    """The evaluations a run without train.json has written so far (``history.jsonl``; a run the lease cut)."""
    path = work / run["name"] / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- aggregation ---------------------------------------------------------------------------------------------------
def _row(run: dict, record: dict) -> dict:
    final = record["final"]
    em = final.get("emergence") or emergence(record["history"])
    return {
        "run": run["group"],
        "name": run["name"],
        "variant": run["variant"],
        "seed": run["seed"],
        "sink_rate": final["sink_rate"],
        "sink_rate_of_mean": final.get("sink_rate_of_mean"),  # the statistic of the studies made with sinklab 0.1
        "val_loss": final["val_loss"],
        "max_activation": final["max_activation"],
        "first_token_mass": final["first_token_mass_mean"],
        "kurtosis": final["kurtosis"],
        "ppl_fp32": final.get("ppl_fp32"),
        "ppl_w8a8_tensor": final.get("ppl_w8a8_tensor"),
        "emergence_5": em["sink_rate_0.05"],
        "emergence_10": em["sink_rate_0.10"],
        "steps": record["config"]["steps"],
        "stopped_early": final.get("stopped_early"),  # --long-time-limit: the run of the steps taken
        "tokens": record["history"][-1]["tokens"],
        "unique_tokens": final.get("unique_tokens"),
        "unique_tokens_requested": run["unique_tokens"],
        "epochs": final.get("epochs"),
        "tokens_per_second": record["tokens_per_second"],
        "wall_seconds": final.get("wall_seconds"),
        "params": record["params"],
        "attention_impl": _impl(record.get("attention_calls") or {}),
    }


def _full_size_from_long_run(finished: dict[str, dict], steps: int) -> list[dict]:
    """The full-size data-size point read off the long softmax seed-0 run at the budget's step: with a constant
    learning rate after warmup, its first ``steps`` steps are the ``steps``-step run (the same schedule and data
    order), so the sweep need not train that run again. [] when there is no such run or row."""
    record = finished.get("softmax-long-s0")
    if record is None or record["config"]["min_lr_ratio"] != 1:
        return []
    row = next((r for r in record["history"] if r["step"] == steps), None)
    if row is None:
        return []
    final = record["final"]
    return [{
        "unique_tokens": final["unique_tokens"], "full": True, "steps": steps, "tokens": row["tokens"],
        "epochs": final["epochs"] * steps / record["config"]["steps"], "sink_rate": row["sink_rate"],
        "val_loss": row["val_loss"], "max_activation": row["max_activation"], "seed": 0,
        "from": f"softmax-long-s0 at step {steps}",
    }]  # fmt: skip


def _stats(values: list) -> dict:
    got = [v for v in values if v is not None]
    if not got:
        return {"mean": None, "min": None, "max": None, "n": 0, "values": values}
    return {"mean": float(np.mean(got)), "min": min(got), "max": max(got), "n": len(got), "values": values}


def _summary(table: list[dict]) -> dict:
    groups: dict[str, list[dict]] = {}
    for row in table:
        groups.setdefault(row["run"], []).append(row)
    keys = ("sink_rate", "sink_rate_of_mean", "val_loss", "max_activation", "emergence_5", "emergence_10")
    return {
        group: {"seeds": [r["seed"] for r in rows], **{k: _stats([r[k] for r in rows]) for k in keys}}
        for group, rows in groups.items()
    }


def _explain_summary(probes: dict) -> dict:
    """What ``sinklab explain`` found on a checkpoint, in brief: its Sink_1 and loss, and each intervention's loss
    change and Sink_1 after it (the whole record is ``<run>/explain-step-N.json``)."""
    return {
        "sink_rate": probes["baseline"]["sink_rate"],
        "loss": probes["baseline"].get("loss"),
        "interventions": {
            probe: {
                name: {"loss_delta": effect.get("loss_delta"), "sink_rate": effect["sink_rate"]}
                for name, effect in section["interventions"].items()
                if isinstance(effect, dict) and "sink_rate" in effect and name != "baseline"
            }
            for probe, section in probes["probes"].items()
        },
        "not_applicable": probes["not_applicable"],
    }


def _checkpoints(run: dict, record: dict, cache: dict, directory: Path, explain_seqs: int = 0) -> list[dict]:
    """Each saved checkpoint loaded through sinklab.load and scanned on the training's held-out T=64 sequences,
    beside the history row of its step; with ``explain_seqs``, ``sinklab explain``'s probes on that many of them
    (spread). Both records are saved in the run's ``directory`` beside its train.json (``rescan-step-N.json``,
    ``explain-step-N.json``), so they travel back without the checkpoint and a later lease's record keeps them."""
    from sinklab.models import resolve_device

    out = []
    config = TrainConfig(**{**record["config"], "checkpoint_steps": tuple(record["config"]["checkpoint_steps"])})
    checkpoints = record["final"].get("checkpoints", [])
    here = [c for c in checkpoints if Path(c["path"]).is_dir()]  # a run carried from an earlier lease has none
    if any(c["path"] not in cache for c in here):  # the held-out sequences, read from the corpus once
        ids, device = metric_ids(config), resolve_device(config.device)
    for checkpoint in checkpoints:
        path = checkpoint["path"]
        explained = directory / f"explain-step-{checkpoint['step']}.json"
        rescanned = directory / f"rescan-step-{checkpoint['step']}.json"
        if path not in cache:  # each record is made once, where the checkpoint is, and read back after
            kept = json.loads(rescanned.read_text()) if rescanned.exists() else None
            explain_now = explain_seqs and not explained.exists()
            if checkpoint in here and (kept is None or explain_now):
                model, tokenizer = sinklab.load(path, device=device)
                if kept is None:
                    scanned = sinklab.scan(
                        model, tokenizer, ids, eps=config.eps, num_texts=None, batch_size=len(ids),
                        keep_pattern=0, progress=False,
                    )  # fmt: skip
                    kept = {"sink_rate": scanned.sink_rate, "max_activation": float(scanned.layer_max_abs.max())}
                    rescanned.write_text(json.dumps(kept) + "\n")
                if explain_now:
                    probes = sinklab.explain(
                        model, tokenizer, ids[place(explain_seqs, len(ids))], eps=config.eps, num_texts=None,
                        max_tokens=ids.shape[1], bos="never", progress=False,
                        model_name=f"{run['name']} step {checkpoint['step']}",
                    ).to_dict()  # fmt: skip
                    explained.write_text(json.dumps(probes, indent=1) + "\n")
                del model
            cache[path] = kept
        history = next(row for row in record["history"] if row["step"] == checkpoint["step"])
        scan_row, train_row = cache[path], {k: history[k] for k in ("sink_rate", "max_activation")}
        out.append({
            "run": run["name"],
            "step": checkpoint["step"],
            "tokens": history["tokens"],
            "path": path,
            "scan": scan_row,  # None: neither the checkpoint nor its rescan record is here
            "history": train_row,
            "sink_rate_equal": None if scan_row is None else scan_row["sink_rate"] == train_row["sink_rate"],
            "max_activation_abs_diff": (
                None if scan_row is None else abs(scan_row["max_activation"] - train_row["max_activation"])
            ),
            "explain": _explain_summary(json.loads(explained.read_text())) if explained.exists() else None,
        })  # fmt: skip
    return out


def _preflight(args, work: Path) -> None:
    """Before any run, the checkpoint path once on this machine: a two-step tiny run on the study's corpus and device
    saves a checkpoint, which is loaded back, rescanned and explained as the saver's will be. A broken path then
    stops the study at its start instead of after its longest run (the fourth and fifth H200 leases each lost the
    baseline's rescans and explain records that way: a shadowed package, a CPU tensor meeting a CUDA weight)."""
    directory = work / "preflight"
    shutil.rmtree(directory, ignore_errors=True)
    options = {k: v for k, v in (("bos", args.bos), ("metric_windows", args.metric_windows)) if v is not None}
    config = TrainConfig(preset="tiny", steps=2, eval_every=2, checkpoint_steps=(2,), quant_eval=False,
                         corpus=args.corpus, device=args.device, out=str(directory), **options)  # fmt: skip
    explain_seqs = min(args.explain_checkpoints, config.resolved().metric_seqs)
    try:
        train(config)
        record = json.loads((directory / "train.json").read_text())
        rows = _checkpoints({"name": "preflight"}, record, {}, directory, explain_seqs)
        if not rows or rows[0]["scan"] is None or (explain_seqs and rows[0]["explain"] is None):
            raise RuntimeError(f"the tiny checkpoint was not rescanned{' and explained' if explain_seqs else ''}")
    except Exception as exc:  # any failure here would cost the saver's checkpoints later: stop before training
        raise SystemExit(f"gu_study: the checkpoint path fails on this machine ({type(exc).__name__}: {exc}); "
                         f"no run started (the preflight's files are in {directory})") from None  # fmt: skip
    shutil.rmtree(directory)
    _say(f"preflight: a tiny checkpoint saved, loaded back, rescanned{' and explained' if explain_seqs else ''}")


def aggregate(args, runs: list[dict], base: dict, cache: dict) -> dict:
    work = Path(args.work)
    record = dict(base)
    table, curves, checkpoints, data_size, partial = [], [], [], [], []
    checkpoint_errors: dict[str, str] = {}
    keys = ("step", "tokens", "sink_rate", "max_activation", "kurtosis", "val_loss")
    finished: dict[str, dict] = {}
    for run in runs:
        result = _load_run(work, run)
        if result is None:
            history = _partial_history(work, run)
            if history:  # unfinished: its curve so far, never a table row
                last = history[-1]
                partial.append({"name": run["name"], "run": run["group"], "seed": run["seed"],
                                "steps_planned": run["steps"], **{k: last[k] for k in keys}})  # fmt: skip
                curves.append({"run": run["group"], "name": run["name"], "seed": run["seed"], "partial": True,
                               **{k: [row[k] for row in history] for k in keys}})  # fmt: skip
            continue
        finished[run["name"]] = result
        table.append(_row(run, result))
        history = result["history"]
        curves.append({
            "run": run["group"], "name": run["name"], "seed": run["seed"],
            **{k: [row[k] for row in history] for k in keys},
        })  # fmt: skip
        if run["checkpoints"]:
            try:  # the rescans need the checkpoints loaded back: a failure there must not cost the table
                checkpoints += _checkpoints(run, result, cache, work / run["name"], args.explain_checkpoints)
            except Exception as exc:
                checkpoint_errors[run["name"]] = f"{type(exc).__name__}: {exc}"
        if run["variant"] == "softmax" and run["seed"] == 0 and run["steps"] == base["plan"]["steps"]:
            row = table[-1]
            data_size.append({
                "unique_tokens": row["unique_tokens"], "full": run["unique_tokens"] is None,
                "steps": history[-1]["step"], "tokens": row["tokens"], "epochs": row["epochs"],
                "sink_rate": row["sink_rate"], "val_loss": row["val_loss"],
                "max_activation": row["max_activation"], "seed": 0, "from": run["name"],
            })  # fmt: skip
    if not any(point["full"] for point in data_size):
        data_size += _full_size_from_long_run(finished, base["plan"]["steps"])
    order = {run["name"]: i for i, run in enumerate(sorted(runs, key=lambda r: (r["unique_tokens"] is not None,
                                                                                 r["group"], r["seed"])))}  # fmt: skip
    table.sort(key=lambda row: order[row["name"]])
    record.update(
        table=table,
        summary=_summary(table),
        data_size=sorted(data_size, key=lambda row: row["unique_tokens"]),
        curves=curves,
        checkpoints=checkpoints,
        checkpoint_errors=checkpoint_errors,
        partial=partial,
        finished=[row["name"] for row in table],
    )
    return record


# -- plot ----------------------------------------------------------------------------------------------------------
def plot(record: dict, path: Path) -> None:
    """Six panels: Sink_1 and max |x| during training (variants' seed bands), Sink_1 against unique tokens, each
    run's path through (kurtosis, Sink_1), and explain's interventions on the saved checkpoints."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(18, 10), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    groups: dict[str, list[dict]] = {}  # the full-size runs by variant (the data-size runs go to panel 3)
    sized = {row["name"] for row in record["table"] if row["unique_tokens_requested"] is not None}
    for curve in record["curves"]:
        if curve["name"] not in sized and not curve.get("partial"):
            groups.setdefault(curve["run"], []).append(curve)
    unfinished = [curve for curve in record["curves"] if curve.get("partial")]
    subsets = [curve for curve in record["curves"] if curve["name"] in sized and not curve.get("partial")]
    singles = [  # one line each: a run the lease cut (its curve so far, dashed); the data-size runs (dotted)
        *((c, "--", f"{c['name']} (unfinished at step {c['step'][-1]})") for c in unfinished),
        *((c, ":", c["name"]) for c in subsets),
    ]
    pub = record["published"]
    axes[0].axhline(100 * pub["sink_rate_60m_5b_tokens"], color="r", ls=":", label="Gu et al. 60M, 5B tokens")
    for ax, key, label in ((axes[0], "sink_rate", "Sink_1^0.3 at T=64 (%)"), (axes[1], "max_activation", "max |x|")):
        for i, (group, curves) in enumerate(groups.items()):
            steps = sorted(set.intersection(*(set(c["step"]) for c in curves)))
            tokens = [dict(zip(curves[0]["step"], curves[0]["tokens"], strict=True))[s] for s in steps]
            values = np.array([[dict(zip(c["step"], c[key], strict=True))[s] for s in steps] for c in curves])
            values = 100 * values if key == "sink_rate" else values
            color = f"C{i}"
            seeds = f"mean of {len(curves)} seeds" if len(curves) > 1 else "1 seed"
            ax.plot(tokens, values.mean(0), color=color, label=f"{group} ({seeds})")
            ax.fill_between(tokens, values.min(0), values.max(0), color=color, alpha=0.2)
        for j, (curve, style, name) in enumerate(singles, start=len(groups)):
            values = np.array(curve[key]) * (100 if key == "sink_rate" else 1)
            ax.plot(curve["tokens"], values, style, color=f"C{j}", label=name)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if groups or singles or ax is axes[0]:
            ax.legend()
    axes[0].set_title("Sink_1 during training (band: min-max over seeds)")
    axes[1].set_title("largest residual activation during training")
    ax = axes[2]
    points = record["data_size"]
    if points:
        ax.plot([p["unique_tokens"] for p in points], [100 * p["sink_rate"] for p in points], "o-", color="C0",
                label="sinklab softmax, seed 0")  # fmt: skip
    if not points:
        ax.text(0.5, 0.5, "no data-size runs in this study", transform=ax.transAxes, ha="center", color="grey")
    ax.plot([pub["train_tokens_60m"]], [100 * pub["sink_rate_60m_5b_tokens"]], "r*", markersize=14,
            label="Gu et al. 60M LLaMA, 5B tokens: 18.18 %")  # fmt: skip
    low = min([p["unique_tokens"] for p in points] + [1e5]) / 2
    ax.axvspan(low, pub["small_data_threshold_tokens"], color="grey", alpha=0.15,
               label="Gu et al.: Sink_1 < 1 % below ~100M unique tokens")  # fmt: skip
    ax.set_xscale("log")
    ax.set_ylim(0, max([20.0] + [100 * p["sink_rate"] for p in points]))
    ax.set_xlabel("unique training tokens (repeated to fill the same steps)")
    ax.set_ylabel("final Sink_1^0.3 (%)")
    ax.set_title("data size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _emergence_order(fig, axes[3], [c for curves in groups.values() for c in curves if "kurtosis" in c])
    _explain_over_checkpoints(axes[4], axes[5], record.get("checkpoints", []))
    baseline = [row["params"] for row in record["table"] if row["variant"] == "softmax"]  # variants may add some
    params = baseline[0] / 1e6 if baseline else float("nan")
    fig.suptitle(
        f"sinklab Gu-regime study: {record['plan']['preset']} preset (softmax: {params:.1f}M parameters), "
        f"{_budgets(record['plan'])}, {record['hardware']}"
    )
    fig.savefig(path, dpi=110)


def _budgets(plan: dict) -> str:
    """The plan's step budgets in words: the short runs' (variants and data-size subsets) only where it has some."""
    short = [f"{plan['steps']} steps"] if plan["variants"] or plan["sizes"] else []
    return ", ".join(short + ([f"long run {plan['long_steps']} steps"] if plan.get("long_steps") else []))


def _emergence_order(fig, ax, curves: list[dict]) -> None:
    """Which comes first, the sink or the massive activation: each finished run's path through (kurtosis of the
    residual stream, Sink_1), its evaluations coloured by training tokens (a Gaussian's kurtosis is 3)."""
    ax.set_title("sink against outliers, run by run")
    ax.set_xlabel("kurtosis of the residual stream (log; Gaussian: 3)")
    ax.set_ylabel("Sink_1^0.3 at T=64 (%)")
    ax.grid(alpha=0.3)
    if not curves:
        ax.text(0.5, 0.5, "no kurtosis in these curves", transform=ax.transAxes, ha="center", color="grey")
        return
    top = max(max(c["tokens"]) for c in curves)
    for curve in curves:
        sink = 100 * np.asarray(curve["sink_rate"])
        ax.plot(curve["kurtosis"], sink, color="grey", alpha=0.4, lw=0.8)
        points = ax.scatter(curve["kurtosis"], sink, c=curve["tokens"], cmap="viridis", vmin=0, vmax=top, s=14)
        ax.annotate(curve["name"], (curve["kurtosis"][-1], sink[-1]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    ax.axvline(3.0, color="k", ls=":", lw=0.8)
    ax.set_xscale("log")
    fig.colorbar(points, ax=ax, label="training tokens")


def _explain_over_checkpoints(sink_ax, loss_ax, checkpoints: list[dict]) -> None:
    """What ``sinklab explain`` found on each saved checkpoint: Sink_1 unchanged and after each intervention on the
    model (left), and each intervention's change in loss (right); one line style per saving run. The emergence
    probe's inputs (random, repeated tokens) are not interventions on the model and stay in the JSON."""
    sink_ax.set_title("explain per checkpoint: Sink_1 after each intervention")
    loss_ax.set_title("explain per checkpoint: loss change")
    for ax, label in ((sink_ax, "Sink_1^0.3 at T=64, explain's sequences (%)"), (loss_ax, "loss change (nats)")):
        ax.set_xlabel("training tokens")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    explained = [c for c in checkpoints if c.get("explain")]
    if not explained:
        for ax in (sink_ax, loss_ax):
            ax.text(0.5, 0.5, "no explain on checkpoints in this study", transform=ax.transAxes, ha="center",
                    color="grey")  # fmt: skip
        return
    runs = sorted({c["run"] for c in explained})
    for k, run in enumerate(runs):
        style = ("-", "--", ":", "-.")[k % 4]
        rows = sorted((c for c in explained if c["run"] == run), key=lambda c: c["step"])
        tokens = [c["tokens"] for c in rows]
        sink_ax.plot(tokens, [100 * c["explain"]["sink_rate"] for c in rows], style, color="k", marker="o",
                     label=f"{run}: no intervention")  # fmt: skip
        effects: dict[str, list[dict]] = {}  # by intervention name: bias's zero_sink is noop's, drawn once
        for probe, section in rows[0]["explain"]["interventions"].items():
            for name in section:
                if probe != "emergence" and name not in effects:
                    effects[name] = [c["explain"]["interventions"][probe][name] for c in rows]
        for i, (name, values) in enumerate(effects.items()):
            label = f"{run}: {name}" if len(runs) > 1 else name
            sink_ax.plot(tokens, [100 * v["sink_rate"] for v in values], style, color=f"C{i}", marker=".", label=label)
            loss_ax.plot(tokens, [v["loss_delta"] for v in values], style, color=f"C{i}", marker=".", label=label)
    loss_ax.axhline(0.0, color="k", lw=0.8)
    sink_ax.legend(fontsize=8)
    loss_ax.legend(fontsize=8)


def _write(record: dict, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out)
    plot(record, out.with_suffix(".png"))


def _table(record: dict) -> Table:
    table = Table(title=f"sinklab Gu-regime study ({_budgets(record['plan'])})")
    cols = ("run", "seed", "unique tok", "epochs", "val loss", "Sink_1", "max |x|", "kurtosis", "emerge 5/10 %",
            "ppl", "ppl W8A8/t", "tok/s", "wall s")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    for row in record["table"]:
        table.add_row(
            row["run"], str(row["seed"]), num(row["unique_tokens"], ",d"), num(row["epochs"], ".2f"),
            f"{row['val_loss']:.3f}", f"{row['sink_rate']:.1%}", f"{row['max_activation']:.1f}",
            f"{row['kurtosis']:.1f}", f"{num(row['emergence_5'], 'd')}/{num(row['emergence_10'], 'd')}",
            num(row["ppl_fp32"], ".2f"), num(row["ppl_w8a8_tensor"], ".2f"), f"{row['tokens_per_second']:,.0f}",
            num(row["wall_seconds"], ".0f"),
        )  # fmt: skip
    return table


def _expected_seconds(run: dict, durations: list[tuple[dict, float]]) -> float:
    """How long ``run`` should take: the slowest finished run of its variant scaled by steps, else the slowest
    finished run scaled by steps and ``COST`` (0 before any run has finished: the first wave always fits)."""

    def cost(r: dict) -> float:
        return COST.get(r["variant"], 1.0) * r["steps"]

    same = [(done, seconds) for done, seconds in durations if done["variant"] == run["variant"]]
    expected = max((seconds * cost(run) / cost(done) for done, seconds in same or durations), default=0.0)
    return expected if run.get("time_limit") is None else min(expected, run["time_limit"])


def _least_busy(gpus: int, busy: list[int | None]) -> int | None:
    """The GPU running the fewest of this study's runs (the lowest index of those), None without GPUs."""
    return min(range(gpus), key=busy.count) if gpus else None


def _run_queue(args, runs, queue, active, env, base, failed, cache, out, started) -> None:
    """Keep up to ``--parallel`` runs going on each of ``--gpus`` until the queue is empty (each run sees its one GPU
    through CUDA_VISIBLE_DEVICES); after each, rewrite the study record."""
    work = Path(args.work)
    durations: list[tuple[dict, float]] = []  # (run, wall seconds) of the finished runs
    while queue or active:
        while queue and len(active) < args.parallel * max(args.gpus, 1):
            run = queue[0]
            elapsed, expected = time.perf_counter() - started, _expected_seconds(run, durations)
            if args.finish_by is not None and elapsed + expected > args.finish_by:
                _say(f"--finish-by {args.finish_by:g} s: {run['name']} would end at about {elapsed + expected:.0f} s; "
                     f"{len(queue)} runs left for a later call")  # fmt: skip
                queue.clear()  # listed under "missing"; a later call with the same --work starts them
                break
            queue.pop(0)
            directory = work / run["name"]
            directory.mkdir(parents=True, exist_ok=True)
            log = (directory / "log.txt").open("w")
            log.write(" ".join(run["command"]) + "\n")
            log.flush()
            gpu = _least_busy(args.gpus, [g for *_, g in active.values()])
            placed = env if gpu is None else {**env, "CUDA_VISIBLE_DEVICES": str(gpu)}
            proc = subprocess.Popen(run["command"], stdout=log, stderr=subprocess.STDOUT, env=placed)
            active[run["name"]] = (proc, time.perf_counter(), log, gpu)
            where = "" if gpu is None else f" on GPU {gpu}"
            _say(f"started {run['name']}{where} (pid {proc.pid}; {len(queue)} queued)")
        time.sleep(0.5)
        for name, (proc, tick, log, _) in list(active.items()):
            if proc.poll() is None:
                continue
            del active[name]
            log.close()
            run = next(r for r in runs if r["name"] == name)
            result = _load_run(work, run)
            seconds = time.perf_counter() - tick
            durations.append((run, seconds))
            if proc.returncode != 0 or result is None:
                lines = (work / name / "log.txt").read_text(errors="replace").strip().splitlines()
                failed[name] = f"exit {proc.returncode}: {lines[-1] if lines else ''}"
                _say(f"FAILED {name} after {seconds:.0f} s: {failed[name]}")
                continue
            final = result["final"]
            _say(
                f"finished {name} in {seconds:.0f} s, Sink_1 {final['sink_rate']:.1%}, val loss "
                f"{final['val_loss']:.3f}, max |x| {final['max_activation']:.1f} ({len(active)} running, "
                f"{len(queue)} queued)"
            )
            try:  # the partial record: a device call can copy it out at any time
                record = aggregate(args, runs, {**base, "failed": failed}, cache)
                record["wall_seconds"] = time.perf_counter() - started
                _write(record, out)
            except Exception as exc:  # a broken partial record must not stop the runs still queued
                _say(f"could not write the partial record: {type(exc).__name__}: {exc}")


# -- main ----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--corpus", default=None, help="built corpus directory (default: embedded byte corpus)")
    parser.add_argument("--work", required=True, help="one directory per run: train.json, log.txt, checkpoints")
    parser.add_argument("--parallel", type=int, default=1, help="training processes at once on each GPU")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs to spread the runs over (default: every visible "
                        "one; 0: none, the runs choose their device)")  # fmt: skip
    parser.add_argument("--variants", nargs="*", default=["softmax", "gated", "softpick"], help="at the budget "
                        "(none: only the --sizes and long runs)")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sizes", nargs="*", default=["full"], help="unique training tokens per softmax-s0 run, "
                        "or 'full' (the whole training split); none: only the --variants and long runs")  # fmt: skip
    parser.add_argument("--checkpoint-steps", default="", help="comma list; saved by softmax seed 0 at full size "
                        "(the --long-steps run when there is one)")  # fmt: skip
    parser.add_argument("--long-steps", type=int, default=None, help="add long runs of this many steps")
    parser.add_argument("--long-variants", nargs="+", default=["softmax"], help="variants of the long runs "
                        "(softmax alone saves checkpoints)")  # fmt: skip
    parser.add_argument("--long-seeds", nargs="+", type=int, default=[0], help="seeds of the long run (the first "
                        "saves the checkpoints)")  # fmt: skip
    parser.add_argument("--long-eval-every", type=int, default=None, help="its evaluation interval")
    parser.add_argument("--long-time-limit", type=float, default=None, metavar="S", help="the long runs stop S "
                        "seconds after they start (train --time-limit; needs --min-lr-ratio 1)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--context", type=int, default=None, help="training sequence length (default: the preset's)")
    parser.add_argument("--bos", default=None, help="always / never (Gu et al. pack documents without BOS: never)")
    parser.add_argument("--min-lr-ratio", type=float, default=None, help="1: constant learning rate (Gu et al.'s 60M)")
    parser.add_argument("--metric-windows", default=None, help="stream / documents (Gu et al. probe document starts)")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--max-epochs", type=float, default=2.0, help="for the full-size runs")
    parser.add_argument("--device", default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile every run's training steps")
    parser.add_argument("--out", default=None, help="study JSON (default <work>/gu-study.json); the plot beside it")
    parser.add_argument(
        "--finish-by",
        type=float,
        default=None,
        metavar="S",
        help="start a run only if it should end within S seconds of the study's start, judged by the slowest "
        "finished run (a device lease ends; the rest wait for a later call)",
    )
    parser.add_argument("--first", nargs="+", default=[], metavar="RUN", help="start these runs first, in this "
                        "order (a lease that may end early: the baseline seeds before the variants)")  # fmt: skip
    parser.add_argument("--explain-checkpoints", type=int, default=0, metavar="N", help="run sinklab explain's "
                        "probes on each checkpoint, on N of the held-out probe sequences (0: none)")  # fmt: skip
    parser.add_argument("--aggregate-only", action="store_true", help="run nothing; rebuild JSON and plot")
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    visible = torch.cuda.device_count()
    args.gpus = visible if args.gpus is None else args.gpus
    if not 0 <= args.gpus <= visible:
        parser.error(f"--gpus {args.gpus}: this machine has {visible} visible GPUs; accepted: 0 to {visible}")
    probe_seqs = TrainConfig(preset=args.preset).resolved().metric_seqs
    if not 0 <= args.explain_checkpoints <= probe_seqs:
        parser.error(f"--explain-checkpoints {args.explain_checkpoints}: the {args.preset} preset measures "
                     f"{probe_seqs} probe sequences; accepted: 0 to {probe_seqs}")  # fmt: skip
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or work / "gu-study.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = plan(args)
    if not runs:
        parser.error("nothing to train: --variants, --sizes and --long-steps are all empty; accepted: at least one")
    for run in runs:  # a record of another version is trained again below; one of this version must be this run
        wrong = _made_with(work, run) == sinklab.__version__ and _mismatch(run, _load_run(work, run), args.preset)
        if wrong:
            parser.error(f"--work {work}: {run['name']}/train.json trained {wrong}; accepted: a --work whose run "
                         "records are the plan's runs, or one without them")  # fmt: skip
    names = [run["name"] for run in runs]
    unknown = [name for name in args.first if name not in names]
    if unknown:
        parser.error(f"--first: {', '.join(unknown)} not in the plan; accepted: {', '.join(names)}")
    runs.sort(key=lambda run: args.first.index(run["name"]) if run["name"] in args.first else len(args.first))
    hardware = _hardware()
    base = {
        "benchmark": "gu_study",
        "hardware": hardware,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "torch": torch.__version__,
        "provenance": run_provenance(texts=args.corpus or "embedded pydoc topics, byte tokens"),
        "plan": {
            "preset": args.preset,
            "steps": TrainConfig(preset=args.preset, steps=args.steps).resolved().steps,
            "corpus": args.corpus or "embedded pydoc topics, byte tokens",
            "parallel": args.parallel,
            "gpus": args.gpus,
            "variants": args.variants,
            "seeds": args.seeds,
            "sizes": args.sizes,
            "checkpoint_steps": args.checkpoint_steps,
            "long_steps": args.long_steps,
            "long_seeds": args.long_seeds if args.long_steps else [],
            "long_variants": args.long_variants if args.long_steps else [],
            "long_time_limit": args.long_time_limit,
            "runs": runs,
        },
        "published": PUBLISHED,
        "note": "the runs placed on one GPU share it (--parallel processes each): tokens/s and wall seconds are shared",
    }
    cache: dict = {}
    failed: dict[str, str] = {}
    started = time.perf_counter()
    if not args.aggregate_only:
        queue = []
        for run in runs:
            made = _made_with(work, run)
            if made == sinklab.__version__:
                _say(f"skipped {run['name']} (train.json exists)")
                continue
            if made is not None:  # another version measures differently: never one table of both
                old = work / f"{run['name']}.sinklab-{made}"
                (work / run["name"]).rename(old)
                _say(f"re-running {run['name']}: its train.json was made with sinklab {made} (moved to {old.name})")
            queue.append(run)
        if any(run["checkpoints"] for run in queue):
            _preflight(args, work)
        threads = max(1, (os.cpu_count() or 1) // (args.parallel * max(args.gpus, 1)))
        env = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), **os.environ}
        active: dict[str, tuple[subprocess.Popen, float, object, int | None]] = {}  # proc, start, log, GPU
        try:
            _run_queue(args, runs, queue, active, env, base, failed, cache, out, started)
        finally:  # interrupted or broken: stop the runs this study started (no train.json: they run again)
            for name, (proc, _, log, _) in active.items():
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
                    _say(f"stopped {name} (pid {proc.pid})")
                log.close()
    record = aggregate(args, runs, {**base, "failed": failed}, cache)
    record["wall_seconds"] = time.perf_counter() - started
    record["missing"] = [run["name"] for run in runs if run["name"] not in record["finished"]]
    _write(record, out)
    _say(f"wrote {out} and {out.with_suffix('.png')}")
    Console(width=180).print(_table(record))
    summary = {
        "benchmark": "gu_study",
        "hardware": hardware,
        "summary": {g: {k: v["mean"] for k, v in s.items() if k != "seeds"} for g, s in record["summary"].items()},
        "data_size": [{k: p[k] for k in ("unique_tokens", "epochs", "sink_rate")} for p in record["data_size"]],
        "checkpoints_match": not record["checkpoint_errors"]
        and all(c["sink_rate_equal"] for c in record["checkpoints"] if c["scan"] is not None),
        "checkpoint_errors": record["checkpoint_errors"],
        "failed": failed,
        "missing": record["missing"],
    }
    print(json.dumps(summary), flush=True)
    return record


if __name__ == "__main__":
    main()
