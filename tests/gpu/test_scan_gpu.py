"""scan and the Observer on CUDA give the CPU's numbers (skipped without CUDA)."""

import pytest
import torch

from sinklab.measure import Observer, scan
from sinklab.models import load
from sinklab.remove import patch
from sinklab.testing import assert_close

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "tiny-bert"])
def test_scan_cuda_equals_cpu(name):
    model, tok = load(name)
    cpu = scan(model, tok, None, max_tokens=96, num_texts=2, progress=False)
    gpu = scan(model.cuda(), tok, None, max_tokens=96, num_texts=2, progress=False)
    assert_close(gpu.first_token_mass, cpu.first_token_mass, torch.float32)
    assert_close(gpu.entropy, cpu.entropy, torch.float32)
    assert_close(gpu.layer_max_abs, cpu.layer_max_abs, torch.float32)


@pytest.mark.parametrize("variant", ["sink", "softpick", "gated"])
def test_observer_on_patched_cuda_model(variant):
    model, tok = load("tiny-llama")
    patch(model, variant, init="default")
    model.cuda()
    ids = tok(["a text to look at, with some length to it"], return_tensors="pt")["input_ids"].cuda()
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        with Observer(model) as obs:
            observed = model(input_ids=ids).logits
    assert_close(observed, reference, torch.float32)
    assert obs.attention[0].colsum.is_cuda


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_median_on_cuda_is_exact_and_never_synchronizes(dtype):
    """The byte-histogram kernels give torch.median's value of |x| on CUDA with no host synchronization."""
    from sinklab.measure.engine import residual_stats

    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(2, 3000, 64, generator=g) * torch.logspace(-4, 3, 64)).to(dtype).cuda()
    hidden[0, 0, 5] = 3000.0
    residual_stats(hidden, None)  # compiles the kernels (compilation may synchronize; a steady call must not)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = residual_stats(hidden, None)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for b in range(2):
        assert float(stats.median_abs[b]) == float(hidden[b].abs().float().median())
    assert float(stats.max_abs[0]) == float(hidden[0].abs().max())
