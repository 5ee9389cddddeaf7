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
