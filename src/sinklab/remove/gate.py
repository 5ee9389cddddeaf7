"""Gated attention (Qiu et al. 2025, "Gated Attention for Large Language Models: Non-linearity, Sparsity, and
Attention-Sink-Free"; the G1 position of their Table 1):

    Y' = c * Y ⊙ sigmoid(X W_g)

after the attention output Y ([B, T, H, D]) and before the output projection, elementwise (W_g: [d_model, H * D])
or headwise (W_g: [d_model, H], one scalar per head), head-specific, without bias. X is the attention module's input,
the hidden state after the layer's input norm: the same X that feeds the query projection, as in the paper.

``c`` is a constant, not a parameter: 1 for a freshly initialised gate (W_g ~ N(0, initializer_range), the paper's
setting), 2 for ``init="identity"`` (W_g = 0, so c * sigmoid(0) = 1 exactly and a pretrained model's output is
bit-identical); c = 2 is the same as scaling the output projection by 2.
"""

from __future__ import annotations

import torch
from torch import nn


def make_gate(hidden: int, heads: int, head_dim: int, *, headwise: bool, identity: bool, std: float, like) -> nn.Linear:
    """The gate projection X -> gate logits, [d_model] -> [H * D] (elementwise) or [H] (headwise)."""
    gate = nn.Linear(hidden, heads if headwise else heads * head_dim, bias=False).to(like.device, like.dtype)
    with torch.no_grad():
        if identity:
            gate.weight.zero_()
        else:
            gate.weight.normal_(0.0, std)
    return gate


def apply_gate(out: torch.Tensor, x: torch.Tensor, gate: nn.Linear, scale: float) -> torch.Tensor:
    """out [B, T, H, D] attention output, x [B, T, d_model] attention input -> gated [B, T, H, D]."""
    B, T, H, _ = out.shape
    g = torch.sigmoid(gate(x.to(gate.weight.dtype))).view(B, T, H, -1)  # [B, T, H, D or 1]
    return out * g.to(out.dtype) * scale
