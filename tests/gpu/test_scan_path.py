"""On CUDA, scan runs the fused Triton kernels (statistics included), and their numbers are the chunked path's."""

import pytest
import torch

import sinklab.hf.site as site_module
from sinklab.measure import scan
from sinklab.models import load
from sinklab.ops import attention_calls
from sinklab.testing import assert_close

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_scan_on_cuda_runs_the_kernels(name, monkeypatch):
    model, tok = load(name)
    model = model.cuda().to(torch.bfloat16)
    before = attention_calls()
    fused = scan(model, tok, None, max_tokens=256, num_texts=2, progress=False)
    ran = attention_calls() - before
    assert set(ran) == {"softmax/triton"}, ran
    real = site_module.ops_attention
    monkeypatch.setattr(site_module, "ops_attention", lambda *a, **kw: real(*a, impl="chunked", **kw))
    chunked = scan(model, tok, None, max_tokens=256, num_texts=2, progress=False)
    assert_close(fused.first_token_mass, chunked.first_token_mass, torch.bfloat16, "first-token mass")
    assert_close(fused.entropy, chunked.entropy, torch.bfloat16, "entropy")
