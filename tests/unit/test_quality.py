"""quality(): every metric is the number its defining code gives, and the model is left as it was."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from sinklab.errors import SinklabInputError
from sinklab.exploit.stream import parallel_nll
from sinklab.measure.quality import quality
from sinklab.measure.scanner import scan
from sinklab.method import Method
from sinklab.models import load
from sinklab.remove.quant import W8A8


@pytest.fixture(scope="module")
def tiny():
    return load("tiny-llama")


def _ids(model, B=2, T=48):
    return torch.randint(3, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))


def test_every_metric_equals_its_definition(tiny):
    model, tok = tiny
    ids = _ids(model)
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    got = quality(model, ids, window=8, num_sinks=2)
    nll = F.cross_entropy(reference[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert got["ppl"] == pytest.approx(math.exp(nll), rel=1e-5)
    with W8A8(model), torch.no_grad():
        w8 = F.cross_entropy(model(input_ids=ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert got["ppl_w8a8"] == pytest.approx(math.exp(w8), rel=1e-5)
    for key, policy in (("ppl_kv4", "int4"), ("ppl_window", "window"), ("ppl_sinks", "sink")):
        # window policy = SinkCache(0, sinks + window): quality's window-only cache holds `window` recent tokens
        sinks, recent = (2, 8) if policy != "window" else (0, 8)
        rows = [parallel_nll(model, ids[b : b + 1], policy, sinks, recent).nll for b in range(2)]
        want = math.exp(float(np.mean(rows)))
        assert got[key] == pytest.approx(want, rel=1e-5), key
    result = scan(model, tok, ids, eps=0.3, batch_size=2, num_texts=None, keep_pattern=0, progress=False)
    assert got["sink_rate"] == pytest.approx(result.sink_rate)
    assert got["first_token_mass"] == pytest.approx(float(result.first_token_mass.mean()), rel=1e-5)
    assert got["max_abs"] == pytest.approx(float(result.layer_max_abs.max()), rel=1e-5)
    assert got["kurtosis"] == pytest.approx(float(result.layer_kurtosis.max()), rel=1e-5)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference)  # nothing left attached


def test_keep_first_keeps_those_keys_exact(tiny):
    model, _ = tiny
    ids = _ids(model, 1)
    plain = quality(model, ids, parts=("ppl", "ppl_kv4"))
    kept_all = quality(model, ids, keep_first=ids.shape[1], parts=("ppl_kv4",))
    assert kept_all["ppl_kv4"] == pytest.approx(plain["ppl"], rel=1e-6)
    assert plain["ppl_kv4"] != pytest.approx(plain["ppl"], rel=1e-6)


def test_bad_requests_are_refused(tiny):
    model, _ = tiny
    with pytest.raises(SinklabInputError, match="accepted"):
        quality(model, _ids(model), parts=("ppl", "bleu"))
    with pytest.raises(SinklabInputError, match="tokens"):
        quality(model, torch.tensor([1, 2, 3]))
    with pytest.raises(SinklabInputError, match="vocabulary"):
        quality(model, torch.tensor([[1, 10**6]]))


class _OneSlot(Method):
    """Prepends one zero key/value to every attention (a stand-in prefix slot)."""

    name = ""

    def install(self, model_sites):
        for site in model_sites.attention:
            model_sites.add(self, f"{site.name}.qkv", lambda qkv, call: (qkv[0], *(_zero_first(x) for x in qkv[1:])))


def _zero_first(x):
    return torch.cat([torch.zeros_like(x[:, :, :1]), x], 2)


def test_prepended_keys_are_not_the_first_token(tiny):
    model, _ = tiny
    ids = _ids(model, 1)
    plain = quality(model, ids, parts=("ppl",))
    with _OneSlot()(model):
        slotted = quality(model, ids, parts=("ppl",))
    assert "prefix_mass" not in plain and 0 < slotted["prefix_mass"] < 1
    assert slotted["first_token_mass"] != pytest.approx(plain["first_token_mass"])
    assert slotted["first_token_mass"] + slotted["prefix_mass"] <= 1
