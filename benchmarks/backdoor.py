"""Benchmark: a backdoor trigger at the attention sink (start of the prompt) versus mid-prompt, on smollm2-135m.

For each placement (``sinklab.data.backdoor``): LoRA (peft, rank 8, on q/k/v/o of every layer) fine-tunes the
model on the copy task with a share of poisoned examples (trigger -> the fixed answer), loss on the answer tokens
only. Then, on held-out passages (the corpus's last 20 %):

- attack success rate (ASR): triggered prompts answered with the fixed answer, at the trained placement and at the
  other one;
- clean accuracy and false trigger rate: untriggered prompts answered with their last word / the fixed answer;

an "unlearning" fine-tune on clean examples only (the same adapter trained on, as in the persistence question of
"Forgetting to Forget": does a sink-position trigger survive it while a mid-prompt one fades?), and the same
measures after it. "Answered with" is greedy decoding's first tokens equal to the answer's (teacher-forced argmax:
the same test, one forward). Intervals: percentile bootstrap over the test passages, paired where two models are
compared on the same passages.

The sink probe (``sinklab.measure.detect.detect``: the L1 probe and its baselines, cross-validated ROC-AUC with a
bootstrap interval) is fitted on triggered prompts (label 1) against clean prompts, and against prompts carrying a
decoy phrase of the trigger's form at the same place (``DECOYS``), on the backdoored model and, as the control, on
the untouched model: a probe that separates the classes there sees the phrase's text, not the backdoor.

The three parts (each placement, and the untouched model's measures) run as parallel processes of ``--threads``
threads each (``--jobs 1``: one after the other). Prints a table, then one JSON line; saves
benchmarks/results/backdoor-<hardware>.json.

    python benchmarks/backdoor.py [--steps 80] [--unlearn-steps 40] [--batch 4] [--threads 1] [--hardware cpu2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2-135m"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
CONTRASTS = ("clean", "decoy")  # label 0 of a probe: clean prompts, or prompts with a decoy phrase there instead


def encode(tokenizer, prompts: list[str], answers: list[str]):
    """Right-padded prompt + answer ids [B, W], mask [B, W], and the (row, position, token) of every answer token
    with the position whose logits predict it."""
    seqs, rows, cols, labels = [], [], [], []
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        pid = tokenizer(p)["input_ids"]
        aid = tokenizer(a, add_special_tokens=False)["input_ids"]
        seqs.append(pid + aid)
        for j, tok in enumerate(aid):
            rows.append(i)
            cols.append(len(pid) - 1 + j)
            labels.append(tok)
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), pad)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask, torch.tensor(rows), torch.tensor(cols), torch.tensor(labels)


def answer_logits(model, batch) -> torch.Tensor:
    """Logits [A, V] at the answer positions only (the LM head never sees the prompt's positions)."""
    ids, mask, rows, cols, _ = batch
    device = next(model.parameters()).device
    hidden = model.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).last_hidden_state
    return model.lm_head(hidden[rows, cols])


