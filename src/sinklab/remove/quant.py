"""W8A8 fake quantization: the test that massive activations fail (Bondarenko et al. 2023, Sun et al. 2024).

Symmetric int8 round-to-nearest, simulated in floating point: q(x) = clamp(round(x / s), -127, 127) * s with
s = max|x| / 127, taken over the whole tensor ("tensor") or over each row ("token" for activations, "channel" for
weights). One outlier of 1000 with per-tensor scales leaves a step of 8 for every other activation: that is why
models with sinks lose perplexity under W8A8 and sink-free ones (clipped softmax, gating, softpick) do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from sinklab.errors import SinklabInputError

Granularity = Literal["tensor", "token", "channel"]


def fake_quant_int8(x: torch.Tensor, per_row: bool = False) -> torch.Tensor:
    """Symmetric int8 quantize-dequantize of ``x``: one scale for the tensor, or one per row (last dim reduced)."""
    amax = x.abs().amax(dim=-1, keepdim=True) if per_row else x.abs().amax()
    scale = amax.float().clamp_min(1e-12) / 127.0
    return (x.float() / scale).round().clamp(-127, 127).mul(scale).to(x.dtype)


@dataclass
class W8A8:
    """Context manager: every ``nn.Linear`` of the model except ``skip`` (the LM head by default) runs on int8-rounded
    weights and int8-rounded inputs; weights are restored on exit.

    >>> with W8A8(model, activations="tensor"):
    ...     loss = model(ids, labels=ids).loss
    """

    model: nn.Module
    activations: Granularity = "tensor"  # "tensor" or "token" (one scale per token row)
    weights: Granularity = "tensor"  # "tensor" or "channel" (one scale per output channel)
    skip: tuple[str, ...] = ("lm_head",)
    _saved: list = field(default_factory=list, init=False, repr=False)
    _handles: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.activations not in ("tensor", "token"):
            raise SinklabInputError(f"unknown activation granularity {self.activations!r}; accepted: tensor, token")
        if self.weights not in ("tensor", "channel"):
            raise SinklabInputError(f"unknown weight granularity {self.weights!r}; accepted: tensor, channel")

    def _quantize_input(self, module, args):
        return (fake_quant_int8(args[0], per_row=self.activations == "token"), *args[1:])

    @torch.no_grad()
    def __enter__(self) -> W8A8:
        for name, module in self.model.named_modules():
            if not isinstance(module, nn.Linear) or name.split(".")[-1] in self.skip:
                continue
            self._saved.append((module, module.weight.detach().clone()))
            module.weight.copy_(fake_quant_int8(module.weight, per_row=self.weights == "channel"))
            self._handles.append(module.register_forward_pre_hook(self._quantize_input))
        return self

    @torch.no_grad()
    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        for module, weight in self._saved:
            module.weight.copy_(weight)
        self._handles.clear()
        self._saved.clear()
