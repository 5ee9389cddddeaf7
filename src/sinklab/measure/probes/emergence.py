"""``emergence``: what input makes a sink. Gu et al. 2024 ("When Attention Sink Emerges in Language Models",
Table 1): Sink_1^eps at T = 64 on natural text, uniformly random tokens and one token repeated.

Natural windows are consecutive 64-token pieces of the given sequences; random and repeated inputs have the same
length and, when the tokenizer adds a BOS by default, start with it too (so the three inputs differ in content
only). The input swap is the intervention: its effect on loss and sink rate is reported per kind, beside the
published numbers. Causal LMs only: in an encoder every query sees every key, so the first token is not special.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from sinklab.measure.probes._common import ProbeNotApplicable
from sinklab.measure.probes.context import ProbeContext

LENGTH = 64
# Gu et al. 2024, Table 1: Sink_1^0.3 (%) at T = 64 (shared/REFERENCES.md); None where not given there.
PUBLISHED = {
    "GPT2-XL": {"natural": 77.00, "random": 70.29, "repeated": None},
    "Mistral-7B": {"natural": 97.49, "random": 75.21, "repeated": 0.0},
    "LLaMA2-7B": {"natural": 92.47, "random": 90.13, "repeated": 0.0},
    "LLaMA3-8B": {"natural": 99.02, "random": 91.23, "repeated": 0.0},
}


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of a text by default."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", verbose=False)["input_ids"][:1] == [bos]


def natural_windows(sequences: list[list[int]], length: int, limit: int, bos: int | None) -> list[list[int]]:
    """Consecutive ``length``-token windows of the sequences (BOS first when ``bos`` is given), at most ``limit``."""
    body = length - (bos is not None)
    out = []
    for seq in sequences:
        tokens = seq[1:] if bos is not None and seq[:1] == [bos] else seq
        for start in range(0, len(tokens) - body + 1, body):
            out.append(([bos] if bos is not None else []) + tokens[start : start + body])
            if len(out) == limit:
                return out
    return out


@dataclass
class EmergenceProbe:
    """Config of Gu et al.'s Table 1 setting; ``run(ctx)`` returns its section of probes.json."""

    length: int = LENGTH
    num_sequences: int = 8
    name: ClassVar[str] = "emergence"
    passes: ClassVar[tuple[str, ...]] = ()

    def check(self, ctx: ProbeContext) -> dict[str, list[list[int]]]:
        """The inputs (``inputs``), or ProbeNotApplicable for an encoder or sequences shorter than ``length``."""
        if not ctx.causal:
            raise ProbeNotApplicable(
                "emergence: Gu et al.'s Table 1 setting is for causal LMs; in an encoder every query sees every key, "
                "so the first token is not special"
            )
        inputs = self.inputs(ctx)
        if not inputs["natural"]:
            raise ProbeNotApplicable(f"emergence: needs sequences of at least {self.length} tokens")
        return inputs

    def steps(self, ctx: ProbeContext) -> int:
        """Forward passes ``run`` will make: one batch per kind of input."""
        return len(self.check(ctx))

    def inputs(self, ctx: ProbeContext) -> dict[str, list[list[int]]]:
        bos = ctx.tokenizer.bos_token_id if adds_bos(ctx.tokenizer) else None
        natural = natural_windows(ctx.sequences, self.length, self.num_sequences, bos)
        if not natural:
            return {"natural": []}
        gen = torch.Generator().manual_seed(ctx.seed)
        vocab = min(ctx.model.config.vocab_size, len(ctx.tokenizer))
        allowed = torch.ones(vocab, dtype=torch.bool)
        allowed[[i for i in ctx.tokenizer.all_special_ids if i < vocab]] = False
        pool = allowed.nonzero()[:, 0]
        prefix = [bos] if bos is not None else []
        body = self.length - len(prefix)
        random = [prefix + pool[torch.randint(len(pool), (body,), generator=gen)].tolist() for _ in natural]
        repeated = []
        for window in natural:
            content = [t for t in window if allowed[t]] or pool.tolist()
            token = content[int(torch.randint(len(content), (1,), generator=gen))]
            repeated.append(prefix + [token] * body)
        return {"natural": natural, "random": random, "repeated": repeated}

    def run(self, ctx: ProbeContext) -> dict:
        inputs = self.check(ctx)
        kinds = {}
        for kind, seqs in inputs.items():
            passes = ctx.run_batch(seqs)  # equal lengths, no padding: one batch per kind
            alpha = torch.stack([p.alpha for p in passes]).mean(0)
            kinds[kind] = {
                "sink_rate": ctx.sink_rate(passes),
                "mean_alpha_1": float(alpha.nanmean()),  # NaN rows: blocks without softmax attention
                "loss": sum(p.loss() for p in passes) / len(passes) if ctx.lm else None,
                "sequences": len(seqs),
                "example": ctx.decode(seqs[0][0]) + " | " + "".join(ctx.decode(t) for t in seqs[0][1:9]),
            }
        return {
            "claim": "sinks come from training on natural text and need a first token; Gu et al. Table 1",
            "measured": {
                "length": self.length,
                "eps": ctx.eps,
                "bos": adds_bos(ctx.tokenizer),
                "kinds": kinds,
                "published_percent": PUBLISHED,
            },
            "interventions": {
                f"{kind}_input": {
                    "what": f"{kind} tokens instead of natural text",
                    "sink_rate": kinds[kind]["sink_rate"],
                    "sink_rate_delta": kinds[kind]["sink_rate"] - kinds["natural"]["sink_rate"],
                    "loss": kinds[kind]["loss"],
                    "loss_delta": kinds[kind]["loss"] - kinds["natural"]["loss"] if ctx.lm else None,
                }
                for kind in ("random", "repeated")
            },
        }
