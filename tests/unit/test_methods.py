"""One test matrix over every registered method: attach, run, detach, and the model is exactly what it was."""

import pytest
import torch

from sinklab.measure import Observer
from sinklab.method import KINDS, Method, get_method, methods
from sinklab.models import load
from sinklab.testing import assert_close

METHODS = sorted(methods())


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("name", METHODS)
def test_attach_run_detach_leaves_the_model_unchanged(name):
    model, tok = load("tiny-llama")
    ids = tok(["methods attach to the attention sites and leave nothing behind"], return_tensors="pt")["input_ids"]
    before_impl = model.config._attn_implementation
    before_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference = _logits(model, ids)
    method = get_method(name)()  # every method has a default configuration
    assert isinstance(method, Method) and method.kind in KINDS
    with method(model):
        during = _logits(model, ids)
        if method.kind == "measure":  # observing never changes outputs
            assert_close(during, reference, torch.float32, name)
    assert model.config._attn_implementation == before_impl
    assert {n: p for n, p in model.named_parameters()}.keys() == before_params.keys()
    assert torch.equal(_logits(model, ids), reference)  # bit-identical after detach


def test_methods_compose_and_attach_once():
    model, tok = load("tiny-llama")
    ids = tok(["two methods at once"], return_tensors="pt")["input_ids"]
    reference = _logits(model, ids)
    observer = Observer()
    with observer(model), get_method("variant")(variant="sink")(model):
        _logits(model, ids)
        assert set(observer.attention) == {0, 1, 2}
        with pytest.raises(Exception, match="already"):
            observer.attach(model)
    assert torch.equal(_logits(model, ids), reference)
