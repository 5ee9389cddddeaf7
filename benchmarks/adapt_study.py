"""The adaptation study: can a pretrained model be made sink-free with a little training of a few parameters?

Every attention variant x the trainable sets that make sense for it (``sinklab.remove.adapt``), all at the same token
budget, data order and held-out text, plus the init ablation that qiuzh20/gated_attention issue #10 reports failing
(identity vs random gate init, with and without the KL term) and a plain-softmax LoRA control (what the same training
does without any variant). One base model is loaded once (bf16 on CUDA, bf16 autocast in training) and copied for
every run; the original model is measured once. Rows are written to ``--out`` after every run, so a cut run still
leaves them; runs that would not finish before ``--deadline-s`` are skipped and listed.

    export PYTHONPATH=src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    python3 benchmarks/adapt_study.py --device cuda --out benchmarks/results/adapt-h200.json
    python3 benchmarks/adapt_study.py --device cpu --smoke --out /tmp/adapt-smoke.json     # minutes, proves the script

Goal (issue "lightweight adaptation"): Sink_1 cut by >= 50 % (relative) and max |x| by >= 2x at <= +2 % perplexity
with <= 1 % of the parameters trained and <= 50M tokens, and window-only streaming perplexity within 10 % of the
original's 4 sinks + window. ``goal`` in each row says which parts a run meets.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

# name -> AdaptConfig fields; in priority order (a cut run keeps the first ones)
RUNS: dict[str, dict] = {
    "sink/lora+mass": {"variant": "sink", "trainable": "lora", "mass_penalty": 1.0},
    "gated-headwise/variant": {"variant": "gated", "headwise": True, "trainable": "variant"},
    "sink/variant": {"variant": "sink", "trainable": "variant"},
    "sink/lora": {"variant": "sink", "trainable": "lora"},
    "gated-headwise/lora": {"variant": "gated", "headwise": True, "trainable": "lora"},
    "softpick/lora": {"variant": "softpick", "trainable": "lora"},
    "softmax1/lora": {"variant": "softmax1", "trainable": "lora"},
    "kv_bias/lora": {"variant": "kv_bias", "trainable": "lora"},
    "clipped/lora": {"variant": "clipped", "trainable": "lora"},
    "sigmoid/lora": {"variant": "sigmoid", "trainable": "lora"},
    "softmax/lora (control)": {"variant": "softmax", "trainable": "lora"},
    # the init ablation of gated_attention issue #10: identity (W_g = 0, c = 2) vs random (N(0, 0.02), c = 1)
    "gated-headwise/variant init=random": {"variant": "gated", "headwise": True, "init": "default"},
    "gated-headwise/variant no KL": {"variant": "gated", "headwise": True, "beta": 0.0},
    "gated-headwise/variant init=random no KL": {"variant": "gated", "headwise": True, "init": "default", "beta": 0.0},
    "kv_bias/variant": {"variant": "kv_bias", "trainable": "variant"},
    "gated/variant": {"variant": "gated", "trainable": "variant"},  # elementwise: W_g [d, H*D], ~7 % of smollm2
    "sink/lora+mass+act": {"variant": "sink", "trainable": "lora", "mass_penalty": 1.0, "act_penalty": 1.0},
    "softpick/attention": {"variant": "softpick", "trainable": "attention"},
    "sink/all+mass+act": {"variant": "sink", "trainable": "all", "mass_penalty": 1.0, "act_penalty": 1.0},
}
SMOKE_RUNS = ("sink/lora+mass", "gated-headwise/variant", "softpick/lora", "gated-headwise/variant init=random no KL")
ROW_KEYS = ("model", "variant", "trainable", "trainable_frac", "tokens", "ppl_before", "ppl_after", "sink_rate_before",
            "sink_rate_after", "max_abs_before", "max_abs_after", "ppl_w8a8_after", "ppl_kv4_after",
            "stream_window_ppl_after", "stream_sinks_ppl_before")  # fmt: skip


def goal(row: dict) -> dict:
    """Which parts of the issue's goal a row meets."""
    return {
        "sink_rate_halved": row["sink_rate_after"] <= 0.5 * row["sink_rate_before"],
        "max_abs_halved": row["max_abs_after"] <= 0.5 * row["max_abs_before"],
        "ppl_within_2pct": row["ppl_after"] <= 1.02 * row["ppl_before"],
        "params_le_1pct": row["trainable_frac"] <= 0.01,
        "tokens_le_50M": row["tokens"] <= 50_000_000,
        "window_within_10pct_of_sinks": row["stream_window_ppl_after"] is not None  # None: no parallel evaluation
        and row["stream_window_ppl_after"] <= 1.10 * row["stream_sinks_ppl_before"],
    }


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, path)


