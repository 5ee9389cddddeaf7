"""Attention sinks in hybrid decoders: how the share of softmax layers changes the sink.

    python benchmarks/hybrid_study.py --preset small --steps 2000 --corpus DIR --time-limit 1200 --out OUT.json
    python benchmarks/hybrid_study.py ... --seeds 0 1 2 --resume      # more seeds; keep what OUT.json has
    python benchmarks/hybrid_study.py --preset tiny --steps 5 --out /tmp/hybrid.json   # CPU smoke test
    python benchmarks/hybrid_study.py ... --compile    # torch.compile the steps (the torch Gated DeltaNet too)

On one H200 with fla's kernel, one seed of the eight layouts at 2,000 steps x 48 x 256 takes about 1,200 s (each run
107-152 s eager, the first Gated DeltaNet run of a process 140 s more for fla's Triton compile); ``--time-limit``
starts no run that would end past it, so list the runs that matter first.

For each of ``--seeds`` (all layouts of one seed before the next), every run trains one decoder from that seed on the
same token stream with the same width, depth, heads and recipe (sinklab's pre-training loop,
``sinklab.remove.train``); only the token mixer of each layer differs; ``by_layout`` gives mean, min and max over
the seeds. A
``1:k`` mix has one full softmax layer per k + 1 layers, the last of each group (OLMo-Hybrid's and Qwen3-Next's
layout, i % 4 == 3 at 1:3), and at least one:

- ``linear`` arm, transformers' OLMo-Hybrid (``olmo_hybrid``): Gated DeltaNet layers (Yang et al. 2025, "Gated Delta
  Networks") between plain softmax layers at 1:1, 1:3, 1:7; its 1:0 is Olmo3 (``olmo3``), the same post-norm block
  with QK-norm and softmax everywhere (OLMo-Hybrid refuses a config without a linear layer). Dense MLPs throughout.
- ``sliding`` arm, Olmo3 with a sliding window (query i sees key j iff i - W < j <= i): Gemma 3's 5 sliding : 1
  global pattern, and every layer sliding; the 1:0 run is its all-global end.
- ``gated`` arm, transformers' Qwen3-Next (``qwen3_next``, MoE off: ``num_experts=0`` gives every block the dense MLP)
  at 1:0 and 1:3: its softmax layers carry an output gate, sigmoid(x W_g) * attention (Qiu et al. 2025, "Gated
  Attention"), which removes sinks in dense models; its Gated DeltaNet layers are Qwen3-Next's own.

Measured at the end on held-out text by ``sinklab.scan`` (the code of ``sinklab scan``): Sink_1^0.3 at T = 64 (Gu et
al. 2024, "When Attention Sink Emerges in Language Models"; alpha_1^{l,h} = mean over the queries that can see key 1
of A_{t,1} in one sequence, Sink_1 = mean over (sequence, l, h) of [alpha_1 > 0.3], their statistic since sinklab
0.2; ``sink_rate_of_mean`` thresholds the mean over sequences, 0.1's) over the softmax layers only (linear layers
have no attention weights: scan gives them NaN rows, which the rate skips), also split into full and sliding layers;
first-token mass (mean alpha_1 over the softmax heads), max |x| of the residual stream, validation loss. Which
Gated DeltaNet code ran is recorded: transformers calls flash-linear-attention's Triton kernel when ``fla`` is
importable (``python3 -m pip install fla-core einops``), its own torch reference otherwise.

Partial results are written after every run; a rich table, then ONE JSON line last.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from train_study import _hardware, _impl, train_guarded

from sinklab.measure import metrics
from sinklab.provenance import run_provenance
from sinklab.remove.train import PRESETS, TrainConfig

LINEAR, SLIDING, FULL = "linear_attention", "sliding_attention", "full_attention"
LETTERS = {LINEAR: "L", SLIDING: "S", FULL: "F"}


@dataclass(frozen=True)
class Mix:
    """One run's layer layout: one full softmax layer per ``every`` layers (None: none), the others ``other``."""

    arm: str
    every: int | None
    other: str


RUNS: dict[str, Mix] = {
    "softmax": Mix("linear", 1, LINEAR),  # 1:0, every layer full softmax (Olmo3)
    "linear-1:1": Mix("linear", 2, LINEAR),
    "linear-1:3": Mix("linear", 4, LINEAR),
    "linear-1:7": Mix("linear", 8, LINEAR),
    "sliding-5:1": Mix("sliding", 6, SLIDING),  # Gemma 3
    "sliding": Mix("sliding", None, SLIDING),
    "gated-1:0": Mix("gated", 1, LINEAR),
    "gated-1:3": Mix("gated", 4, LINEAR),
}


