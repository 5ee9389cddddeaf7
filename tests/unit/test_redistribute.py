"""ACT and ZeroTuning against their naive twins (full matrix reweighted by hand), their rules, JSON and refusals."""

import pytest
import torch

from sinklab.errors import SinklabInputError
from sinklab.exploit.redistribute import ACT, ZeroTuning, load_method
from sinklab.exploit.redistribute.act import reweight
from sinklab.exploit.redistribute.naive import ACTNaive, ZeroTuningNaive
from sinklab.exploit.redistribute.zerotuning import correct
from sinklab.hf import sites
from sinklab.method import Method
from sinklab.models import load
from sinklab.models.tiny import tiny_arch
from sinklab.ops import attention, attention_calls
from sinklab.ops.stats import StatsRequest
from sinklab.testing import assert_close, rel_err

TEXTS = ["attention sinks take mass that carries no meaning", "a shorter row"]
# eps low enough that a random tiny model has non-initial sinks
CASES = [
    (ACT, ACTNaive, dict(eps=0.03)),
    (ACT, ACTNaive, dict(heads={1: [0, 3]}, eps=0.03, beta=0.2)),
    (ZeroTuning, ZeroTuningNaive, dict(gamma=2.0)),
    (ZeroTuning, ZeroTuningNaive, dict(heads={0: [1], 2: [0, 2]}, gamma=0.3)),
]


def _logits(model, enc, method=None):
    with torch.no_grad():
        if method is None:
            return model(**enc).logits
        with method(model):
            return model(**enc).logits


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize(("fast", "naive", "kw"), CASES, ids=["act", "act-heads", "zt", "zt-heads"])
def test_fast_equals_naive_twin_on_tiny_llama(fast, naive, kw, side):
    model, tok = load("tiny-llama")
    tok.padding_side = side
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    real = enc["attention_mask"].bool()
    base = _logits(model, enc)
    got, want = _logits(model, enc, fast(**kw)), _logits(model, enc, naive(**kw))
    assert_close(got[real], want[real], torch.float32, fast.name)
    assert rel_err(got[real], base[real]) > 1e-3  # it really changes the model


@pytest.mark.parametrize("arch", ["gemma2", "qwen2"])
def test_fast_equals_naive_twin_on_tiny_archs(arch):
    model, tok = tiny_arch(arch)
    enc = tok(TEXTS[:1], return_tensors="pt")
    for fast, naive, kw in (CASES[0], CASES[2]):
        assert_close(_logits(model, enc, fast(**kw)), _logits(model, enc, naive(**kw)), torch.float32, arch)


def test_act_rule_keeps_rows_and_scales_sinks():
    w = torch.softmax(torch.randn(2, 3, 5, 7, dtype=torch.float64), -1)
    sinks = torch.zeros(2, 3, 1, 7, dtype=torch.bool)
    sinks[0, 1, 0, [2, 4]] = True
    new = reweight(w, sinks, 0.4)
    assert torch.allclose(new.sum(-1), w.sum(-1), atol=1e-12, rtol=0)
    assert torch.allclose(new[0, 1][:, [2, 4]], 0.4 * w[0, 1][:, [2, 4]])
    ratio = new[0, 1][:, [0, 1, 3, 5, 6]] / w[0, 1][:, [0, 1, 3, 5, 6]]
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio))  # the freed mass goes in proportion
    untouched = torch.ones(2, 3, dtype=torch.bool)
    untouched[0, 1] = False
    assert torch.equal(new[untouched], w[untouched])


