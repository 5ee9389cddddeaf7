"""The attention variants, one file each (``variants/<name>.py``): the single source of truth for a variant.

A ``Variant`` holds its parameters (``Param``: shape, default, learnable, constraints, the values for
``init="identity"`` / ``init="default"`` of ``sinklab.remove.patch``), its family and weights rule, its Triton mode
and example parameters for tests. ``sinklab.ops.attention`` dispatches by family:

- ``"softmax"``: plain softmax over the visible keys;
- ``"slot"``: softmax over the visible keys plus one extra slot, ``slot(q, scale, H, **params)`` -> (a logit
  broadcastable to [B, H, T, 1], a value [H, D] or None = 0) (softmax1, sink, kv_bias);
- ``"rowwise"``: ``weights(s, keep, **params)`` maps a whole row of logits to its weights (softpick, clipped,
  sigmoid).

``register_variant(v)`` adds one (a test can define its own); ``get_variant(name)`` looks one up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, get_args

import torch

from sinklab.errors import SinklabInputError
from sinklab.ops._common import slot_softmax

Family = Literal["softmax", "slot", "rowwise"]
FAMILIES = get_args(Family)


@dataclass(frozen=True)
class Param:
    """One variant parameter. ``shape``: () a float, ("H",) one per query head, ("H", "D") a vector per head.
    ``default``: a float, a function of S (the number of keys), or None (no default). ``required``: the caller must
    give it. ``scalar_ok``: a float is accepted too (broadcast to every head). ``identity`` / ``init``: the initial
    value of a learnable parameter for ``init="identity"`` / ``init="default"`` of ``sinklab.remove.patch`` (a float,
    "normal" = N(0, config.initializer_range), or None = not created unless given)."""

    shape: tuple[str, ...]
    default: float | Callable[[int], float] | None = None
    learnable: bool = False
    required: bool = False
    scalar_ok: bool = False
    doc: str = ""
    identity: float | str | None = None
    init: float | str | None = None


class Weights(NamedTuple):
    """What a variant's rule gives for a block of rows: weights on the keys and, for the slot family, the slot."""

    p: torch.Tensor  # [B, H, R, K] weights on the real keys (0 where masked)
    out: torch.Tensor | None = None  # [B, H, R, D] the slot's contribution to the output (slot weight * value)
    slot: torch.Tensor | None = None  # [B, H, R, 1] the slot's weight (slot family)
    lse: torch.Tensor | None = None  # [B, H, R, 1] log normalizer incl. the slot logit (softmax, slot families)


RowWeights = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], Weights]
"""``rule(scores [B, H, R, K], keep bool or None, q_rows [B, H, R, D]) -> Weights`` over whole rows."""


def _no_constraint(params: dict) -> None:
    return None


def _no_example(H: int, D: int, device, dtype) -> dict:
    return {}