def layer_types(mix: Mix, layers: int) -> list[str]:
    """Layer i is full softmax iff (i + 1) % every == 0; a depth below ``every`` keeps its last layer full."""
    if mix.every is None:
        return [mix.other] * layers
    full = {i for i in range(layers) if (i + 1) % mix.every == 0} or {layers - 1}
    return [FULL if i in full else mix.other for i in range(layers)]


def model_config(mix: Mix, preset: str, window: int) -> tuple[str, dict]:
    """(transformers model type, config fields) of ``mix`` at ``preset``'s shape: linear layers get the softmax layers'
    heads and head dim for keys and values; RoPE base 10,000 everywhere (Olmo3's default is 500,000)."""
    p = PRESETS[preset]
    types = layer_types(mix, p.layers)
    head_dim = p.hidden // p.heads
    linear = dict(
        linear_num_key_heads=p.heads,
        linear_num_value_heads=p.heads,
        linear_key_head_dim=head_dim,
        linear_value_head_dim=head_dim,
    )
    ids = dict(bos_token_id=None, eos_token_id=None, layer_types=types)
    if mix.arm == "gated":
        return "qwen3_next", {**ids, **linear, "head_dim": head_dim, "num_experts": 0}
    if LINEAR in types:
        return "olmo_hybrid", {**ids, **linear, "rope_theta": 10_000.0}
    return "olmo3", {**ids, "rope_theta": 10_000.0, "sliding_window": window}


def picked_implementation(decorated: Callable) -> tuple[Callable, tuple[str, ...] | None]:
    """(function, devices it runs on or None) behind transformers' ``use_kernel_func_from_hub_with_fallback``: the
    wrapper keeps its pick in the closure variable ``implementation`` (and, from 5.25, ``supported_devices``); with the
    ``kernels`` package installed (a dependency from 5.25) the wrapper itself sits in a module whose ``forward`` calls
    it as ``func``."""
    wrapper = decorated
    if isinstance(wrapper, torch.nn.Module):
        wrapper = inspect.getclosurevars(type(wrapper).forward).nonlocals["func"]
    picked = inspect.getclosurevars(wrapper).nonlocals if inspect.isfunction(wrapper) else {}
    return picked.get("implementation", wrapper), picked.get("supported_devices")


def linear_kernel(architecture: str) -> str | None:
    """The chunked gated-delta-rule function the architecture's Gated DeltaNet layers call (transformers picks it when
    the modeling module is imported: flash-linear-attention's kernel when ``fla`` imports, else its torch reference;
    from transformers 5.25 the pick applies to the devices named, other inputs take the reference); None for an
    architecture without them."""
    module = importlib.import_module(f"transformers.models.{architecture}.modeling_{architecture}")
    decorated = getattr(module, "torch_chunk_gated_delta_rule", None)
    if decorated is None:
        return None
    fn, devices = picked_implementation(decorated)
    name = f"{fn.__module__}.{fn.__qualname__}"
    if name.startswith("fla."):
        where = f" on {', '.join(devices)} inputs, else the torch reference" if devices else ""
        return f"flash-linear-attention (fla {importlib.import_module('fla').__version__}): {name}{where}"
    return f"transformers torch reference: {name}"


def summary(name: str, mix: Mix, run: dict) -> dict:
    """One row of the table from a finished run: shares of the layout, the sink metrics of its softmax layers."""
    final, types = run["final"], run["layer_types"]
    share = torch.tensor(final["sink_share"], dtype=torch.float64)  # [L, H], NaN rows: linear layers

    def rate(kind: str) -> float | None:
        rows = [i for i, t in enumerate(types) if t == kind]
        return metrics.sink_rate(share[rows]) if rows else None

    return {
        "run": name,
        "seed": run["config"]["seed"],
        "arm": mix.arm,
        "architecture": run["config"]["architecture"],
        "softmax_share": sum(t != LINEAR for t in types) / len(types),
        "full_attention_share": types.count(FULL) / len(types),
        "layer_pattern": "".join(LETTERS[t] for t in types),
        "sink_rate": final["sink_rate"],
        "sink_rate_of_mean": final.get("sink_rate_of_mean"),  # the statistic of the studies made with sinklab 0.1
        "sink_rate_full": rate(FULL),
        "sink_rate_sliding": rate(SLIDING),
        "first_token_mass": final["first_token_mass_mean"],
        "max_activation": final["max_activation"],
        "val_loss": final["val_loss"],
        "params": run["params"],
        "train_tokens": final["tokens"],
        "tokens_per_second": run["tokens_per_second"],
        "seconds": final["wall_seconds"],
    }