def _table(rows: list[dict]) -> str:
    cols = (("run", 42), ("train%", 7), ("ppl", 13), ("Sink_1", 13), ("max|x|", 15), ("W8A8", 7), ("kv4", 7))
    head = " ".join(f"{c:>{w}s}" if i else f"{c:{w}s}" for i, (c, w) in enumerate((*cols, ("window", 7))))
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['run']:42s} {100 * r['trainable_frac']:7.3f} {r['ppl_before']:6.2f}>{r['ppl_after']:6.2f} "
            f"{r['sink_rate_before']:6.1%}>{r['sink_rate_after']:6.1%} "
            f"{r['max_abs_before']:7.0f}>{r['max_abs_after']:7.0f} "
            f"{r['ppl_w8a8_after']:7.2f} {r['ppl_kv4_after']:7.2f} {r['stream_window_ppl_after'] or float('nan'):7.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from sinklab.models import load
    from sinklab.provenance import run_provenance
    from sinklab.remove.adapt import AdaptConfig, _data, adapt, measure

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--tokens", type=int, default=655_360, help="training tokens per run (the same for all)")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--long-context", type=int, default=2048)
    parser.add_argument("--long-seqs", type=int, default=4)
    parser.add_argument("--eval-seqs", type=int, default=32)
    parser.add_argument("--evals", type=int, default=2, help="evaluations during training (plus the final one)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--corpus", default=None, help="a built corpus (default: data/train-corpus if there)")
    parser.add_argument("--runs", nargs="*", default=None, help=f"subset of: {', '.join(RUNS)}")
    parser.add_argument("--deadline-s", type=float, default=440.0, help="start no run that would end after this")
    parser.add_argument("--smoke", action="store_true", help="a few steps of a few runs at tiny sizes")
    parser.add_argument("--out", default="benchmarks/results/adapt-h200.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.device == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    if args.smoke:
        args.tokens, args.context, args.batch_size = 2 * 2 * 64, 64, 2
        args.long_context, args.long_seqs, args.eval_seqs, args.window, args.evals = 128, 1, 2, 32, 1
        args.deadline_s = float("inf")  # the smoke proves every part of the script: no run is skipped
    names = list(args.runs or (SMOKE_RUNS if args.smoke else RUNS))
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}; accepted: {', '.join(RUNS)}")
    skipped = {}
    if importlib.util.find_spec("peft") is None:  # LoRA needs peft (and accelerate): ship their wheels
        skipped = {n: "no peft" for n in names if RUNS[n].get("trainable") == "lora"}
        names = [n for n in names if n not in skipped]
        print(f"[adapt_study] peft is not installed: skipping {list(skipped)}", flush=True)
    corpus = args.corpus
    meta = Path("data/train-corpus/meta.json")
    if corpus is None and meta.exists() and json.loads(meta.read_text()).get("tokenizer") == args.model:
        corpus = "data/train-corpus"  # `make train-corpus`: 10.5M tokens of documentation in smollm2's tokenizer
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else None)
    print(f"[adapt_study] loading {args.model} ({dtype or 'float32'}) on {args.device}", flush=True)
    base, tokenizer = load(args.model, device=args.device, dtype=dtype)
    steps = args.tokens // (args.batch_size * args.context)
    common = AdaptConfig(
        model=args.model, tokens=args.tokens, context=args.context, batch_size=args.batch_size,
        long_context=args.long_context, long_seqs=args.long_seqs, eval_seqs=args.eval_seqs, window=args.window,
        eval_every=max(steps // args.evals, 1), corpus=corpus, device=args.device, dtype=dtype,
    )  # fmt: skip
    data = _data(common.check(), tokenizer, base.get_input_embeddings().num_embeddings, None)
    pristine = copy.deepcopy(base)  # copied before anything attaches to it: every run starts from this
    tick = time.perf_counter()
    original = measure(base, data, common.check())
    print(f"[adapt_study] original model measured in {time.perf_counter() - tick:.1f} s: ppl {original['ppl']:.2f}, "
          f"Sink_1 {original['sink_rate']:.1%}, max|x| {original['max_abs']:.0f}, window ppl "
          f"{original['ppl_window']:.2f}, sinks+window ppl {original['ppl_sinks']:.2f}", flush=True)  # fmt: skip
    out = Path(args.out)
    record = {
        "benchmark": "adapt_study",
        "hardware": "h200" if args.device.startswith("cuda") else "cpu",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "model": args.model,
        "smoke": args.smoke,
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "common": asdict(common),
        "data": data.source,
        "original": original,
        "rows": [],
        "runs": [],
        "skipped": skipped,
        "note": "every run: same base weights, token budget, data order and held-out text; before = the original "
        "model; Sink_1 at T=64, the other metrics at long_context",
        "provenance": run_provenance(base, texts=data.source, bos=common.bos, seed=common.seed),
    }
    _write(out, record)
    durations: list[float] = []
    for i, name in enumerate(names):
        elapsed = time.perf_counter() - started
        expected = sorted(durations)[len(durations) // 2] if durations else 0.0  # median: run 1 pays compilation
        if elapsed + expected > args.deadline_s:
            record["skipped"].update({n: "deadline" for n in names[i:]})
            print(f"[adapt_study] {elapsed:.0f} s elapsed, a run takes ~{expected:.0f} s: skipping {names[i:]}")
            break
        print(f"[adapt_study] run {i + 1}/{len(names)} {name} (at {elapsed:.0f} s)", flush=True)
        tick = time.perf_counter()
        config = replace(common, **RUNS[name])
        model = copy.deepcopy(pristine)
        try:
            result = adapt(config, model, tokenizer, before=original)
        except Exception as exc:  # one failing recipe must not lose the others: record it and go on
            record["runs"].append({"run": name, "error": f"{type(exc).__name__}: {exc}"})
            print(f"[adapt_study] {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
            _write(out, record)
            continue
        finally:
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        summary = result.summary()
        row = {"run": name, **{k: summary[k] for k in ROW_KEYS}, **summary}
        row.update(tokens_per_second=result.tokens_per_second, wall_seconds=time.perf_counter() - tick)
        row["attention_calls"] = result.attention_calls
        row["goal"] = goal(row)
        record["rows"].append(row)
        record["runs"].append({"run": name, "config": asdict(config), "history": result.history})
        durations.append(time.perf_counter() - tick)
        print(f"[adapt_study] {name}: {durations[-1]:.1f} s, {result.tokens_per_second:,.0f} tok/s, ppl "
              f"{row['ppl_before']:.2f} -> {row['ppl_after']:.2f}, Sink_1 {row['sink_rate_before']:.1%} -> "
              f"{row['sink_rate_after']:.1%}, max|x| {row['max_abs_before']:.0f} -> {row['max_abs_after']:.0f}, "
              f"window ppl {row['stream_window_ppl_after'] or float('nan'):.2f}", flush=True)  # fmt: skip
        _write(out, record)
    record["wall_seconds"] = time.perf_counter() - started
    _write(out, record)
    print(_table(record["rows"]))
    brief = {k: record[k] for k in ("benchmark", "hardware", "model", "smoke", "wall_seconds", "skipped")}
    brief["rows"] = [{k: r[k] for k in ("run", *ROW_KEYS[1:])} for r in record["rows"]]
    print(json.dumps(brief))
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
