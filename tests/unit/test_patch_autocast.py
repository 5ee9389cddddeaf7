"""A patched model trains under autocast: RoPE promotes q and k to float32 while v stays in the autocast dtype."""

import pytest
import torch

from sinklab.models import load
from sinklab.remove import patch


@pytest.mark.parametrize("variant", ["sink", "softpick"])
def test_patched_model_under_autocast(variant):
    model, tok = load("tiny-llama")
    patch(model, variant, init="default")
    ids = tok(["autocast keeps v in bfloat16"], return_tensors="pt")["input_ids"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
