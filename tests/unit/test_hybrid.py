"""Structures beyond one attention module per block: a hybrid whose first block is linear attention, and the record
of what was observed."""

import json

import torch
from typer.testing import CliRunner

import sinklab
from sinklab.cli import app
from sinklab.hf import ModelView
from sinklab.measure import Observer
from sinklab.measure.engine import skipped_layers
from sinklab.measure.probes import explain
from sinklab.models.tiny import tiny_arch, tiny_hybrid

TEXT = "a hybrid of linear and softmax attention, measured only where the softmax attention is " * 3
LINEAR_FIRST = [{"layer": 0, "type": "linear_attention"}]


def test_hybrid_scan_counts_softmax_layers_only(tmp_path):
    model, tok = tiny_hybrid()
    view = ModelView(model)
    assert [(a.layer, a.kind) for a in view.attention] == [(1, "full")]
    result = sinklab.scan(model, tok, ["a hybrid of linear and softmax attention " * 3], max_tokens=40, progress=False)
    assert result.first_token_mass[0].isnan().all() and not result.first_token_mass[1].isnan().any()
    assert result.sink_rate == float((result.first_token_mass[1] > result.eps).double().mean())
    metrics = result.to_dict()
    assert metrics["first_token_mass"][0] == [None] * 4
    assert metrics["skipped_layers"] == LINEAR_FIRST
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


def test_skipped_layers_are_the_blocks_without_a_softmax_site():
    assert skipped_layers(tiny_hybrid()[0]) == LINEAR_FIRST
    assert skipped_layers(tiny_arch("gemma3")[0]) == []  # sliding-window layers are softmax attention


def test_hybrid_explain_measures_the_softmax_layers_and_names_the_skipped_ones(tmp_path):
    model, tok = tiny_hybrid()
    result = explain(model, tok, [TEXT], max_tokens=64, progress=False)
    d = result.to_dict()
    assert d["skipped_layers"] == LINEAR_FIRST and not d["not_applicable"]
    json.dumps(d, allow_nan=False)  # the linear layer's per-head rows are null
    noop = d["probes"]["noop"]["measured"]
    assert noop["alpha_1"][0] == [None] * 4 and None not in noop["alpha_1"][1]
    scanned = sinklab.scan(model, tok, [TEXT], max_tokens=64, progress=False).first_token_mass
    assert torch.allclose(torch.tensor(noop["alpha_1"][1], dtype=torch.float64), scanned[1], atol=1e-5)
    assert [row["layer"] for row in noop["per_layer"]] == [1]
    assert d["baseline"]["mean_alpha_1"] is not None and noop["median_value_ratio_other_heads"] is not None
    for seq in d["probes"]["outlier"]["measured"]["per_sequence"]:  # a linear first block: no input, no attribution
        linear = seq["write_layer"] == 0
        assert seq["token_mixer"] == ("linear attention" if linear else "attention")
        assert (seq["attn_writes"] is None) == linear
    result.save(tmp_path)  # the report and plots take the skipped layer
    assert (tmp_path / "report.html").exists()


def test_explain_cli_says_which_layers_it_skips(tmp_path):
    model, tok = tiny_hybrid()
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "text.txt").write_text(TEXT)
    args = ["explain", "--model", str(tmp_path / "model"), "--text", str(tmp_path / "text.txt"), "--probes", "noop"]
    result = CliRunner().invoke(app, [*args, "--max-tokens", "48", "--num-texts", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "skipped layers 0 (linear_attention): no softmax attention to measure" in result.stdout
    assert json.loads((tmp_path / "out" / "probes.json").read_text())["skipped_layers"] == LINEAR_FIRST


def test_scan_cli_says_which_layers_it_skips(tmp_path):
    model, tok = tiny_hybrid()
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "text.txt").write_text(TEXT)
    args = ["scan", "--model", str(tmp_path / "model"), "--text", str(tmp_path / "text.txt")]
    result = CliRunner().invoke(app, [*args, "--max-tokens", "48", "--num-texts", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "skipped layers 0 (linear_attention): no softmax attention to measure" in result.stdout
