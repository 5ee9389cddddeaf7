"""Softmax-off-by-one (Miller 2023, "Attention is off by one"; Xiao et al. 2023 StreamingLLM Table 3):

    a_ij = exp(s_ij) / (1 + sum_j exp(s_ij))

a sink logit fixed at 0 (``sink`` variant with s_h = 0). Rows sum to < 1; the rest goes nowhere.
"""

from __future__ import annotations

import torch

from sinklab.ops.variants import Variant


def slot(q: torch.Tensor, scale: float, H: int) -> tuple[float, None]:
    """The "+1" is exp(0): a slot with logit 0 and value 0."""
    return 0.0, None


VARIANT = Variant(name="softmax1", doc=__doc__, family="slot", slot=slot, kernel="softmax1")
