"""A patched model trains under autocast, and its attention runs in the autocast dtype (as SDPA would), so the
half-precision kernels take it on CUDA."""

import pytest
import torch

from sinklab.models import load
from sinklab.remove import patch


@pytest.mark.parametrize("variant", ["sink", "softpick"])
def test_patched_model_under_autocast(variant, monkeypatch):
    import sinklab.hf.site as patch_module

    real, dtypes = patch_module.ops_attention, set()

    def spy(q, k, v, **kw):
        dtypes.add((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, **kw)

    monkeypatch.setattr(patch_module, "ops_attention", spy)
    model, tok = load("tiny-llama")
    patch(model, variant, init="default")
    ids = tok(["autocast keeps v in bfloat16"], return_tensors="pt")["input_ids"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert dtypes == {(torch.bfloat16,) * 3}
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_float32_inputs_are_cast_to_the_autocast_dtype(monkeypatch):
    """On an H200 (transformers 5.17) q, k and v all reached the attention function in float32 under autocast, and
    the half-precision kernels were skipped: the function casts as autocast casts SDPA."""
    import sinklab.hf.site as patch_module

    real, dtypes = patch_module.ops_attention, []

    def spy(q, k, v, **kw):
        dtypes.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, **kw)

    monkeypatch.setattr(patch_module, "ops_attention", spy)
    model, _ = load("tiny-llama")
    patch(model, "softpick")
    site = patch_module.sites(model).attention[0]
    q, k, v = (torch.randn(1, 4, 6, 16) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = site(site.info.module, q, k, v, None, {"scaling": 0.25})
    out32 = site(site.info.module, q, k, v, None, {"scaling": 0.25})
    assert dtypes == [(torch.bfloat16,) * 3, (torch.float32,) * 3]
    assert out.dtype == torch.bfloat16 and (out.float() - out32).abs().max() < 0.05
