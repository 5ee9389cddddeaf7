"""Softpick (Zuhri, Fuadi and Aji 2025, "Softpick: No Attention Sink, No Massive Activations with Rectified
Softmax"):

    a_ij = relu(exp(s_ij) - 1) / (sum_{j visible} |exp(s_ij) - 1| + eps)

masked entries are excluded from the sum. Rows sum to at most 1, and a row can be all zeros. Evaluated stably as
relu(e^{s-m} - e^{-m}) / (sum |e^{s-m} - e^{-m}| + eps e^{-m}) with m = max(0, max_j s_ij).
``eps`` = 1e-8 as in the authors' reference implementation (it only matters when every logit is exactly 0).
"""

from __future__ import annotations

import torch

from sinklab.errors import SinklabInputError
from sinklab.ops.variants import Param, Variant

EPS = 1e-8


def weights(s: torch.Tensor, keep: torch.Tensor | None, *, eps: float = EPS) -> torch.Tensor:
    """Softpick of logits s [..., S] over the entries where keep is True (None = all)."""
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    m = s.amax(-1, keepdim=True).clamp_min(0).detach()  # -inf rows clamp to 0
    e0 = torch.exp(-m)
    d = torch.exp(s - m) - e0  # e^{-m} (e^s - 1)
    if keep is not None:
        d = d.masked_fill(~keep, 0.0)
    return torch.relu(d) / (d.abs().sum(-1, keepdim=True) + eps * e0)


def check(params: dict) -> None:
    if float(params["eps"]) <= 0:
        raise SinklabInputError(f"softpick eps must be > 0, got {float(params['eps'])}")


VARIANT = Variant(
    name="softpick",
    doc=__doc__,
    family="rowwise",
    params={"eps": Param((), EPS, doc="denominator epsilon")},
    weights=weights,
    check=check,
    kernel="softpick",
)