@dataclass(frozen=True, eq=False)
class Variant:
    """One attention variant; ``doc`` is its formula and paper (its module docstring)."""

    name: str
    doc: str
    family: Family
    params: dict[str, Param] = field(default_factory=dict)
    weights: Callable[..., torch.Tensor] | None = None  # rowwise: weights(s, keep, **params) -> [..., K]
    slot: Callable[..., tuple] | None = None  # slot: slot(q, scale, H, **params) -> (logit, value | None)
    check: Callable[[dict], None] = _no_constraint  # constraints on the resolved params, raises SinklabInputError
    kernel: str | None = None  # Triton mode of sinklab.ops._triton.flash, None = no kernel
    example: Callable[[int, int, torch.device | str, torch.dtype], dict] = _no_example  # params for tests

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"variant {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        if (self.family == "rowwise") != (self.weights is not None) or (self.family == "slot") != (
            self.slot is not None
        ):
            raise ValueError(f"variant {self.name!r}: a rowwise variant needs weights, a slot variant needs slot")

    def with_defaults(self, params: dict, num_keys: int) -> dict:
        """``params`` plus every missing parameter at its default (a callable default gets the number of keys)."""
        full = dict(params)
        for name, p in self.params.items():
            if full.get(name) is None and p.default is not None:
                full[name] = p.default(num_keys) if callable(p.default) else p.default
        return full

    def resolve(self, params: dict, H: int, D: int, S: int) -> dict:
        """Validate the given ``params`` (names, shapes, finiteness), fill in the defaults, check the constraints."""
        accepted = ", ".join(f"{n} {list(p.shape) or 'float'}" for n, p in self.params.items()) or "none"
        for name in params:
            if name not in self.params:
                raise SinklabInputError(f"variant {self.name!r} got unknown parameter {name!r}; accepted: {accepted}")
        for name, p in self.params.items():
            x = params.get(name)
            if x is None:
                if p.required:
                    raise SinklabInputError(
                        f"variant {self.name!r} needs parameter {name!r} ({p.doc}); accepted: {accepted}"
                    )
                continue
            if not p.shape or (p.scalar_ok and not isinstance(x, torch.Tensor)):
                if (isinstance(x, torch.Tensor) and x.numel() != 1) or not isinstance(x, int | float | torch.Tensor):
                    raise SinklabInputError(f"{self.name} parameter {name!r} must be a float, got {x!r}")
                if not math.isfinite(float(x)):
                    raise SinklabInputError(f"{self.name} parameter {name!r} must be finite, got {float(x)}")
                continue
            want = [{"H": H, "D": D}[d] for d in p.shape]
            if not isinstance(x, torch.Tensor) or (list(x.shape) != want and not (p.scalar_ok and x.numel() == 1)):
                got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise SinklabInputError(
                    f"{self.name} parameter {name!r} must be a tensor of shape {p.shape} = {want} ({p.doc}); got {got}"
                )
        full = self.with_defaults(params, S)
        self.check(full)
        return full

    def rule(self, params: dict, scale: float) -> RowWeights:
        """The weights of whole rows of logits, with ``params`` resolved (``resolve`` / ``with_defaults``)."""
        if self.family == "rowwise":
            return lambda s, keep, q: Weights(self.weights(s, keep, **params))
        if self.family == "softmax":
            return lambda s, keep, q: Weights(*_slot_weights(s, keep, None, None))

        def slot_rule(s: torch.Tensor, keep: torch.Tensor | None, q: torch.Tensor) -> Weights:
            logit, value = self.slot(q, scale, s.shape[1], **params)
            return Weights(*_slot_weights(s, keep, logit, value))

        return slot_rule

    def row_weights(self, params: dict, scale: float, num_keys: int) -> RowWeights | None:
        """The rule for ``sinklab.ops.colsum.chunked.attention_rows(weights=...)``; None for the softmax family
        (the chunked pass's own softmax). Missing parameters take their defaults for ``num_keys`` keys."""
        return None if self.family == "softmax" else self.rule(self.with_defaults(params, num_keys), scale)


def _slot_weights(s, keep, logit, value):
    """(p, slot output, slot weight, lse) of softmax over the kept logits plus an optional slot logit and value."""
    p, slot, lse = slot_softmax(s, keep, logit)
    out = None if value is None else slot * value.to(s.dtype)[None, :, None, :]  # [B, H, R, D]
    return p, out, slot, lse


def example_tensor(shape: tuple[int, ...], device, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A deterministic N(0, 1) tensor for a variant's ``example`` parameters."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    """Add ``variant`` to ``VARIANTS`` (replacing one of the same name) and return it."""
    VARIANTS[variant.name] = variant
    return variant


def get_variant(name: str) -> Variant:
    """The registered variant ``name``; SinklabInputError listing the accepted names otherwise."""
    if name not in VARIANTS:
        raise SinklabInputError(f"unknown attention variant {name!r}; accepted: {', '.join(VARIANTS)}")
    return VARIANTS[name]


from sinklab.ops.variants import clipped, kv_bias, sigmoid, sink, softmax, softmax1, softpick  # noqa: E402

for _module in (softmax, softmax1, sink, kv_bias, softpick, clipped, sigmoid):
    register_variant(_module.VARIANT)
