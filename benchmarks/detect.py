"""Benchmark: sink features (``sinklab.measure.detect.sink_features``) against storing the full attention maps.

SinkProbe's harness (LapEigvals) keeps every attention map of an input: L x H x T x T floats, what eager
``output_attentions=True`` returns. sinklab reads the same features from the sites' O(T) statistics. CPU,
smollm2-135m, one input of T tokens of the embedded corpus; each (method, T) runs in a fresh process and its peak
RSS is sampled every 5 ms during the measured call (``benchmarks/scan.py``'s sampler):

- ``plain``: a plain SDPA forward, the floor;
- ``features``: ``sink_features`` (features, log-likelihood through the chunked LM head);
- ``eager``: a forward with ``output_attentions=True``, the maps kept; run only where they fit under 12 GB, else
  the maps' size L x H x T^2 x 4 bytes is reported (checked against the measured run at a shorter T).

Prints a table, then one JSON line; saves benchmarks/results/detect-<hardware>.json.

    python benchmarks/detect.py [--lengths 1024,4096] [--hardware cpu2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from scan import EAGER_LIMIT_BYTES, _peak_rss_during

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2-135m"
METHODS = ("plain", "features", "eager")


def worker(method: str, length: int) -> dict:
    import torch

    from sinklab.data import read_texts, token_sequences
    from sinklab.measure.detect import sink_features
    from sinklab.models import load

    model, tok = load(MODEL)
    (ids,) = token_sequences(tok, read_texts(None), length, 1, bos="never")
    text = tok.decode(ids)
    if method == "eager":
        model.set_attn_implementation("eager")
    tensor = torch.tensor([ids])
    kept = {}

    @torch.no_grad()
    def run():
        if method == "features":
            kept["features"] = sink_features(model, tok, [text], max_tokens=length, progress=False)
        else:
            out = model.model(input_ids=tensor, use_cache=False, output_attentions=method == "eager")
            kept["maps"] = out.attentions

    seconds, peak, before = _peak_rss_during(run)
    row = {"method": method, "tokens": length, "seconds": seconds, "peak_rss_mb": peak / 2**20}
    row["rss_before_mb"] = before / 2**20
    if method == "eager":
        row["maps_mb"] = sum(a.numel() * a.element_size() for a in kept["maps"]) / 2**20
    if method == "features":
        feats = kept["features"]
        row["tokens_measured"] = int(feats.tokens[0])
        row["features_kb"] = (
            sum(t.numel() * t.element_size() for t in vars(feats).values() if torch.is_tensor(t)) / 1024
        )
    return row


def maps_mb(length: int) -> float:
    """L x H x T x T float32 attention maps of smollm2-135m (30 layers, 9 heads)."""
    return 30 * 9 * length * length * 4 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,4096")
    parser.add_argument("--hardware", default="cpu2")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "T"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = []
    for length in lengths:
        for method in METHODS:
            if method == "eager" and maps_mb(length) * 2**20 > EAGER_LIMIT_BYTES:
                rows.append(
                    {"method": method, "tokens": length, "skipped": "maps exceed 12 GB", "maps_mb": maps_mb(length)}
                )
                continue
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            out = subprocess.run(
                [sys.executable, __file__, "--worker", method, str(length)],
                capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            if out.returncode != 0:
                rows.append({"method": method, "tokens": length, "failed": out.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    by = {(r["method"], r["tokens"]): r for r in rows}
    summary = []
    print(f"{'T':>6} {'plain MB':>9} {'features MB':>12} {'eager MB':>9} {'maps MB':>9} {'maps/features':>14}")
    for t in lengths:
        p, f, e = by[("plain", t)], by[("features", t)], by[("eager", t)]
        maps = e.get("maps_mb", maps_mb(t))
        eager_peak = e.get("peak_rss_mb")
        ratio = maps / f["peak_rss_mb"] if "peak_rss_mb" in f else None
        summary.append(
            {
                "tokens": t,
                "plain_peak_mb": p.get("peak_rss_mb"),
                "features_peak_mb": f.get("peak_rss_mb"),
                "eager_peak_mb": eager_peak,
                "maps_mb": maps,
                "maps_measured": "peak_rss_mb" in e,
                "maps_over_features_peak": ratio,
                "features_over_plain_peak": f["peak_rss_mb"] / p["peak_rss_mb"] if ratio else None,
            }
        )
        eager_text = f"{eager_peak:9.0f}" if eager_peak else f"{'-':>9}"
        ratio_text = f"{ratio:13.1f}x" if ratio else f"{'-':>14}"
        plain, feats = p.get("peak_rss_mb", 0), f.get("peak_rss_mb", 0)
        print(f"{t:>6} {plain:9.0f} {feats:12.0f} {eager_text} {maps:9.0f} {ratio_text}")
    result = {
        "benchmark": "detect",
        "model": MODEL,
        "hardware": args.hardware,
        "date": dt.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "note": "maps_mb: the attention maps an eager output_attentions forward returns (measured where eager ran, "
        "else L x H x T^2 x 4 bytes); ratio against the features run's whole-process peak RSS; CPU shared",
        "summary": summary,
        "runs": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"detect-{args.hardware}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