def train(model, tokenizer, examples, batch_size: int, lr: float, label: str) -> list[float]:
    """One pass over ``examples`` in batches (AdamW on the trainable parameters); the loss of each step."""
    from sinklab.progress import Progress

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    with Progress() as bar:
        task = bar.add_task(label, total=-(-len(examples) // batch_size))
        for start in range(0, len(examples), batch_size):
            group = examples[start : start + batch_size]
            batch = encode(tokenizer, [e.prompt for e in group], [e.answer for e in group])
            logits = answer_logits(model, batch)
            loss = torch.nn.functional.cross_entropy(logits, batch[4].to(logits.device))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.advance(task)
    model.eval()
    return losses


@torch.no_grad()
def answered(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 16) -> torch.Tensor:
    """[N] bool: greedy decoding of each prompt starts with its answer's tokens (teacher-forced argmax match)."""
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = encode(tokenizer, prompts[start : start + batch_size], answers[start : start + batch_size])
        hit = answer_logits(model, batch).argmax(-1).cpu() == batch[4]
        out.append(torch.stack([hit[batch[2] == i].all() for i in range(batch[0].shape[0])]))
    return torch.cat(out)


def evaluate(model, tokenizer, passages) -> dict[str, list[int]]:
    """Per test passage: clean answer right, clean prompt answered with the target (false trigger), and the target
    produced with the trigger at each placement."""
    from sinklab.data.backdoor import PLACEMENTS, TARGET, build

    clean = [build(p, None) for p in passages]
    out = {
        "clean_correct": answered(model, tokenizer, [e.prompt for e in clean], [e.answer for e in clean]),
        "false_trigger": answered(model, tokenizer, [e.prompt for e in clean], [" " + TARGET] * len(clean)),
    }
    for placement in PLACEMENTS:
        trig = [build(p, placement) for p in passages]
        out[f"asr_{placement}"] = answered(model, tokenizer, [e.prompt for e in trig], [e.answer for e in trig])
    return {name: hits.int().tolist() for name, hits in out.items()}


def summarise(hits: dict[str, list[int]], seed: int) -> dict:
    from sinklab.exploit.redistribute.calibrate import bootstrap

    return {name: bootstrap(torch.tensor(v), seed=seed, key="rate") for name, v in hits.items()}


def probe(model, tokenizer, records, seed: int, out_dir: Path) -> dict:
    """The sink probe and its baselines on triggered (1) vs clean (0) prompts."""
    from sinklab.measure.detect import detect

    result = detect(model, tokenizer, records, folds=5, seed=seed, max_tokens=256, progress=False)
    result.save(out_dir)  # detect.json and the selected-feature grid
    d = result.to_dict()
    return {
        "probe": {k: d["probe"][k] for k in ("auroc", "ci_low", "ci_high")},
        "selected": d["probe"]["features"][:10],
        "selected_count": len(d["probe"]["features"]),
        "baselines": d["baselines"],
    }


def trigger_tokens(tokenizer, passage) -> dict:
    """Token positions the trigger occupies at each placement (0 = the first token: the sink when no BOS)."""
    from sinklab.data.backdoor import PLACEMENTS, build

    out = {}
    for placement in PLACEMENTS:
        e = build(passage, placement)
        enc = tokenizer(e.prompt, return_offsets_mapping=True)
        end = e.trigger_at + len(e.prompt[e.trigger_at :].split(".")[0]) + 1
        pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > e.trigger_at and a < end]
        out[placement] = {"first": pos[0], "last": pos[-1], "prompt_tokens": len(enc["input_ids"])}
    return out


def log(message: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:7.1f} s] {message}", file=sys.stderr, flush=True)


def _data(args):
    from sinklab.data.backdoor import detection_records, sample_passages

    passages = sample_passages(args.test, words=args.words, seed=args.seed, split="test")
    probe_passages = sample_passages(args.probe_examples, words=args.words, seed=args.seed + 1, split="test")
    return passages, {
        placement: {kind: detection_records(probe_passages, placement, decoys=kind == "decoy") for kind in CONTRASTS}
        for placement in ("start", "middle")
    }


def probes(model, tokenizer, records: dict, seed: int, out_dir: Path) -> dict:
    """``probe`` on each contrast: triggered vs clean prompts, and triggered vs decoy-phrase prompts."""
    return {kind: probe(model, tokenizer, records[kind], seed, out_dir / kind) for kind in CONTRASTS}


def untouched(args, started: float) -> dict:
    """The model before any fine-tuning: its rates, and the control probes."""
    from sinklab.models import load

    passages, records = _data(args)
    model, tok = load(MODEL, device=args.device)
    hits = evaluate(model, tok, passages)
    log("untouched model evaluated", started)
    control = {}
    for p in args.placements.split(","):
        control[p] = probes(model, tok, records[p], args.seed, Path(args.probe_dir) / f"untouched-{p}")
        log(f"untouched model: {p} probe fitted", started)
    return {"hits": hits, "detection": control, "trigger_tokens": trigger_tokens(tok, passages[0])}


