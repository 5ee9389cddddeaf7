"""Benchmark (issue 19): a model sharded over every visible GPU by accelerate, and DDP training over 1..N processes.

(a) scan: a random-init model shaped like Llama-3.1-8B (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate
    14336, vocab 128256, bf16; built from its config, never from the hub, saved once to ``--model-dir``) loaded with
    ``sinklab.load(dir, device_map="auto")`` over all visible GPUs and scanned on one sequence of ``--tokens``
    random tokens: load and scan wall time, weights and peak memory per GPU (torch.cuda.max_memory_allocated of each
    device), the metrics. When the model fits one GPU and more than one is visible, the same scan on one GPU, and
    the metrics compared (DESIGN.md: bf16 <= 1e-2 relative error). With one GPU the device_map run IS the one-GPU run:
    no comparison (said in ``skipped``).
(b) train: ``sinklab train --preset small`` through torchrun with 1, 2, 4, ... N processes at the same global batch
    (per-process batch = global / n): tokens/s, scaling efficiency tokens/s(n) / (n x tokens/s(1)), and the loss
    curves of n processes against one process (max |train loss| and |val loss| differences at the evaluated steps).

Prints a table, then ONE JSON line; writes benchmarks/results/multigpu-<hardware>.json (``--out``).

    python benchmarks/multigpu.py [--tokens 32768] [--parts scan,train] [--train-steps 200] [--hardware h200x2]
    python benchmarks/multigpu.py --device cpu --tiny --out /tmp/multigpu-smoke.json   # CPU smoke of every path

``--device cpu --tiny``: a 4-layer tiny Llama on the CPU, split between the CPU and disk (accelerate's offload
hooks) against the plain load, and ``--preset tiny`` training over 1 and 2 gloo processes: it checks the plumbing,
its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SRC = Path(__file__).resolve().parent.parent / "src"
LLAMA_31_8B = dict(
    hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
    vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
)  # fmt: skip
TINY = dict(
    hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
    vocab_size=263, max_position_embeddings=1024, initializer_range=0.1, tie_word_embeddings=False, pad_token_id=0,
    bos_token_id=1, eos_token_id=2,
)  # fmt: skip
GLOBAL_BATCH = {"small": 48, "tiny": 8}  # the presets' batch sizes: the global batch every process count shares


def _hardware(gpus: int) -> str:
    if not gpus:
        return f"cpu{os.cpu_count()}"
    name = torch.cuda.get_device_name(0)
    return ("h200" if "H200" in name else name.lower().replace("nvidia ", "").replace(" ", "-")) + f"x{gpus}"


# -- (a) scan over a device_map -------------------------------------------------------------------------------------
def _model_dir(args, shape: dict) -> Path:
    """A saved random-init Llama of ``shape`` (seed 0) with a byte tokenizer, made once and reused."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sinklab.models import byte_tokenizer

    path = Path(args.model_dir) if args.model_dir else Path(tempfile.gettempdir()) / f"sinklab-multigpu-{args.name}"
    marker = path / "shape.json"
    if marker.exists() and json.loads(marker.read_text()) == shape:
        return path
    config = LlamaConfig(**shape)
    config.dtype = "bfloat16" if args.device == "cuda" else "float32"
    torch.manual_seed(0)
    build_on = "cuda:0" if args.device == "cuda" else "cpu"  # random init is fast on the GPU; 16 GB fits one H200
    started = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if args.device == "cuda" else torch.float32)  # no float32 copy of 8B
    try:
        with torch.device(build_on):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    marker.write_text(json.dumps(shape))
    print(f"built and saved {path} in {time.perf_counter() - started:.0f} s", flush=True)
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return path


