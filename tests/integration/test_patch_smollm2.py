"""An identity-initialised patch of SmolLM2-135M leaves its logits unchanged (every variant where that is possible)."""

from __future__ import annotations

import pytest
import torch

from sinklab.remove import identity_variants, patch, unpatch

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("smollm2")]


@pytest.fixture(scope="module")
def reference(smollm2):
    model, tok = smollm2
    ids = tok("The attention sink is the first token, whatever it says.", return_tensors="pt").input_ids[:, :16]
    with torch.no_grad():
        return ids, model(input_ids=ids).logits


@pytest.mark.parametrize("variant", identity_variants())
def test_identity_patch_keeps_smollm2_logits(smollm2, reference, variant):
    model, _ = smollm2
    ids, ref = reference
    patch(model, variant)
    try:
        with torch.no_grad():
            got = model(input_ids=ids).logits
    finally:
        unpatch(model)
    err = ((got - ref).double().norm() / ref.double().norm()).item()
    assert err <= 1e-5, f"{variant}: relative logit error {err:.2e}"