SUMMARY_KEYS = ("sink_rate", "sink_rate_full", "sink_rate_sliding", "first_token_mass", "max_activation", "val_loss")


def by_layout(rows: list[dict]) -> dict[str, dict]:
    """Mean, min and max over seeds of every layout's metrics (None where a layout has no such layers)."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(row["run"] for row in rows):
        mine = [row for row in rows if row["run"] == name]
        entry: dict = {"seeds": [row["seed"] for row in mine], "layer_pattern": mine[0]["layer_pattern"],
                       "arm": mine[0]["arm"], "full_attention_share": mine[0]["full_attention_share"],
                       "softmax_share": mine[0]["softmax_share"]}  # fmt: skip
        for key in SUMMARY_KEYS:
            values = [row[key] for row in mine if row[key] is not None]
            entry[key] = (
                {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)}
                if values else None
            )  # fmt: skip
        out[name] = entry
    return out


def _table(rows: list[dict]) -> Table:
    table = Table(title="sinklab hybrid study (same width, depth, data, steps and seed; only the token mixer differs)")
    cols = ("run", "seed", "model", "layers", "softmax share", "Sink_1", "full / sliding", "1st-token mass", "max |x|",
            "loss")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    for row in rows:
        split = [f"{row[k]:.1%}" if row[k] is not None else "-" for k in ("sink_rate_full", "sink_rate_sliding")]
        table.add_row(
            row["run"],
            str(row["seed"]),
            row["architecture"],
            row["layer_pattern"],
            f"{row['softmax_share']:.3f}",
            f"{row['sink_rate']:.1%}",
            " / ".join(split),
            f"{row['first_token_mass']:.3f}",
            f"{row['max_activation']:.1f}",
            f"{row['val_loss']:.3f}",
        )
    return table


PANELS = (
    ("sink_rate", "Sink_1^0.3 of the softmax layers (T=64)"),
    ("first_token_mass", "first-token mass (mean alpha_1)"),
    ("max_activation", "max |residual activation|"),
    ("val_loss", "validation loss"),
)
ARMS = {
    "linear": "full softmax + Gated DeltaNet (OLMo-Hybrid)",
    "sliding": "full softmax + sliding window (Olmo3)",
    "gated": "gated softmax + Gated DeltaNet (Qwen3-Next)",
}


def plot(record: dict, path: Path) -> None:
    """Each panel against the share of full-attention layers, one line per arm (the linear and sliding arms share
    the all-softmax run): the mean over seeds, bars from the lowest to the highest seed; the last panel is Sink_1
    over training, one line per layout (the mean over its seeds at each evaluation)."""
    from matplotlib.figure import Figure

    from sinklab.report.plots import save

    rows, window = record["rows"], record["window"]
    layouts = by_layout(rows)
    fig = Figure(figsize=(4.6 * (len(PANELS) + 1), 4.4), layout="constrained")
    *axes, curve_ax = fig.subplots(1, len(PANELS) + 1)
    _sink_over_training(curve_ax, record["runs"])
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        for arm, title in ARMS.items():
            entries = [
                entry
                for name, entry in layouts.items()
                if (entry["arm"] == arm or (arm == "sliding" and name == "softmax")) and entry[key] is not None
            ]
            points = sorted(
                (entry["full_attention_share"], entry[key]["mean"], entry[key]["min"], entry[key]["max"])
                for entry in entries
            )
            if points and any(entry["arm"] == arm for entry in layouts.values()):
                x, mean, low, high = (list(column) for column in zip(*points, strict=True))
                bars = [
                    [m - lo for m, lo in zip(mean, low, strict=True)],
                    [h - m for m, h in zip(mean, high, strict=True)],
                ]
                ax.errorbar(x, mean, yerr=bars, marker="o", capsize=3, label=_arm_label(title, entries))
        ax.set(
            title=label,
            xlabel=f"share of full-attention layers (others: linear or window {window})",
            ylabel=label,
        )
        ax.set_xticks([0, 1 / 8, 1 / 4, 1 / 2, 1], ["0", "1/8", "1/4", "1/2", "1"])
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=8)  # off the data
    save(fig, path)


def _arm_label(title: str, entries: list[dict]) -> str:
    """The legend entry of one arm: how many seeds its points average (a range while the seeds are still coming)."""
    counts = sorted({len(entry["seeds"]) for entry in entries})
    if counts == [1]:
        return f"{title}, 1 seed"
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{title}, mean of {seeds} seeds per point"


def _sink_over_training(ax, runs: list[dict]) -> None:
    """Sink_1 of the softmax layers at every evaluation against training tokens, the mean over each layout's seeds."""
    curves: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        for point in run["history"]:
            curves.setdefault(run["study_name"], {}).setdefault(point["tokens"], []).append(point["sink_rate"])
    for name, points in curves.items():
        tokens = sorted(points)
        seeds = len(points[tokens[-1]])
        ax.plot([t / 1e6 for t in tokens], [sum(points[t]) / len(points[t]) for t in tokens],
                label=name if seeds == 1 else f"{name} ({seeds} seeds)")  # fmt: skip
    ax.set(title="Sink_1 during training", xlabel="training tokens (millions)",
           ylabel="Sink_1^0.3 of the softmax layers")  # fmt: skip
    ax.legend(fontsize=7)