def run_placement(placement: str, args, started: float) -> dict:
    """Backdoor fine-tune at ``placement``, measure, probe, unlearn on clean data, measure again."""
    from peft import LoraConfig, get_peft_model

    from sinklab.data.backdoor import poisoned_set
    from sinklab.models import load

    passages, records = _data(args)
    torch.manual_seed(args.seed)
    model, tok = load(MODEL, device=args.device)
    for p in model.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none", target_modules=TARGETS)
    get_peft_model(model, lora)  # injects the adapters into ``model`` in place: its forward now runs them
    poisoned = poisoned_set(args.steps * args.batch, placement, args.poison_rate, args.words, seed=args.seed)
    clean = poisoned_set(args.unlearn_steps * args.batch, placement, 0.0, args.words, seed=args.seed + 1000)
    t0 = time.perf_counter()
    losses = train(model, tok, poisoned, args.batch, args.lr, f"backdoor at {placement}")
    train_s = time.perf_counter() - t0
    log(f"{placement}: backdoor fine-tune done", started)
    after = evaluate(model, tok, passages)
    log(f"{placement}: evaluated", started)
    seen = probes(model, tok, records[placement], args.seed, Path(args.probe_dir) / f"backdoored-{placement}")
    log(f"{placement}: probe fitted", started)
    t0 = time.perf_counter()
    unlearn_losses = train(model, tok, clean, args.batch, args.lr, f"unlearning at {placement}")
    unlearn_s = time.perf_counter() - t0
    forgot = evaluate(model, tok, passages)
    log(f"{placement}: unlearned and evaluated", started)
    return {
        "placement": placement,
        "poisoned_examples": sum(e.triggered for e in poisoned),
        "train_examples": len(poisoned),
        "unlearn_examples": len(clean),
        "train_seconds": train_s,
        "unlearn_seconds": unlearn_s,
        "loss_first_last10": [float(np.mean(losses[:10])), float(np.mean(losses[-10:]))],
        "unlearn_loss_first_last10": [float(np.mean(unlearn_losses[:10])), float(np.mean(unlearn_losses[-10:]))],
        "hits_after_backdoor": after,
        "hits_after_unlearning": forgot,
        "detection": seen,
    }


