"""Clipped softmax (Bondarenko, Nagel and Blankevoort 2023, "Quantizable Transformers: Removing Outliers by Helping
Attention Heads Do Nothing", Eq. 4.1):

    a_ij = clip((zeta - gamma) * softmax(s_i)_j + gamma, 0, 1),   gamma < 0, zeta >= 1

so small probabilities become exact zeros. Defaults gamma = -0.03, zeta = 1.0: the best BERT-base setting of their
Table 1 (they also suggest gamma = -alpha / T with alpha in [2, 4]). Masked entries and empty rows give 0.
"""

from __future__ import annotations

import torch

from sinklab.errors import SinklabInputError
from sinklab.ops._common import masked_softmax
from sinklab.ops.variants import Param, Variant

GAMMA = -0.03
ZETA = 1.0


def weights(s: torch.Tensor, keep: torch.Tensor | None, *, gamma: float = GAMMA, zeta: float = ZETA) -> torch.Tensor:
    """Clipped softmax of logits s [..., S] over the entries where keep is True (None = all)."""
    a = torch.clamp((zeta - gamma) * masked_softmax(s, keep) + gamma, 0.0, 1.0)
    return a if keep is None else a.masked_fill(~keep, 0.0)


def check(params: dict) -> None:
    gamma, zeta = float(params["gamma"]), float(params["zeta"])
    if not (gamma < 0 and zeta >= 1):
        raise SinklabInputError(f"clipped softmax needs gamma < 0 and zeta >= 1; got gamma={gamma}, zeta={zeta}")


VARIANT = Variant(
    name="clipped",
    doc=__doc__,
    family="rowwise",
    params={
        "gamma": Param((), GAMMA, doc="lower stretch, < 0"),
        "zeta": Param((), ZETA, doc="upper stretch, >= 1"),
    },
    weights=weights,
    check=check,
    kernel="clipped",
    example=lambda H, D, device, dtype: {"gamma": -0.05, "zeta": 1.02},
)
