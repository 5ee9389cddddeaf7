"""Structures beyond one attention module per block: a hybrid whose first block is linear attention, and the record
of what was observed."""

import json

import torch

import sinklab
from sinklab.hf import ModelView
from sinklab.measure import Observer
from sinklab.models.tiny import tiny_arch, tiny_hybrid


def test_hybrid_scan_counts_softmax_layers_only(tmp_path):
    model, tok = tiny_hybrid()
    view = ModelView(model)
    assert [(a.layer, a.kind) for a in view.attention] == [(1, "full")]
    result = sinklab.scan(model, tok, ["a hybrid of linear and softmax attention " * 3], max_tokens=40, progress=False)
    assert result.first_token_mass[0].isnan().all() and not result.first_token_mass[1].isnan().any()
    assert result.sink_rate == float((result.first_token_mass[1] > result.eps).double().mean())
    metrics = result.to_dict()
    assert metrics["first_token_mass"][0] == [None] * 4
    json.dumps(metrics, allow_nan=False)
    result.save(tmp_path)  # the report and plots take layers without attention
    assert (tmp_path / "report.html").exists()


def test_record_holds_every_observed_statistic():
    model, tok = tiny_arch("llama")
    ids = tok(["the record of one forward pass"], return_tensors="pt")["input_ids"]
    with torch.no_grad(), Observer(model) as obs:
        model(input_ids=ids)
    rec = obs.record
    assert torch.equal(rec["attn.colsum", 1], obs.attention[1].colsum)
    assert rec.stack("attn.alpha1").shape == (2, 1, 4)  # [L, B, H]
    assert torch.equal(rec["resid.max_abs", 0], obs.residual[0].max_abs)
    assert {"attn.colsum", "attn.count", "attn.entropy", "resid.kurtosis"} <= set(rec.names())
    with torch.no_grad(), Observer(model, names={"attn.alpha1"}) as only:
        model(input_ids=ids)
    assert only.record.names() == ["attn.alpha1"]
