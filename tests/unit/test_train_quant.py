"""sinklab.remove.quant: W8A8 fake quantization rounds to 255 symmetric levels and restores the model exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sinklab.errors import SinklabInputError
from sinklab.remove.quant import W8A8, fake_quant_int8


@pytest.mark.parametrize("per_row", [False, True])
def test_fake_quant_is_symmetric_int8(per_row):
    x = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    q = fake_quant_int8(x, per_row)
    amax = x.abs().amax(-1, keepdim=True) if per_row else x.abs().amax()
    scale = amax / 127
    levels = q / scale
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # on the integer grid
    assert levels.abs().max() <= 127 + 1e-4
    assert ((q - x).abs() <= scale / 2 + 1e-6).all()  # round to nearest
    assert torch.allclose(q.abs().amax(-1, keepdim=True) if per_row else q.abs().amax(), amax)  # max is exact
    assert (fake_quant_int8(torch.zeros(3, 4)) == 0).all()  # no division by zero


def test_one_outlier_hurts_per_tensor_more_than_per_token():
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    x[0, 3] = 1000.0  # a massive activation on one token
    err_tensor = (fake_quant_int8(x) - x)[1:].norm()
    err_token = (fake_quant_int8(x, per_row=True) - x)[1:].norm()
    assert err_tensor > 20 * err_token


def test_w8a8_quantizes_linears_and_restores_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model.lm_head = nn.Linear(4, 4)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 8)
    full = model(x)
    with W8A8(model, activations="token", weights="channel") as q:
        assert len(q._handles) == 2  # lm_head is skipped
        w = model[0].weight
        step = w.abs().amax(-1, keepdim=True) / 127
        assert torch.allclose(w / step, (w / step).round(), atol=1e-3)
        quant = model(x)
        assert not torch.equal(quant, full)
        assert (quant - full).norm() / full.norm() < 0.05
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert torch.equal(model(x), full)


def test_w8a8_rejects_unknown_granularity():
    with pytest.raises(SinklabInputError, match="accepted: tensor, token"):
        W8A8(nn.Linear(2, 2), activations="channel")
    with pytest.raises(SinklabInputError, match="accepted: tensor, channel"):
        W8A8(nn.Linear(2, 2), weights="token")
