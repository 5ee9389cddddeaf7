"""The record one attention call leaves behind."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionStats:
    """Statistics of one attention call over valid (non-padded) queries; see ``naive.py`` for the formulas.

    colsum [B, H, S]: mass each key receives; count [B, S]: valid queries allowed to attend each key;
    entropy [B, H]: summed row entropy (nats); rows [B]: valid query rows; pattern [B, H, w, w] or None: the
    attention map of the first w queries and keys, kept for plots.
    """

    colsum: torch.Tensor
    count: torch.Tensor
    entropy: torch.Tensor
    rows: torch.Tensor
    pattern: torch.Tensor | None = None
