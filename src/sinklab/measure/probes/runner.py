"""`sinklab.explain`: test each mechanism the literature proposes for attention sinks on one model, each with a
measured quantity and an intervention (its effect on next-token loss and on Gu et al.'s sink rate).

One baseline pass per sequence records what every probe measures (``Recorder``); each intervention is one more
pass per sequence, shared by name between probes, that reads only what its probe reports (alpha_1, loss, and every
key's mass only where the sink may move). Sequences run one at a time (batch 1), so the sink is position 0; the
emergence probe's short windows run as one batch per kind of input. Passes take the fused fast path where it
applies (``sinklab.measure.probes._common.PassObserver``; ``fused=False`` runs its twin). Progress: one bar (or,
off a terminal, periodic lines) per stage, the baseline passes and then each probe, counting its forward passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from sinklab.data import BosMode
from sinklab.errors import SinklabInputError, check_fraction
from sinklab.measure.engine import skipped_layers
from sinklab.measure.probes._common import ProbeNotApplicable, has_lm_head, record, rounded
from sinklab.measure.probes.anchor import AnchorProbe
from sinklab.measure.probes.bias import BiasProbe
from sinklab.measure.probes.context import NO_LOSS, ProbeContext
from sinklab.measure.probes.emergence import EmergenceProbe
from sinklab.measure.probes.noop import NoopProbe
from sinklab.measure.probes.outlier import OutlierProbe
from sinklab.measure.scanner import as_sequences, check_length, is_causal, token_decoder
from sinklab.models import check_model, check_token_ids
from sinklab.progress import Progress
from sinklab.provenance import describe_texts, run_provenance

PROBES = {p.name: p for p in (NoopProbe, OutlierProbe, BiasProbe, AnchorProbe, EmergenceProbe)}
MIN_TOKENS = 4


@dataclass
class ExplainResult:
    """What ``explain`` found: one section per probe (``probes``), and the probes that do not apply, with why."""

    model: str
    causal: bool
    lm: bool
    num_layers: int
    num_heads: int
    num_kv_heads: int
    tokens: int
    num_sequences: int
    sequence_length: int
    eps: float
    baseline: dict
    probes: dict[str, dict] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)
    skipped_layers: list[dict] = field(default_factory=list)  # blocks without softmax attention, not measured
    seconds: float = 0.0
    provenance: dict | None = None  # how the result was made (sinklab.provenance)

    def to_dict(self) -> dict:
        """The content of probes.json."""
        return rounded(
            {
                "model": self.model,
                "causal": self.causal,
                "lm_head": self.lm,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "num_kv_heads": self.num_kv_heads,
                "tokens": self.tokens,
                "num_sequences": self.num_sequences,
                "sequence_length": self.sequence_length,
                "eps": self.eps,
                "baseline": self.baseline,
                "probes": self.probes,
                "not_applicable": self.not_applicable,
                "skipped_layers": self.skipped_layers,
                "seconds": self.seconds,
                "provenance": self.provenance,
            }
        )

    def save(self, out_dir: str | Path) -> Path:
        """Write probes.json, PNG plots and a self-contained report.html into ``out_dir`` (all or nothing)."""
        from sinklab.report.probes import write_explain_report

        return write_explain_report(self, Path(out_dir))


@contextmanager
def _stage(progress: bool, console: Console, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """One progress display for one stage (the baseline, or a probe) counting its ``total`` forward passes; yields
    ``advance(n)``. Off a terminal ``sinklab.progress`` prints the start, periodic lines and the final count; on one,
    the bar goes when the stage ends and a line with the count and the time stays."""
    start = time.perf_counter()
    done = [0]
    with Progress(disable=not progress) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            done[0] += n
            bar.advance(task, n)

        yield advance
    if progress and console.is_terminal:
        line = f"sinklab: {description}: {done[0]}/{total} passes in {time.perf_counter() - start:.1f} s"
        console.print(line, markup=False, highlight=False)


def parse_probes(probes) -> list[str]:
    """Probe names from a list or a comma-separated string; unknown names raise ``SinklabInputError``."""
    names = [p.strip() for p in probes.split(",")] if isinstance(probes, str) else [str(p).strip() for p in probes]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in PROBES]
    if unknown or not names:
        raise SinklabInputError(
            f"unknown probe {', '.join(map(repr, unknown)) or '(none given)'}; accepted: {', '.join(PROBES)}"
        )
    return list(dict.fromkeys(names))


def explain(
    model,
    tokenizer,
    texts_or_ids=None,
    *,
    probes=tuple(PROBES),
    eps: float = 0.3,
    max_tokens: int = 512,
    num_texts: int | None = 4,
    bos: BosMode = "auto",
    model_name: str | None = None,
    seed: int = 0,
    allow_beyond_positions: bool = False,
    progress: bool = True,
    fused: bool = True,
) -> ExplainResult:
    """Run the probes (``noop``, ``outlier``, ``bias``, ``anchor``, ``emergence``) on ``model``.

    ``texts_or_ids`` as in ``sinklab.scan`` (strings split into ``max_tokens``-token sequences, at most
    ``num_texts``; token-id lists; None for the embedded corpus). A probe that does not apply to the model (an
    encoder, a block without an MLP) is listed in ``not_applicable`` with the reason; the others run. Blocks without
    softmax attention (a hybrid's linear layers) are listed in ``skipped_layers`` and get NaN per-head rows. Without a
    causal LM head, interventions report sink rates and no loss. ``fused=False`` runs every pass on the site's own
    attention path (the twin of the fast path; the same numbers within float32 rounding, several times slower).
    """
    names = parse_probes(probes)
    check_fraction("eps", eps)
    check_model(model, tokenizer)
    seqs = as_sequences(tokenizer, texts_or_ids, max_tokens, num_texts, bos)
    check_token_ids(model, seqs)
    if min(map(len, seqs)) < MIN_TOKENS:
        raise SinklabInputError(f"every sequence needs at least {MIN_TOKENS} tokens; use longer texts")
    check_length(model, max(map(len, seqs)), allow_beyond_positions)
    start = time.perf_counter()
    cfg = model.config
    chosen = [PROBES[n]() for n in names]
    console = Console(stderr=True)
    label = model_name or type(model).__name__
    ctx = ProbeContext(
        model=model,
        tokenizer=tokenizer,
        sequences=seqs,
        baselines=[],
        eps=eps,
        causal=is_causal(model),
        lm=has_lm_head(model),
        decode=token_decoder(tokenizer),
        seed=seed,
        fused=fused,
    )
    residual = "outlier" in names  # only the outlier probe reads the residual statistics
    with _stage(progress, console, f"explain {label}: baseline", len(seqs)) as advance:
        for ids in seqs:
            ctx.baselines.append(record(model, ids, residual=residual, fused=fused))
            advance(1)
    sections, skipped = {}, {}
    for probe in chosen:
        try:
            steps = probe.steps(ctx)
            with _stage(progress, console, f"explain {label}: {probe.name}", steps) as advance:
                ctx.advance = advance
                sections[probe.name] = probe.run(ctx)
        except ProbeNotApplicable as exc:
            skipped[probe.name] = str(exc)
            if progress:
                console.print(f"[yellow]sinklab: probe {probe.name} does not apply:[/] {exc}")
    if not sections:
        raise SinklabInputError(f"no requested probe applies to this model: {'; '.join(skipped.values())}")
    base = [b.run for b in ctx.baselines]
    baseline = {"sink_rate": ctx.sink_rate(base), "mean_alpha_1": float(ctx.baseline_alpha().nanmean())}
    if ctx.lm:
        baseline["loss"] = sum(p.loss() for p in base) / len(base)
    else:
        baseline["loss_note"] = NO_LOSS
    return ExplainResult(
        model=model_name or getattr(cfg, "_name_or_path", "") or type(model).__name__,
        causal=ctx.causal,
        lm=ctx.lm,
        num_layers=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        tokens=sum(map(len, seqs)),
        num_sequences=len(seqs),
        sequence_length=max(map(len, seqs)),
        eps=eps,
        baseline=baseline,
        probes=sections,
        not_applicable=skipped,
        skipped_layers=skipped_layers(model),
        seconds=time.perf_counter() - start,
        provenance=run_provenance(model, sequences=seqs, texts=describe_texts(texts_or_ids), bos=bos, seed=seed),
    )
