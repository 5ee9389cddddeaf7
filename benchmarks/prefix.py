"""Prefix key/values and test-time registers on an embedded model: the table of issue 14.

Rows (held-out text, ``sinklab.measure.quality``): ``none`` (the model as it is), ``keep-first-4`` (IntactKV: the
first 4 keys exact in the int4 KV cache; the other columns are the model as it is), ``prefix-1-init`` /
``prefix-4-init`` (the slots as initialised: the model's own keys/values of the tuning text's first n tokens, put in
front of every sequence, untuned), ``prefix-1`` / ``prefix-4`` (tuned: KL to the unchanged model + the outlier
penalty, model frozen), ``registers`` (training-free test-time register). For prefix rows the int4-KV column keeps
the n slots exact (they are not in the cache) and ppl_stream is window-only: zero real sinks, the prefix is the
sink; for none / keep-first-4 ppl_stream is 4 sinks + window. Tuning and held-out text: one token stream of the
embedded corpus, tuning from its start, held-out from its end (disjoint ranges recorded in the JSON).

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/prefix.py --model smollm2-135m          # CPU, 2 cores
    PYTHONPATH=src python3 benchmarks/prefix.py --model gemma3-270m --device cuda --out $OUT/prefix-gemma3-270m.json

Prints a table, then ONE JSON line; saves benchmarks/results/prefix-<model>.json and the tuned prefix files next to
it (prefix-<model>-n<N>.safetensors).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sinklab.data import read_texts
from sinklab.exploit.prefix import PrefixKV, save_prefix
from sinklab.exploit.prefix.evaluate import keep_first_row, method_row, split_corpus, table
from sinklab.exploit.prefix.registers import TestTimeRegisters
from sinklab.exploit.prefix.tune import TuneConfig, tune
from sinklab.models import load
from sinklab.progress import Progress
from sinklab.provenance import describe_texts, run_provenance

RESULTS = Path(__file__).parent / "results"

MEANING = {
    "none": "the model as it is; int4-KV quantizes every key; ppl_stream = 4 real sinks + window",
    "keep-first-4": "IntactKV / keep-first-N: ppl_kv4 keeps the first 4 real tokens' keys/values exact; ppl, "
    "ppl_w8a8 (per-tensor scales see every token: nothing to keep), outliers and sinks are the model as it is; "
    "ppl_stream = 4 real sinks + window",
    "prefix": "n tuned slots prepended to every sequence; ppl_kv4 keeps the n slots exact (they are not cache "
    "entries) and quantizes every real token; ppl_stream = window only, zero real sinks (the prefix is the sink)",
    "registers": "one register slot (the model's own keys/values of the register token at position -1) plus the "
    "register neurons switched off on every content token; ppl_kv4 keeps the register exact; ppl_stream = window "
    "only, zero real sinks",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tune-tokens", type=int, default=128)
    ap.add_argument("--tune-seqs", type=int, default=16)
    ap.add_argument("--eval-tokens", type=int, default=1024)
    ap.add_argument("--eval-seqs", type=int, default=2)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--objective", default="outliers")
    ap.add_argument("--weight", type=float, default=0.1)
    ap.add_argument("--sizes", default="1,4")
    ap.add_argument("--no-init-rows", action="store_true", help="skip the untuned prefix rows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / f"prefix-{args.model}.json"
    t_start = time.perf_counter()
    model, tok = load(args.model, device=args.device)
    texts = read_texts(None)
    tune_ids, eval_ids, split = split_corpus(
        tok, texts, args.tune_tokens, args.tune_seqs, args.eval_tokens, args.eval_seqs
    )
    rows, tuning, seconds = [], {}, {}
    with Progress() as progress:
        task = progress.add_task("rows", total=None)

        def done(name):
            progress.advance(task)
            progress.update(task, info=f"{name} done at {time.perf_counter() - t_start:.0f} s")

        t = time.perf_counter()
        none = method_row(model, eval_ids, "none", 0, args.window, done)
        rows.append(none)
        rows.append(keep_first_row(model, eval_ids, none, 4))
        seconds["none+keep-first-4"] = time.perf_counter() - t
        for n in [int(x) for x in args.sizes.split(",")]:
            prefix = PrefixKV.from_tokens(model, tune_ids[0, :n])
            if not args.no_init_rows:
                with prefix(model):
                    rows.append(method_row(model, eval_ids, f"prefix-{n}-init", n, args.window, done))
            config = TuneConfig(args.steps, args.lr, args.batch, args.objective, args.weight)
            steps = progress.add_task(f"tuning prefix-{n}", total=config.steps)
            t = time.perf_counter()
            history = tune(
                model, prefix, tune_ids.to(args.device), config,
                progress=lambda s, lo, steps=steps: progress.update(steps, advance=1, info=f"kl {lo['kl']:.4f}"),
            )  # fmt: skip
            seconds[f"tune prefix-{n}"] = time.perf_counter() - t
            prefix.meta["model"] = args.model
            save_prefix(prefix, out.with_name(f"prefix-{args.model}-n{n}.safetensors"))
            tuning[f"prefix-{n}"] = {
                "config": vars(config),
                "init_tokens": tok.convert_ids_to_tokens(tune_ids[0, :n].tolist()),
                "kl_first": history["kl"][:5],
                "kl_last": history["kl"][-5:],
                "penalty_first": history["penalty"][:5],
                "penalty_last": history["penalty"][-5:],
                "seconds": seconds[f"tune prefix-{n}"],
            }
            with prefix(model):
                rows.append(method_row(model, eval_ids, f"prefix-{n}", n, args.window, done))
        t = time.perf_counter()
        register_token = tok.bos_token_id if split["bos_per_sequence"] else tok.eos_token_id
        registers = TestTimeRegisters.build(model, tune_ids[:4].to(args.device), register_token)
        with registers(model):
            rows.append(method_row(model, eval_ids, "registers", 1, args.window, done))
        seconds["registers"] = time.perf_counter() - t
    by = {r["method"]: r for r in rows}
    goals = {}
    for n in [int(x) for x in args.sizes.split(",")]:
        p, k, base = by[f"prefix-{n}"], by["keep-first-4"], by["none"]
        goals[f"prefix-{n}"] = {
            "beats_keep_first_4_w8a8": p["ppl_w8a8"] < k["ppl_w8a8"],
            "beats_keep_first_4_kv4": p["ppl_kv4"] < k["ppl_kv4"],
            "ppl_within_1pct": p["ppl"] / base["ppl"] - 1 <= 0.01,
            "ppl_change": p["ppl"] / base["ppl"] - 1,
            "stream_zero_sinks_within_2pct_of_4_sinks": p["ppl_stream"] <= 1.02 * base["ppl_sinks"],
            "stream_change_vs_4_sinks": p["ppl_stream"] / base["ppl_sinks"] - 1,
        }
    record = {
        "model": args.model,
        "rows": rows,
        "goals": goals,
        "meaning": MEANING,
        "tuning": tuning,
        "registers": {**registers.found, "register_token": tok.convert_ids_to_tokens([register_token])[0]},
        "split": split,
        "window": args.window,
        "seconds": seconds,
        "threads": args.threads,
        "provenance": run_provenance(
            model, sequences=eval_ids.tolist(), texts=describe_texts(None), bos="per tokenizer", seed=0
        ),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(table(rows))
    print(json.dumps({"model": args.model, "rows": rows, "goals": goals, "out": str(out)}))


if __name__ == "__main__":
    main()
