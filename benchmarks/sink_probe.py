"""Which 64 tokens Gu et al.'s Sink_1 is measured on: the probe choices of ``sinklab train``, on a pretrained model.

Gu et al. measure Sink_1 on the first 64 tokens of 100 texts without BOS; ``sinklab train`` measured it on
consecutive held-out windows (``--metric-windows stream``) behind BOS (``--bos always``). This script scans the
model whose tokenizer built the corpus (smollm2-135m for the Debian corpora) on the four combinations (windows or
document starts, BOS or not), 100 sequences of the held-out split, and reports Sink_1 (Gu et al.'s per-sequence
statistic), the share of heads that are sinks on average, and the mean first-token mass. The sequences are the ones
``sinklab train`` measures (``remove.train.metric_ids`` for the gu60m preset: spread evenly over the split), so the
numbers say how much the probe alone moves Sink_1 on a trained model. A fifth row places Gu et al.'s probe as sinklab
up to 0.2.1 did, the split's first 100 documents: a corpus is stored source by source, so those came from its first
few packages. ``groups_of_4`` is Sink_1 on each 4 consecutive sequences (mean, sd, min,
max; ``first_4`` the first group): what ``sinklab train`` up to 0.2.0 measured, when scan cut token ids to 4.

    python benchmarks/sink_probe.py --corpus data/train-corpus-large [--hardware cpu2]

Prints a table, then one JSON line; saves benchmarks/results/sink-probe-<hardware>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import sinklab
from sinklab.data.train_corpus import source_spans
from sinklab.models import EMBEDDED
from sinklab.provenance import run_provenance
from sinklab.remove.train import TrainConfig, metric_ids, metric_offsets, place

RESULTS = Path(__file__).parent / "results"
SUBSETS = (10_000_000, 50_000_000)  # the gu60m data-size runs: the first N training tokens


def composition(offsets: np.ndarray, meta: dict) -> dict:
    """Which sources the held-out sequences starting at ``offsets`` come from, and the share of them whose source is
    in the first N training tokens (the sources a ``--unique-tokens N`` run trains on)."""
    spans = source_spans(meta, "val")
    ends = np.array([end for _, _, end in spans])
    names = [spans[i][0] for i in np.searchsorted(ends, offsets, side="right")]
    train = {name: start for name, start, _ in source_spans(meta, "train")}
    counts = {name: names.count(name) for name, *_ in spans if name in names}
    return {
        "sources": len(counts),
        "of": len(spans),
        "counts": counts,
        "in_subset_sources": {str(n): float(np.mean([train.get(x, n) < n for x in names])) for n in SUBSETS},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="a corpus built by scripts/build_train_corpus.py")
    parser.add_argument("--hardware", default="cpu2")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/sink-probe-<hardware>.json")
    args = parser.parse_args(argv)
    meta = json.loads((Path(args.corpus) / "meta.json").read_text())
    name = meta["tokenizer"]  # the token ids are this model's: no other model can read them
    if name not in EMBEDDED:
        parser.error(f"--corpus {args.corpus}: tokenized for {name!r}, not an embedded model")
    started = time.perf_counter()
    rows = []
    model, tok = sinklab.load(name)
    probes = [(w, b, "spread") for w in ("stream", "documents") for b in ("never", "always")]
    probes.append(("documents", "never", "first"))  # Gu et al.'s probe as sinklab up to 0.2.1 placed it
    for windows, bos, placement in probes:  # the corpus's BOS id is its tokenizer's, the model's own
        config = TrainConfig(preset="gu60m", corpus=args.corpus, metric_windows=windows, bos=bos)
        ids = metric_ids(config, placement)
        result = sinklab.scan(model, tok, ids, 0.3, max_tokens=ids.shape[1], num_texts=None, bos="never",
                              batch_size=20, progress=False)  # fmt: skip
        groups = [
            sinklab.scan(model, tok, ids[i : i + 4], 0.3, max_tokens=ids.shape[1], bos="never", batch_size=4,
                         keep_pattern=0, progress=False).sink_rate
            for i in range(0, len(ids) - 3, 4)
        ]  # fmt: skip
        sources = composition(metric_offsets(config, placement), meta)
        rows.append({"model": name, "windows": windows, "bos": bos, "placement": placement, "sequences": len(ids),
                     "sources": sources["sources"], "composition": sources,
                     "sink_rate": result.sink_rate, "sink_rate_of_mean": result.sink_rate_of_mean,
                     "first_token_mass": float(result.first_token_mass.nanmean()),
                     "first_4": groups[0], "groups_of_4": {"n": len(groups), "mean": float(np.mean(groups)),
                     "sd": float(np.std(groups)), "min": min(groups), "max": max(groups)}})  # fmt: skip
        print(f"{name} {windows} bos-{bos} {placement}: Sink_1 {result.sink_rate:.1%}", flush=True)
    gu = TrainConfig(preset="gu60m", corpus=args.corpus, bos="never").resolved()
    val_windows = meta["tokens"]["val"] // gu.context  # the validation loss's, as heldout_batches places them
    validation = {
        placement: composition(place(gu.eval_batches * gu.batch_size, val_windows, placement) * gu.context, meta)
        for placement in ("spread", "first")
    }
    table = Table(title="Sink_1^0.3 at T=64 by probe (100 held-out sequences)")
    for column in ("model", "windows", "BOS", "placement", "sources", "in 10M / 50M subsets", "Sink_1",
                   "heads sinks on average", "first-token mass", "first 4", "groups of 4: sd (range)"):  # fmt: skip
        table.add_column(column)
    for r in rows:
        g = r["groups_of_4"]
        share = r["composition"]["in_subset_sources"]
        table.add_row(r["model"], r["windows"], r["bos"], r["placement"],
                      f"{r['sources']} of {r['composition']['of']}", " / ".join(f"{v:.0%}" for v in share.values()),
                      f"{r['sink_rate']:.1%}",
                      f"{r['sink_rate_of_mean']:.1%}", f"{r['first_token_mass']:.3f}", f"{r['first_4']:.1%}",
                      f"{g['sd']:.1%} ({g['min']:.1%}-{g['max']:.1%})")  # fmt: skip
    Console(width=160).print(table)
    record = {
        "benchmark": "sink_probe",
        "hardware": args.hardware,
        "corpus": {"path": args.corpus, "tokenizer": meta["tokenizer"], "tokens": meta["tokens"]},
        "rows": rows,
        "validation_windows": validation,
        "wall_seconds": time.perf_counter() - started,
        "provenance": run_provenance(None, texts={"source": args.corpus}),
    }
    out = Path(args.out or RESULTS / f"sink-probe-{args.hardware}.json")
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({"benchmark": "sink_probe", "rows": len(rows), "out": str(out)}))
    return record


if __name__ == "__main__":
    main()