def _scan_once(path: Path, ids: torch.Tensor, args, **placement) -> tuple[dict, dict]:
    """Load with ``placement``, warm up (kernel compilation), then time one scan; per-GPU memory."""
    import sinklab
    from sinklab.models import input_device

    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    started = time.perf_counter()
    model, tok = sinklab.load(str(path), dtype="bfloat16" if gpus else None, **placement)
    load_s = time.perf_counter() - started
    weights = [torch.cuda.memory_allocated(d) for d in range(gpus)]
    sinklab.scan(model, tok, ids[:, : min(1024, ids.shape[1])], progress=False, keep_pattern=0)  # warm-up
    for d in range(gpus):
        torch.cuda.synchronize(d)
        torch.cuda.reset_peak_memory_stats(d)
    started = time.perf_counter()
    result = sinklab.scan(model, tok, ids, progress=False, keep_pattern=0, allow_beyond_positions=True)
    for d in range(gpus):
        torch.cuda.synchronize(d)
    scan_s = time.perf_counter() - started
    placed = getattr(model, "hf_device_map", None) or {"": str(input_device(model))}
    out = {
        "load_s": round(load_s, 2),
        "scan_s": round(scan_s, 3),
        "tokens_per_s": round(ids.numel() / scan_s, 1),
        "devices": sorted({str(v) for v in placed.values()}),
        "layers_per_device": _layers_per_device(placed, model.config.num_hidden_layers),
        "weights_gib": [round(w / 2**30, 2) for w in weights],
        "peak_gib": [round(torch.cuda.max_memory_allocated(d) / 2**30, 2) for d in range(gpus)],
        "sink_rate": result.sink_rate,
        "max_first_token_mass": float(result.first_token_mass.nan_to_num(0).max()),
        "max_abs_hidden": float(result.layer_max_abs.max()),
        "massive": len(result.massive_activations),
    }
    arrays = {
        name: getattr(result, name).clone()
        for name in ("first_token_mass", "entropy", "layer_max_abs", "layer_median_abs")
    }
    del model, result
    if gpus:
        torch.cuda.empty_cache()
    return out, arrays


