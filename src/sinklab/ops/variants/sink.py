"""Learnable sink logit per head (gpt-oss, OpenAI 2025; the learnable-sink idea of Xiao et al. 2023):

    a_ij = exp(s_ij) / (exp(sink_h) + sum_j exp(s_ij))

gpt-oss appends the logit sink_h as an extra column of the score matrix, takes the softmax and drops the column;
this is the same thing in closed form. Equivalently out = out_softmax * sigmoid(lse - sink_h).
"""

from __future__ import annotations

import torch

from sinklab.ops._common import head_param
from sinklab.ops.variants import Param, Variant, example_tensor


def slot(q: torch.Tensor, scale: float, H: int, *, sink: torch.Tensor) -> tuple[torch.Tensor, None]:
    """The slot's logit is sink_h ([1, H, 1, 1]); its value is 0."""
    return head_param(sink, H, q), None


VARIANT = Variant(
    name="sink",
    doc=__doc__,
    family="slot",
    params={"sink": Param(("H",), learnable=True, required=True, doc="per-head sink logit", identity=-30.0, init=0.0)},
    slot=slot,
    kernel="sink",
    example=lambda H, D, device, dtype: {"sink": example_tensor((H,), device, dtype, seed=1)},
)
