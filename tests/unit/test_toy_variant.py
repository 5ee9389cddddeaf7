"""A new variant is one definition: softmax with a learnable temperature per head, defined in this file alone, runs
through the naive definition, the chunked path (forward and backward), patch, scan and a training step."""

import pytest
import torch

import sinklab
from sinklab.ops import attention
from sinklab.ops._common import masked_softmax
from sinklab.ops.variants import VARIANTS, Param, Variant, register_variant
from sinklab.remove import identity_variants, patch, unpatch
from sinklab.testing import assert_close


def temperature_weights(s, keep, *, t):
    """a_ij = softmax_j(t_h * s_ij): a learnable inverse temperature per head (1 = softmax)."""
    return masked_softmax(s * t.to(s.dtype).reshape(1, -1, 1, 1), keep)


TOY = Variant(
    name="temperature",
    doc=temperature_weights.__doc__,
    family="rowwise",
    params={"t": Param(("H",), learnable=True, required=True, identity=1.0, init=1.0, doc="inverse temperature")},
    weights=temperature_weights,
)


@pytest.fixture
def toy():
    register_variant(TOY)
    yield TOY
    VARIANTS.pop(TOY.name)


def test_naive_and_chunked_agree_forward_and_backward(toy):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 37, 16, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    t = torch.rand(4, generator=gen, dtype=torch.float64).add(0.5).requires_grad_()
    outs, grads = [], []
    for impl in ("naive", "chunked"):
        out = attention(q, k, v, variant="temperature", impl=impl, t=t)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v, t)))
    assert_close(outs[1], outs[0], torch.float64, "out")
    for name, a, b in zip("qkvt", grads[1], grads[0], strict=True):
        assert_close(a, b, torch.float64, f"d{name}")


def test_patch_scan_and_train(toy):
    model, tok = sinklab.load("tiny-llama")
    ids = tok(["a new variant in one file"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    assert "temperature" in identity_variants()
    patch(model, "temperature")
    with torch.no_grad():
        assert_close(model(input_ids=ids).logits, reference, torch.float32, "identity init")
    result = sinklab.scan(model, tok, ["some text to scan " * 8], max_tokens=48, progress=False)
    assert 0.0 <= result.sink_rate <= 1.0
    params = [p for n, p in model.named_parameters() if n.endswith("sinklab_t")]
    assert len(params) == model.config.num_hidden_layers
    optimizer = torch.optim.SGD(params, lr=1.0)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    optimizer.step()
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, reference)
    unpatch(model)