def test_zerotuning_closed_form_is_the_logit_shift_through_the_fast_stats():
    """o' = (o + (g-1) a0 v0) / (1 + (g-1) a0) with a0 from the statistics request equals adding log g to key 0's
    logit (naive path), causal and windowed, GQA."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 9, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    gamma = torch.tensor([2.5, 1.0, 0.2, 1.0])
    for window in (None, 4):
        out, stats = attention(q, k, v, window=window, stats=StatsRequest(colsum=False, entropy=False, columns=(0,)))
        got = correct(out, stats.columns[..., 0], v[:, :, 0].repeat_interleave(2, 1), gamma)

        def shift(s, rows, keys):
            s = s.clone()
            s[..., 0] += gamma.log()[:, None]
            return s

        want = attention(q, k, v, window=window, edit_logits=shift, impl="naive")
        assert_close(got, want, torch.float32, f"window {window}")


def test_zerotuning_never_replaces_the_attention_computation():
    model, tok = load("tiny-llama")
    enc = tok(TEXTS[:1], return_tensors="pt")
    before = attention_calls()
    _logits(model, enc, ZeroTuning(heads={0: [0], 2: [1]}))
    calls = attention_calls() - before
    assert calls == {"softmax/chunked": 3}  # CPU: one call per layer, no naive pass (CUDA: softmax/triton)


def test_zerotuning_composes_with_another_statistics_request():
    class AskColumns(Method):
        def install(self, model_sites):
            model_sites.ask(self, StatsRequest(colsum=False, entropy=False, columns=(1, 2)))

    model, tok = load("tiny-llama")
    tok.padding_side = "left"  # row 1's first real token sits after columns another owner asked for
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    alone = _logits(model, enc, ZeroTuning(gamma=2.0))
    with AskColumns()(model):
        assert torch.equal(_logits(model, enc, ZeroTuning(gamma=2.0)), alone)


def test_json_round_trip(tmp_path):
    for method in (ACT(heads={"3": [2, 0, 2]}, beta=0.5), ZeroTuning(gamma=0.7), ZeroTuning(heads={})):
        again = load_method(method.save(tmp_path / "m.json"))
        assert type(again) is type(method) and again.to_dict() == method.to_dict()
    assert ACT(heads={"3": [2, 0, 2]}).heads == {3: [0, 2]}


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ACT(beta=0.0), "beta"),
        (lambda: ACT(beta=1.5), "beta"),
        (lambda: ZeroTuning(gamma=-1), "gamma"),
        (lambda: ZeroTuning(heads={"x": [0]}), "layer index"),
        (lambda: ZeroTuning(heads={0: [-1]}), "layer index"),
    ],
)
def test_bad_parameters_refused(make, match):
    with pytest.raises(SinklabInputError, match=match):
        make()


@pytest.mark.parametrize("heads", [{7: [0]}, {1: [4]}])
def test_heads_out_of_range_refused_at_attach(heads):
    model, _ = load("tiny-llama")
    with pytest.raises(SinklabInputError, match="heads"):
        ZeroTuning(heads=heads).attach(model)
    assert not sites(model).owners  # nothing left attached


def test_load_method_refusals(tmp_path):
    (tmp_path / "a.json").write_text('{"method": "nope"}')
    (tmp_path / "b.json").write_text('{"method": "act", "gamma": 2}')
    for name, match in (("a.json", "unknown method"), ("b.json", "unknown parameter"), ("c.json", "cannot read")):
        with pytest.raises(SinklabInputError, match=match):
            load_method(tmp_path / name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the Triton kernels)")
def test_zerotuning_runs_on_the_triton_kernels():
    """bf16 on CUDA: the first-token column comes from the Triton kernel and the model-level result is the twin's."""
    model, tok = load("tiny-llama")
    model = model.cuda().to(torch.bfloat16)
    ids = tok(TEXTS[:1], return_tensors="pt")["input_ids"].cuda()
    before = attention_calls()
    got = _logits(model, {"input_ids": ids}, ZeroTuning(gamma=2.0)).float()
    assert attention_calls() - before == {"softmax/triton": 3}
    assert_close(got, _logits(model, {"input_ids": ids}, ZeroTuningNaive(gamma=2.0)).float(), torch.bfloat16)
