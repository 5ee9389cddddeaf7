"""explain on CUDA gives the CPU's record (skipped without CUDA).

The probes keep what they record on the CPU and feed some of it back through the model's modules (the outlier
probe's down_proj attribution, Gemma's post-norms): the fifth H200 lease lost its checkpoints' explain records to a
CPU tensor multiplied by a CUDA weight there, which no CPU run can show."""

import pytest
import torch

from sinklab.measure.probes import explain
from sinklab.measure.probes._common import RECORD_DIGITS
from sinklab.models.tiny import tiny_bert, tiny_gemma3, tiny_llama
from sinklab.testing import assert_same_record

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TEXT = ["The first token of a sequence draws attention whatever it means. " * 8]


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3, tiny_bert])
def test_explain_cuda_equals_cpu(build):
    model, tok = build(seed=1)
    kw = {"max_tokens": 70, "num_texts": 2, "bos": "always", "progress": False}
    cpu = explain(model, tok, TEXT, **kw).to_dict()
    gpu = explain(model.cuda(), tok, TEXT, **kw).to_dict()
    for key in ("seconds", "provenance"):
        cpu.pop(key), gpu.pop(key)
    assert_same_record(gpu, cpu, quantum=10.0**-RECORD_DIGITS)  # the H200: 0.44473 against 0.44474 once
