"""``Record``: one object holding what a forward pass was observed to do, TransformerLens style.

Entries are keyed by a stable name and a block index: ``rec["attn.colsum", 3]`` is layer 3's [B, H, S] column sums;
``rec.stack("attn.entropy")`` stacks one name over the layers that have it -> [L, ...]; ``rec.names()`` lists what
was recorded; ``Record(names=...)`` keeps only names matching a filter (a set of names or a predicate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class Record:
    """Observed tensors by (name, layer)."""

    def __init__(self, names: Iterable[str] | Callable[[str], bool] | None = None):
        if names is None or callable(names):
            self._keep = names
        else:
            wanted = frozenset(names)
            self._keep = wanted.__contains__
        self._data: dict[tuple[str, int], torch.Tensor] = {}

    def wants(self, name: str) -> bool:
        return self._keep is None or self._keep(name)

    def put(self, name: str, layer: int, value: torch.Tensor | None) -> None:
        if value is not None and self.wants(name):
            self._data[(name, layer)] = value

    def __getitem__(self, key: tuple[str, int]) -> torch.Tensor:
        if key not in self._data:
            raise KeyError(f"nothing recorded as {key[0]!r} at layer {key[1]}; recorded: {', '.join(self.names())}")
        return self._data[key]

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._data

    def layers(self, name: str) -> list[int]:
        return sorted(layer for n, layer in self._data if n == name)

    def names(self) -> list[str]:
        return sorted({n for n, _ in self._data})

    def stack(self, name: str) -> torch.Tensor:
        """``name`` over every layer that has it, in layer order: [L, ...]."""
        layers = self.layers(name)
        if not layers:
            raise KeyError(f"nothing recorded as {name!r}; recorded: {', '.join(self.names())}")
        return torch.stack([self._data[(name, layer)] for layer in layers])

    def clear(self) -> None:
        self._data.clear()
