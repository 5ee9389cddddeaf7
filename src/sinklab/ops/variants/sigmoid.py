"""Sigmoid attention (Ramapuram et al. 2024, "Theory, Analysis, and Best Practices for Sigmoid Self-Attention"):

    a_ij = sigmoid(s_ij + b),   b = -log S by default (S = the number of keys, their Sec. 3)

no normalization across keys, so there is nothing to dump attention into. ``bias`` is a float, or a [H] tensor
(one per head, learnable in ``sinklab.remove.patch``). Masked entries give 0.
"""

from __future__ import annotations

import math

import torch

from sinklab.ops._common import head_param
from sinklab.ops.variants import Param, Variant, example_tensor


def default_bias(S: int) -> float:
    return -math.log(max(S, 1))


def weights(s: torch.Tensor, keep: torch.Tensor | None, *, bias: torch.Tensor | float) -> torch.Tensor:
    """sigmoid(s + bias) on logits s [B, H, T, S] where keep is True (None = all), 0 elsewhere."""
    b = head_param(bias, s.shape[1], s) if isinstance(bias, torch.Tensor) else bias
    a = torch.sigmoid(s + b)
    return a if keep is None else a.masked_fill(~keep, 0.0)


VARIANT = Variant(
    name="sigmoid",
    doc=__doc__,
    family="rowwise",
    params={"bias": Param(("H",), default_bias, learnable=True, scalar_ok=True, doc="logit bias, default -log S")},
    weights=weights,
    kernel="sigmoid",
    example=lambda H, D, device, dtype: {"bias": example_tensor((H,), device, dtype, seed=5)},
)
