"""The Observer on models patched by sinklab.remove.patch: it computes the variant's weights (and the gate), so the
patched model's output is unchanged under observation and its statistics are the variant's."""

import pytest
import torch

from sinklab.measure import Observer
from sinklab.models import load
from sinklab.remove import patch
from sinklab.testing import assert_close

VARIANTS = ["softmax1", "sink", "kv_bias", "softpick", "clipped", "sigmoid", "gated"]


def _batch(tok):
    tok.padding_side = "left"
    enc = tok(["hello world, a longer text here to attend over", "hi"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_observed_patched_model_is_unchanged(variant):
    model, tok = load("tiny-llama")
    patch(model, variant, init="default")
    ids, mask = _batch(tok)
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        with Observer(model) as obs:
            observed = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    valid = mask.bool()
    assert_close(observed[valid], reference[valid], torch.float32, variant)
    colsum = obs.attention[1].colsum  # [B, H, S]
    rows = obs.attention[1].rows
    if variant in ("softmax1", "sink", "kv_bias", "softpick"):  # rows sum to at most 1
        assert (colsum.sum(-1) <= rows[:, None] + 1e-4).all()
    if variant == "gated":  # plain softmax weights: every valid row sums to 1
        assert_close(colsum.sum(-1), rows[:, None].expand_as(colsum.sum(-1)).to(colsum.dtype), torch.float32)


def test_sink_logit_takes_mass_off_the_keys():
    model, tok = load("tiny-llama")
    patch(model, "sink", init="default")
    ids, mask = _batch(tok)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "sinklab_sink"):
                module.sinklab_sink.fill_(30.0)  # the sink slot takes nearly all the mass
        with Observer(model) as obs:
            model(input_ids=ids, attention_mask=mask)
    assert obs.attention[0].colsum.sum() < 1e-3 * obs.attention[0].rows.sum()
