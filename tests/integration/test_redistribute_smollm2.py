"""ACT and ZeroTuning on the embedded smollm2-135m agree with their naive twins (full matrix reweighted by hand)."""

import pytest
import torch

from sinklab.data import read_texts
from sinklab.exploit.redistribute import ACT, ZeroTuning
from sinklab.exploit.redistribute.naive import ACTNaive, ZeroTuningNaive
from sinklab.testing import assert_close, rel_err

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("smollm2")]


@pytest.mark.parametrize(
    ("fast", "naive", "kw"),
    [
        (ACT, ACTNaive, dict(heads={3: [0, 4, 8], 14: [2], 29: [1, 5]})),
        (ZeroTuning, ZeroTuningNaive, dict(heads={3: [0, 4, 8], 14: [2], 29: [1, 5]}, gamma=2.0)),
        (ZeroTuning, ZeroTuningNaive, dict(gamma=0.5)),
    ],
    ids=["act", "zerotuning-heads", "zerotuning-all"],
)
def test_fast_equals_naive_twin(smollm2, fast, naive, kw):
    model, tok = smollm2
    ids = tok(read_texts(None)[0][:400], return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with fast(**kw)(model):
            got = model(input_ids=ids).logits
        with naive(**kw)(model):
            want = model(input_ids=ids).logits
    assert_close(got, want, torch.float32, fast.name)
    assert rel_err(got, base) > 1e-4
