"""The attention variants and their parameters: one table that ``ops.attention`` validates against and
``sinklab.remove.patch`` builds its nn.Parameters from."""

from __future__ import annotations

from dataclasses import dataclass

from sinklab.ops.clipped.naive import GAMMA, ZETA
from sinklab.ops.softpick.naive import EPS


@dataclass(frozen=True)
class Param:
    """One variant parameter. ``shape``: () a float, ("H",) one per query head, ("H", "D") a vector per head.
    ``scalar_ok``: a float is accepted too (broadcast to every head). ``required``: no default."""

    shape: tuple[str, ...]
    default: float | None = None
    learnable: bool = False
    required: bool = False
    scalar_ok: bool = False
    doc: str = ""


VARIANTS: dict[str, dict[str, Param]] = {
    "softmax": {},
    "softmax1": {},
    "sink": {"sink": Param(("H",), learnable=True, required=True, doc="per-head sink logit")},
    "kv_bias": {
        "k_bias": Param(("H", "D"), learnable=True, required=True, doc="appended key per head"),
        "v_bias": Param(("H", "D"), learnable=True, required=True, doc="appended value per head"),
        "sink": Param(("H",), learnable=True, doc="extra logit of the bias slot (default 0)"),
    },
    "softpick": {"eps": Param((), EPS, doc="denominator epsilon")},
    "clipped": {
        "gamma": Param((), GAMMA, doc="lower stretch, < 0"),
        "zeta": Param((), ZETA, doc="upper stretch, >= 1"),
    },
    "sigmoid": {"bias": Param(("H",), None, learnable=True, scalar_ok=True, doc="logit bias, default -log S")},
}