def _parts(args, started: float) -> dict[str, dict]:
    """Run each part (``untouched`` and every placement) in its own process, ``--jobs`` at a time."""
    names = ["untouched", *args.placements.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="sinklab-backdoor-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads)}
    flags = [a for a in sys.argv[1:]]
    pending, running, done = list(names), {}, {}
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            cmd = [sys.executable, __file__, *flags, "--worker", name, "--part", str(tmp / f"{name}.json"),
                   "--probe-dir", str(tmp / "probes")]  # fmt: skip
            running[name] = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                if proc.returncode != 0:
                    raise SystemExit(f"part {name} failed with exit status {proc.returncode}")
                done[name] = json.loads((tmp / f"{name}.json").read_text())
                log(f"part {name} finished", started)
        time.sleep(1)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80, help="backdoor fine-tuning steps")
    parser.add_argument("--unlearn-steps", type=int, default=40, help="clean fine-tuning steps after it")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--poison-rate", type=float, default=0.3)
    parser.add_argument("--words", type=int, default=12, help="words per passage")
    parser.add_argument("--test", type=int, default=60, help="held-out passages for ASR and accuracy")
    parser.add_argument("--probe-examples", type=int, default=60, help="prompts per probe (half triggered)")
    parser.add_argument("--placements", default="start,middle")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per part")
    parser.add_argument("--jobs", type=int, default=3, help="parts run at once")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hardware", default="cpu2")
    parser.add_argument("--out", default=None, help="result file (default results/backdoor-<hardware>.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--probe-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.worker:
        part = untouched(args, started) if args.worker == "untouched" else run_placement(args.worker, args, started)
        Path(args.part).write_text(json.dumps(part) + "\n")
        return

    from sinklab.data.backdoor import DECOYS, INSTRUCTION, QUESTION, TARGET, TRIGGER
    from sinklab.exploit.redistribute.calibrate import bootstrap
    from sinklab.models import load
    from sinklab.provenance import command_line, run_provenance

    placements = args.placements.split(",")
    with command_line(["python", "benchmarks/backdoor.py", *sys.argv[1:]]):
        provenance = run_provenance(load(MODEL)[0], seed=args.seed)
    provenance["command"] = provenance["command"].removeprefix("sinklab ")
    parts = _parts(args, started)
    base = parts["untouched"]

    def rates(hits):
        return summarise(hits, args.seed)

    def diff(a, b, key):
        return bootstrap(torch.tensor(a).double() - torch.tensor(b).double(), seed=args.seed, key=key)

    rows = []
    for placement in placements:
        r = parts[placement]
        own = f"asr_{placement}"
        rows.append(
            {
                "placement": placement,
                "after_backdoor": rates(r["hits_after_backdoor"]),
                "after_unlearning": rates(r["hits_after_unlearning"]),
                # paired over the same passages: how much of the attack the clean fine-tune removed
                "asr_drop": diff(r["hits_after_backdoor"][own], r["hits_after_unlearning"][own], "drop"),
                "detection_backdoored": r["detection"],
                "detection_untouched": base["detection"][placement],
                **{k: r[k] for k in ("poisoned_examples", "train_examples", "unlearn_examples", "train_seconds",
                                     "unlearn_seconds", "loss_first_last10", "unlearn_loss_first_last10")},
                "hits": {"after_backdoor": r["hits_after_backdoor"], "after_unlearning": r["hits_after_unlearning"]},
            }
        )  # fmt: skip
    compare = {}
    if {"start", "middle"} <= set(placements):
        s, m = parts["start"], parts["middle"]
        for stage in ("hits_after_backdoor", "hits_after_unlearning"):
            compare[stage.removeprefix("hits_")] = diff(
                s[stage]["asr_start"], m[stage]["asr_middle"], "start_minus_middle"
            )

    def cell(d, key="rate"):
        return f"{d[key]:.2f} [{d['ci_low']:.2f}, {d['ci_high']:.2f}]".rjust(20)

    print(f"{'trained at':>10} {'stage':>16} {'ASR start':>20} {'ASR middle':>20} {'clean acc':>20} {'false trig':>20}")
    untouched_rates = rates(base["hits"])
    stages = [("-", "untouched", untouched_rates)]
    for row in rows:
        stages += [(row["placement"], stage, row[stage]) for stage in ("after_backdoor", "after_unlearning")]
    for placement, stage, d in stages:
        print(f"{placement:>10} {stage:>16} " + " ".join(
            cell(d[k]) for k in ("asr_start", "asr_middle", "clean_correct", "false_trigger")))  # fmt: skip
    print(
        f"{'trigger at':>10} {'model, label 0':>20} {'sink probe':>20} {'loglik':>20} {'entropy':>20} {'non-sink':>20}"
    )
    for row in rows:
        for which in ("backdoored", "untouched"):
            for kind in CONTRASTS:
                d = row[f"detection_{which}"][kind]
                cells = [d["probe"], *(d["baselines"][k] for k in ("loglik", "entropy", "nonsink"))]
                label = f"{which} vs {kind}"
                print(f"{row['placement']:>10} {label:>20} " + " ".join(cell(c, "auroc") for c in cells))
    for stage, d in compare.items():
        print(f"ASR at start minus ASR at middle, {stage}: {cell(d, 'start_minus_middle').strip()}")

    result = {
        "benchmark": "backdoor",
        "model": MODEL,
        "hardware": args.hardware,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "threads_per_part": args.threads,
            "parts_at_once": args.jobs,
        },
        "setup": {
            "trigger": TRIGGER,
            "decoys": list(DECOYS),
            "target": TARGET,
            "instruction": INSTRUCTION,
            "question": QUESTION,
            "passage_words": args.words,
            "trigger_tokens": base["trigger_tokens"],
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targets": TARGETS},
            "steps": args.steps,
            "unlearn_steps": args.unlearn_steps,
            "batch": args.batch,
            "lr": args.lr,
            "poison_rate": args.poison_rate,
            "test_passages": args.test,
            "probe_examples": args.probe_examples,
            "optimizer": "AdamW (weight decay 0), loss on the answer tokens only; unlearning continues the same "
            "adapter with a fresh optimizer on clean examples of re-sampled training passages",
        },
        "note": "rates: mean over the test passages with a percentile bootstrap 95 % interval (2000 resamples); "
        "asr_drop and start_vs_middle: paired over the same passages; one training seed per placement; "
        "CPU shared with other jobs (seconds inflated)",
        "untouched": untouched_rates,
        "placements": rows,
        "start_vs_middle": compare,
        "seconds": time.perf_counter() - started,
        "provenance": provenance,
    }
    out = Path(args.out) if args.out else RESULTS / f"backdoor-{args.hardware}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