def _layers_per_device(placed: dict, num_layers: int) -> dict:
    """Decoder layers per device of an hf_device_map (a key covering all layers counts them all)."""
    counts: dict[str, int] = {}
    for i in range(num_layers):
        name = f"model.layers.{i}"
        owner = max((k for k in placed if k == "" or name == k or name.startswith(k + ".")), key=len, default=None)
        if owner is not None:
            counts[str(placed[owner])] = counts.get(str(placed[owner]), 0) + 1
    return counts


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().nan_to_num(0), b.double().nan_to_num(0)
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def scan_part(args, gpus: int, skipped: list[str]) -> dict:
    shape = TINY if args.tiny else LLAMA_31_8B
    path = _model_dir(args, shape)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(8, 263, (1, args.tokens), generator=gen)  # byte-tokenizer ids: reports decode them
    out: dict = {"shape": shape, "tokens": args.tokens, "dtype": "bfloat16" if gpus else "float32"}
    if gpus:
        placement = {"device_map": "auto"}
        if args.max_memory:
            placement["max_memory"] = args.max_memory
        out["sharded"], sharded = _scan_once(path, ids, args, **placement)
        if gpus == 1:
            skipped.append("scan on one GPU vs sharded: one GPU visible, the device_map run is the one-GPU run")
            return out
        weights_gib = sum(out["sharded"]["weights_gib"])
        free = torch.cuda.mem_get_info(0)[0] / 2**30
        if weights_gib * 1.6 > free:  # weights + activations at --tokens would not fit one GPU
            skipped.append(f"scan on one GPU: {weights_gib:.0f} GiB of weights do not fit one GPU ({free:.0f} GiB)")
            return out
        out["one_gpu"], single = _scan_once(path, ids, args, device_map={"": 0})
    else:  # the CPU smoke: the layers 1 and 2 offloaded to disk (accelerate's AlignDevicesHook path)
        layers = {f"model.layers.{i}": "disk" if i in (1, 2) else "cpu" for i in range(shape["num_hidden_layers"])}
        dm = {"model.embed_tokens": "cpu", **layers, "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
        with tempfile.TemporaryDirectory() as offload:
            out["sharded"], sharded = _scan_once(path, ids, args, device_map=dm, offload_folder=offload)
        out["one_gpu"], single = _scan_once(path, ids, args)
        skipped.append("no GPU: 'sharded' is CPU + disk offload, 'one_gpu' the plain CPU load")
    out["relative_error"] = {name: _relative(sharded[name], single[name]) for name in sharded}
    out["sink_rate_difference"] = abs(out["sharded"]["sink_rate"] - out["one_gpu"]["sink_rate"])
    tolerance = 1e-2 if gpus else 1e-5
    out["metrics_agree"] = all(v <= tolerance for v in out["relative_error"].values())
    out["tolerance"] = tolerance
    out["speedup_vs_one_gpu"] = round(out["one_gpu"]["scan_s"] / out["sharded"]["scan_s"], 3)
    return out


# -- (b) DDP training through torchrun -------------------------------------------------------------------------------
def _train(n: int, args, preset: str, batch: int, workdir: Path) -> dict:
    out = workdir / f"train-{n}"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
        "-m", "sinklab.cli", "train", "--preset", preset, "--steps", str(args.train_steps),
        "--batch-size", str(batch), "--eval-every", str(args.eval_every), "--out", str(out),
        *(["--device", "cpu"] if args.device == "cpu" else []),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    env.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"processes": n, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    record = json.loads((out / "train.json").read_text())
    return {
        "processes": n,
        "batch_per_process": batch,
        "tokens_per_s": round(record["tokens_per_second"], 1),
        "wall_s": round(wall, 1),
        "final": {k: record["final"].get(k) for k in ("train_loss", "val_loss", "sink_rate") if k in record["final"]},
        "curve": [{k: row.get(k) for k in ("step", "tokens", "train_loss", "val_loss")} for row in record["history"]],
    }


def _curve_gap(a: list[dict], b: list[dict], key: str) -> float | None:
    pairs = [
        (x[key], y[key])
        for x, y in zip(a, b, strict=False)
        if x["step"] == y["step"] and isinstance(x.get(key), float) and isinstance(y.get(key), float)
        and x[key] == x[key] and y[key] == y[key]  # not NaN (step 0 has no train loss)
    ]  # fmt: skip
    return round(max(abs(x - y) for x, y in pairs), 5) if pairs else None


def train_part(args, gpus: int, skipped: list[str]) -> dict:
    preset = "tiny" if args.tiny else "small"
    world = gpus if gpus else 2  # the CPU smoke: two gloo processes
    counts = [n for n in (1, 2, 4, 8, 16) if n <= world]
    if world not in counts:
        counts.append(world)
    global_batch = args.global_batch or GLOBAL_BATCH[preset]
    runs = []
    with tempfile.TemporaryDirectory() as workdir:
        for n in counts:
            if global_batch % n:
                skipped.append(f"train with {n} processes: global batch {global_batch} is not divisible by {n}")
                continue
            print(f"train: {n} process(es), batch {global_batch // n} each", flush=True)
            runs.append(_train(n, args, preset, global_batch // n, Path(workdir)))
    if gpus == 1:
        skipped.append("train scaling and 1-vs-N loss curves: one GPU visible (only the 1-process run)")
    base = next((r for r in runs if r["processes"] == 1 and "error" not in r), None)
    for run in runs:
        if base is None or "error" in run:
            continue
        run["scaling_efficiency"] = round(run["tokens_per_s"] / (run["processes"] * base["tokens_per_s"]), 3)
        run["max_train_loss_gap_vs_1"] = _curve_gap(run["curve"], base["curve"], "train_loss")
        run["max_val_loss_gap_vs_1"] = _curve_gap(run["curve"], base["curve"], "val_loss")
    return {"preset": preset, "global_batch": global_batch, "steps": args.train_steps, "runs": runs}


# -- report ----------------------------------------------------------------------------------------------------------
def print_table(record: dict) -> None:
    scan = record.get("scan")
    if scan:
        print(f"\nscan: {scan['tokens']} tokens, {scan['dtype']}")
        print(f"{'run':<10} {'devices':<22} {'load s':>7} {'scan s':>8} {'tok/s':>10} {'peak GiB per GPU':<30} Sink_1")
        for name in ("sharded", "one_gpu"):
            if name in scan:
                r = scan[name]
                peak = ", ".join(f"{p:g}" for p in r["peak_gib"]) or "-"
                print(
                    f"{name:<10} {','.join(r['devices']):<22} {r['load_s']:>7.1f} {r['scan_s']:>8.2f} "
                    f"{r['tokens_per_s']:>10.0f} {peak:<30} {r['sink_rate']:.3f}"
                )
        if "relative_error" in scan:
            errors = ", ".join(f"{k} {v:.1e}" for k, v in scan["relative_error"].items())
            print(f"sharded vs one: {errors}; agree within {scan['tolerance']:g}: {scan['metrics_agree']}")
    train = record.get("train")
    if train:
        print(f"\ntrain --preset {train['preset']}: global batch {train['global_batch']}, {train['steps']} steps")
        print(f"{'procs':>5} {'batch':>6} {'tok/s':>10} {'efficiency':>10} {'train gap':>10} {'val gap':>9} final val")
        for r in train["runs"]:
            if "error" in r:
                print(f"{r['processes']:>5} error: {r['error']}")
                continue
            print(
                f"{r['processes']:>5} {r['batch_per_process']:>6} {r['tokens_per_s']:>10.0f} "
                f"{r.get('scaling_efficiency', float('nan')):>10.3f} {r.get('max_train_loss_gap_vs_1')!s:>10} "
                f"{r.get('max_val_loss_gap_vs_1')!s:>9} {r['final'].get('val_loss')}"
            )
    for line in record["skipped"]:
        print(f"skipped: {line}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny model and --preset tiny (the CPU smoke)")
    parser.add_argument("--tokens", type=int, default=None, help="scan length (default 32768; --tiny 256)")
    parser.add_argument("--parts", default="scan,train", help="scan, train or both (default)")
    parser.add_argument("--model-dir", default=None, help="where the random-init model is saved once (default: tmp)")
    parser.add_argument("--max-memory", default=None, help="for the sharded load, e.g. 0=40GiB,1=40GiB,cpu=64GiB")
    parser.add_argument("--train-steps", type=int, default=None, help="optimizer steps per run (default 200; tiny 6)")
    parser.add_argument("--eval-every", type=int, default=None, help="evaluate every K steps (default 50; tiny 3)")
    parser.add_argument("--global-batch", type=int, default=None, help="sequences per step over all processes")
    parser.add_argument("--hardware", default=None, help="name in the results file (default e.g. h200x2)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/multigpu-<hardware>.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this machine has no CUDA device; use --device cpu --tiny")
    if args.device == "cpu" and not args.tiny:
        parser.error("--device cpu runs only the smoke path: add --tiny (an 8B scan on the CPU is not a benchmark)")
    args.tokens = args.tokens or (256 if args.tiny else 32768)
    args.train_steps = args.train_steps or (6 if args.tiny else 200)
    args.eval_every = args.eval_every or (3 if args.tiny else 50)
    args.name = "tiny" if args.tiny else "llama31-8b"
    if args.max_memory:
        from sinklab.models import parse_max_memory

        args.max_memory = parse_max_memory(args.max_memory)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"scan", "train"}:
        parser.error(f"--parts {args.parts!r}: accepted scan, train or scan,train")
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    hardware = args.hardware or _hardware(gpus)
    skipped: list[str] = []
    record: dict = {
        "benchmark": "multigpu",
        "hardware": hardware,
        "gpus": gpus,
        "gpu_name": torch.cuda.get_device_name(0) if gpus else None,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
    }
    from sinklab.provenance import run_provenance

    record["provenance"] = run_provenance()
    if "scan" in parts:
        record["scan"] = scan_part(args, gpus, skipped)
    if "train" in parts:
        record["train"] = train_part(args, gpus, skipped)
    record["skipped"] = skipped
    out = Path(args.out) if args.out else RESULTS / f"multigpu-{hardware}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print_table(record)
    print(f"wrote {out}")
    summary = {
        "benchmark": "multigpu",
        "hardware": hardware,
        "scan_s": record.get("scan", {}).get("sharded", {}).get("scan_s"),
        "scan_peak_gib": record.get("scan", {}).get("sharded", {}).get("peak_gib"),
        "metrics_agree": record.get("scan", {}).get("metrics_agree"),
        "train_tokens_per_s": {r["processes"]: r.get("tokens_per_s") for r in record.get("train", {}).get("runs", [])},
        "skipped": len(skipped),
    }
    print(json.dumps(summary))
    return record


if __name__ == "__main__":
    main()
