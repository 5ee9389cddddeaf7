"""The run a probe sees: the model, the sequences, their baseline records, and interventions shared by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch

from sinklab.hf import ModelView
from sinklab.measure import metrics
from sinklab.measure.probes._common import Baseline, HookSpec, Pass, forward, forward_batch


@dataclass
class ProbeContext:
    """Shared by the probes of one ``explain`` run. ``intervene`` caches passes by name, so two probes that ask for
    the same intervention (noop and bias both zero the sink) pay for it once. ``fused``: passes take the fast path
    (``sinklab.measure.probes._common.PassObserver``); False runs its twin. ``advance(n)`` moves the progress of
    the probe that is running by n passes."""

    model: object
    tokenizer: object
    sequences: list[list[int]]
    baselines: list[Baseline]
    eps: float
    causal: bool
    lm: bool
    decode: Callable[[int], str]
    advance: Callable[[int], None] = lambda n=1: None
    seed: int = 0
    fused: bool = True
    _cache: dict[str, list[Pass]] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.model.config.num_attention_heads

    @cached_property
    def attention_layers(self) -> list[int]:
        """The blocks with softmax attention, the only ones measured (a hybrid's linear layers have NaN rows)."""
        return [a.layer for a in ModelView(self.model).attention]

    def run(self, ids: list[int], hooks: HookSpec = None, *, mass: bool = False) -> Pass:
        """One observed pass (advances the progress by one); ``mass``: every key's mass, not only alpha_1."""
        result = forward(self.model, ids, hooks, mass=mass, fused=self.fused)
        self.advance(1)
        return result

    def run_batch(self, batch: list[list[int]]) -> list[Pass]:
        """One unmodified pass over equal-length sequences (advances the progress by one)."""
        result = forward_batch(self.model, batch, fused=self.fused)
        self.advance(1)
        return result

    def pending(self, names: tuple[str, ...] | list[str]) -> int:
        """Passes ``intervene`` will run for these names (one per sequence for each name not cached yet)."""
        return len(self.sequences) * len({n for n in names if n not in self._cache})

    def intervene(
        self,
        name: str,
        hooks_for: Callable[[int], HookSpec],
        edit: Callable[[list[int]], list[int]] | None = None,
        *,
        mass: bool = False,
    ) -> list[Pass]:
        """One pass per sequence with ``hooks_for(sequence index)`` (and the input changed by ``edit``), cached
        under ``name``; ``mass`` as in ``run``."""
        if name not in self._cache:
            self._cache[name] = [
                self.run(edit(ids) if edit else ids, hooks_for(i), mass=mass) for i, ids in enumerate(self.sequences)
            ]
        return self._cache[name]

    def baseline_alpha(self) -> torch.Tensor:
        """[L, H] alpha_1 averaged over the sequences."""
        return torch.stack([b.run.alpha for b in self.baselines]).mean(0)

    def sink_rate(self, passes: list[Pass], position: int = 0) -> float:
        """Gu et al.'s Sink^eps of key ``position``, every pass thresholded alone (as ``scan`` does)."""
        alpha = torch.stack([p.key_mass(position) for p in passes])  # [N, L, H]
        return metrics.sink_rate(metrics.sink_share(alpha, self.eps))

    def effect(self, passes: list[Pass]) -> dict:
        """Loss and sink rate of same-input intervention passes against the baseline."""
        base = [b.run for b in self.baselines]
        out = {
            "sink_rate": self.sink_rate(passes),
            "baseline_sink_rate": self.sink_rate(base),
        }
        out["sink_rate_delta"] = out["sink_rate"] - out["baseline_sink_rate"]
        if self.lm:
            loss = sum(p.loss() for p in passes) / len(passes)
            baseline = sum(p.loss() for p in base) / len(base)
            out.update(loss=loss, baseline_loss=baseline, loss_delta=loss - baseline)
        else:
            out.update(loss=None, loss_note=NO_LOSS)
        return out


NO_LOSS = "next-token loss does not apply: the model has no causal LM head (encoder); sink rate only"
