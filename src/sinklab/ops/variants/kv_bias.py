"""Explicit key/value bias (Sun et al. 2024, "Massive Activations in LLMs", Sec. 5; Gu et al. 2024 Sec. 7):
one learnable key k'_h and value v'_h per head appended to every query's key/value set:

    out_i = sum_{j in visible(i) + {'}} softmax_j(scale * q_i . k_j [+ sink_h for j = ']) v_j

The optional ``sink`` [H] is a logit added to the bias slot only (default 0): with k_bias = v_bias = 0 and a very
negative ``sink`` the slot gets ~0 weight, which is how ``sinklab.remove.patch`` starts a pretrained model unchanged.
A row with no visible real key gives 0 (it is padding), not v'_h.
"""

from __future__ import annotations

import torch

from sinklab.ops._common import head_param
from sinklab.ops.variants import Param, Variant, example_tensor


def slot(
    q: torch.Tensor, scale: float, H: int, *, k_bias: torch.Tensor, v_bias: torch.Tensor, sink: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The slot's logit scale * q . k'_h + sink_h ([B, H, T, 1]) and its value v'_h ([H, D])."""
    return scale * (q @ k_bias.to(q.dtype)[None, :, :, None]) + head_param(sink, H, q), v_bias


VARIANT = Variant(
    name="kv_bias",
    doc=__doc__,
    family="slot",
    params={
        "k_bias": Param(
            ("H", "D"), learnable=True, required=True, doc="appended key per head", identity=0.0, init="normal"
        ),
        "v_bias": Param(
            ("H", "D"), learnable=True, required=True, doc="appended value per head", identity=0.0, init=0.0
        ),
        "sink": Param(("H",), 0.0, learnable=True, doc="extra logit of the bias slot (default 0)", identity=-30.0),
    },
    slot=slot,
    kernel="kv_bias",
    example=lambda H, D, device, dtype: {
        "k_bias": example_tensor((H, D), device, dtype, seed=2),
        "v_bias": example_tensor((H, D), device, dtype, seed=3),
        "sink": example_tensor((H,), device, dtype, seed=4),
    },
)