def _resumed(previous: dict, fresh: dict, parser: argparse.ArgumentParser) -> dict:
    """The previous record with this call's provenance, if it was made with the same budget and sinklab version (two
    versions may measure differently: one table never mixes them); else a usage error."""
    made, now = previous["provenance"].get("sinklab"), fresh["provenance"]["sinklab"]
    if made != now:
        parser.error(f"--resume: the record was made with sinklab {made}, this is {now} (the two may measure "
                     "differently); accepted: a record of the same version, or a new --out")  # fmt: skip
    for key in ("preset", "steps", "window", "corpus"):
        if previous.get(key) != fresh[key]:
            parser.error(f"--resume: {key} {fresh[key]!r} differs from the record's {previous.get(key)!r}; accepted: "
                         "the same --preset, --steps, --window and --corpus, or a new --out")  # fmt: skip
    calls = [*previous.get("calls", [previous["provenance"]]), fresh["provenance"]]
    return {**previous, "provenance": fresh["provenance"], "calls": calls}


def _stream(run: dict) -> str:
    """The digest of the tokens a run trained on (the corpus's training split, the same for every seed)."""
    return run["provenance"]["texts"]["source"]["train_tokens_sha256"]


def _write(record: dict, args: argparse.Namespace, out: Path, seconds: float) -> None:
    """Write the record as it stands, after every run too: what a --resume still owes is recomputed each time, so a
    call cut off mid-study leaves a record whose ``missing`` names exactly the (run, seed) pairs it lacks."""
    trained = {f"{row['run']}/s{row['seed']}" for row in record["rows"]}
    wanted = [*record.get("missing", []), *(f"{name}/s{seed}" for seed in args.seeds for name in args.runs)]
    record["missing"] = [pair for pair in dict.fromkeys(wanted) if pair not in trained]
    record["by_layout"] = by_layout(record["rows"])
    record["wall_seconds"] = seconds
    out.write_text(json.dumps(record, indent=1))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=list(PRESETS))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--corpus", default=None, help="built corpus directory (default: embedded byte corpus)")
    parser.add_argument("--runs", nargs="*", default=list(RUNS), help=f"subset of {', '.join(RUNS)}")
    parser.add_argument("--window", type=int, default=32, help="sliding window W of the sliding layers")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="every run once per seed (seed-major)")
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/hybrid-<hw>.json)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every run's training steps")
    parser.add_argument("--time-limit", type=float, default=None, help="start no run that would end past it (s)")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out (the same preset, "
                        "steps, window and corpus) and run only the missing (run, seed) pairs")  # fmt: skip
    args = parser.parse_args(argv)
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; accepted: {', '.join(RUNS)}")
    if args.window < 1:
        parser.error("--window must be a positive integer")
    hardware = _hardware()
    out = Path(args.out or f"benchmarks/results/hybrid-{hardware}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    console = Console()
    steps = TrainConfig(preset=args.preset, steps=args.steps).resolved().steps
    record: dict = {
        "benchmark": "hybrid_study",
        "hardware": hardware,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "preset": asdict(PRESETS[args.preset]) | {"name": args.preset},
        "steps": steps,
        "window": args.window,
        "corpus": args.corpus or "embedded pydoc topics, byte tokens",
        "note": "every run: same width, depth, heads, token stream and step count per seed; only the token mixers "
        "differ",
        "linear_kernel": {},
        "provenance": {
            **run_provenance(texts=args.corpus or "embedded byte corpus", seed=args.seeds[0]),
            "command": " ".join(["python3 benchmarks/hybrid_study.py", *(sys.argv[1:] if argv is None else argv)]),
        },
        "rows": [],
        "runs": [],
    }
    if args.resume and out.exists():
        record = _resumed(json.loads(out.read_text()), record, parser)
    done = {(row["run"], row["seed"]) for row in record["rows"]}
    record.pop("skipped", None)
    started, longest = time.perf_counter(), 0.0
    for seed, name in ((seed, name) for seed in args.seeds for name in args.runs):
        if (name, seed) in done:
            console.print(f"{name} seed {seed}: in {out} already")
            continue
        elapsed = time.perf_counter() - started
        if args.time_limit is not None and elapsed + 1.1 * longest > args.time_limit:
            record.setdefault("skipped", []).append(f"{name}/s{seed}")
            console.print(f"[yellow]{name} seed {seed}: skipped, {elapsed:.0f} s spent of the {args.time_limit:.0f} "
                          "s limit[/]")  # fmt: skip
            continue
        mix = RUNS[name]
        architecture, fields = model_config(mix, args.preset, args.window)
        config = TrainConfig(
            preset=args.preset,
            steps=args.steps,
            corpus=args.corpus,
            architecture=architecture,
            model_config=fields,
            eval_every=args.eval_every,
            quant_eval=False,
            compile=args.compile,
            seed=seed,
        )
        console.print(f"[bold]{name}[/] seed {seed}: {architecture} {fields['layer_types']}")
        result, error, seconds = train_guarded(config, name, console)
        longest = max(longest, seconds)
        if result is None:
            record.setdefault("failed", {})[f"{name}/s{seed}"] = error
            continue
        run = {"study_name": name, "attention_impl": _impl(result.attention_calls), **result.to_dict()}
        streams = {_stream(kept) for kept in record["runs"]}
        if streams and _stream(run) not in streams:  # a rebuilt corpus that differs: one table never mixes streams
            reason = (
                f"its training tokens (sha256 {_stream(run)}) differ from the record's ({', '.join(sorted(streams))})"
                "; accepted: the corpus the record was made on, or a new --out"
            )
            record.setdefault("failed", {})[f"{name}/s{seed}"] = reason
            console.print(f"[red]{name} seed {seed}: {reason}; the study stops[/]")
            break
        kernel = linear_kernel(architecture) if LINEAR in fields["layer_types"] else None
        if kernel is not None:  # only layouts with linear layers say which kernel ran them (gated-1:0 has none)
            record["linear_kernel"][architecture] = kernel
        run["layer_types"] = fields["layer_types"]
        record["runs"].append(run)
        record["rows"].append(summary(name, mix, run))
        _write(record, args, out, time.perf_counter() - started)
        row = record["rows"][-1]
        console.print(
            f"[bold]{name}[/] seed {seed} done: Sink_1 {row['sink_rate']:.1%}, first-token mass "
            f"{row['first_token_mass']:.3f}, max |x| {row['max_activation']:.1f}, val loss {row['val_loss']:.3f}, "
            f"{result.tokens_per_second:,.0f} tok/s, {time.perf_counter() - started:.0f} s so far"
        )
    _write(record, args, out, time.perf_counter() - started)
    if record["rows"]:
        plot(record, out.with_suffix(".png"))
    Console(width=160).print(_table(record["rows"]))
    keys = ("benchmark", "hardware", "linear_kernel", "by_layout", "failed", "skipped", "missing")
    line = {k: record[k] for k in keys if k in record}
    line["rows"] = [{k: row[k] for k in ("run", "seed", "sink_rate", "val_loss")} for row in record["rows"]]
    print(json.dumps(line))
    return record


if __name__ == "__main__":
    main()
