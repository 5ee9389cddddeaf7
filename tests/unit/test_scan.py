"""`sinklab.scan` on tiny models: the metrics.json contract, padding, files written all or nothing."""

import json

import pytest
import torch

from sinklab.data import read_texts, token_sequences
from sinklab.errors import SinklabInputError
from sinklab.measure import scan
from sinklab.models import load

KEYS = {
    "model",
    "num_layers",
    "num_heads",
    "tokens",
    "eps",
    "sink_rate",
    "first_token_mass",
    "sinks",
    "massive_activations",
}


@pytest.fixture(scope="module")
def tiny():
    return load("tiny-gemma3")


def test_metrics_contract(tiny, tmp_path):
    model, tok = tiny
    result = scan(model, tok, None, max_tokens=48, num_texts=3, progress=False, model_name="tiny-gemma3")
    d = result.to_dict()
    assert set(d) >= KEYS
    assert d["num_layers"] == 4 and d["num_heads"] == 4 and d["tokens"] == 3 * 48
    assert 0.0 <= d["sink_rate"] <= 1.0
    alpha = torch.tensor(d["first_token_mass"])
    assert alpha.shape == (4, 4) and (alpha >= 0).all() and (alpha <= 1).all()
    share = torch.tensor(d["sink_share"])
    assert share.shape == (4, 4) and d["sink_rate"] == pytest.approx(float(share.mean()))
    assert d["sink_rate_of_mean"] == pytest.approx(float((alpha > d["eps"]).double().mean()))
    for sink in d["sinks"]:
        assert {"position", "token", "mass", "heads"} <= set(sink) and sink["mass"] > d["eps"]
    result.save(tmp_path / "out")
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {
        "metrics.json",
        "report.html",
        "heads.csv",
        "sink_profile.png",
        "heads_heatmap.png",
        "sink_share_heatmap.png",
        "massive_activations.png",
        "attention_map.png",
    } <= files
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["sink_rate"] == d["sink_rate"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script src" not in html
    rows = (tmp_path / "out" / "heads.csv").read_text().splitlines()
    assert len(rows) == 1 + 16 and rows[0].startswith("layer,head,kv_head")


def test_batched_equals_one_by_one(tiny):
    """Uneven sequences in one padded batch give the metrics of scanning them one at a time."""
    model, tok = tiny
    seqs = token_sequences(tok, read_texts(None), 40, 3)
    seqs[1] = seqs[1][:25]
    kw = dict(progress=False, keep_pattern=0, min_queries=4)
    batched = scan(model, tok, seqs, batch_size=3, **kw)
    single = scan(model, tok, seqs, batch_size=1, **kw)
    assert torch.allclose(batched.first_token_mass, single.first_token_mass, atol=1e-5)
    assert torch.allclose(batched.entropy, single.entropy, atol=1e-4)
    assert batched.tokens == single.tokens == 40 + 25 + 40
    assert [s["position"] for s in batched.sinks] == [s["position"] for s in single.sinks]


def test_planted_sink_is_found():
    """Query heads 0 and 1 of layer 0 are built to attend the first token; scan must find exactly that."""
    from sinklab.models import tiny_llama

    # with rope_theta huge, RoPE's slowest pair (dims 7, 15 of a 16-dim head) does not rotate over 64 positions,
    # so the planted q.k does not depend on distance
    model, tok = tiny_llama(attention_bias=True, rope_parameters={"rope_type": "default", "rope_theta": 1e12})
    attn, d = model.model.layers[0].self_attn, model.config.hidden_size
    bos = model.model.embed_tokens.weight[1].detach()
    bos_normed = bos / bos.pow(2).mean().sqrt()
    with torch.no_grad():
        attn.q_proj.weight[:32] = 0.0  # query heads 0, 1: a constant query e_7
        attn.q_proj.bias[:32] = 0.0
        attn.q_proj.bias[7] = attn.q_proj.bias[16 + 7] = 1.0
        attn.k_proj.weight[:16] = 0.0  # KV head 0: key e_7 * (x . bos), largest for the <bos> token itself
        attn.k_proj.bias[:16] = 0.0
        attn.k_proj.weight[7] = 200.0 * bos_normed / d  # logit 50 on <bos>, about +-6 elsewhere
    result = scan(model, tok, ["sinks everywhere, " * 10], max_tokens=64, bos="always", progress=False)
    assert result.first_token_mass[0, :2].min() > 0.9 > 0.5 > result.first_token_mass[0, 2:].max()
    assert result.sinks and result.sinks[0]["position"] == 0 and result.sinks[0]["heads"] >= 2
    assert result.strongest_head()[0] == 0


def test_bad_input(tiny):
    model, tok = tiny
    with pytest.raises(SinklabInputError, match="eps"):
        scan(model, tok, None, eps=1.0, progress=False)
    with pytest.raises(SinklabInputError, match="positions"):
        scan(model, tok, None, max_tokens=5000, progress=False)
    with pytest.raises(SinklabInputError, match="no texts"):
        scan(model, tok, [], progress=False)


def test_failed_save_leaves_nothing(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    result = scan(model, tok, None, max_tokens=32, num_texts=1, progress=False)
    import sinklab.report.html as report_html

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_html, "all_plots", broken)
    with pytest.raises(RuntimeError):
        result.save(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_sink_rate_is_gu_et_al_per_sequence_statistic():
    """scan's Sink_1 is the statistic of Gu et al.'s code (each sequence thresholded, then averaged), not the
    threshold of the sequence-mean alpha_1: at an eps where the two differ on these sequences, scan gives theirs.
    (Their code divides by T - k + 1 queries, so the model has full causal attention only.)"""
    from eager_reference import gu_sink_rate

    model, tok = load("tiny-llama")
    ids = torch.tensor(token_sequences(tok, read_texts(None), 64, 6))
    probe = scan(model, tok, ids, 0.3, max_tokens=64, num_texts=None, progress=False, batch_size=6)
    eps = float(probe.first_token_mass.flatten().sort().values[probe.first_token_mass.numel() // 2])
    result = scan(model, tok, ids, eps, max_tokens=64, num_texts=None, progress=False, batch_size=4)
    assert result.sink_rate == pytest.approx(gu_sink_rate(model, ids, eps), abs=1e-9)
    assert result.sink_rate != pytest.approx(result.sink_rate_of_mean)  # the test separates the two definitions


def test_token_ids_are_measured_whole_or_refused():
    """Token ids are the sequences to measure: all of them with num_texts=None, and more than num_texts (default 4,
    meant for texts) is refused with the counts, never cut quietly (training measured only 4 of its 64-100 metric
    sequences this way before sinklab 0.2.1)."""
    model, tok = load("tiny-llama")
    ids = torch.tensor(token_sequences(tok, read_texts(None), 32, 6))
    with pytest.raises(SinklabInputError, match="6 token sequences given but num_texts=4"):
        scan(model, tok, ids, progress=False)
    assert scan(model, tok, ids, num_texts=None, progress=False, keep_pattern=0).num_sequences == 6
    assert scan(model, tok, ids[:3], progress=False, keep_pattern=0).num_sequences == 3
