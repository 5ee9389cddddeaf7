"""Probes on constructed tiny models whose answer is known: a no-op head, a constant-bias head, a planted massive
activation, a content-anchored sink, uniform attention (Gu et al.'s alpha_1 = H_T / T)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from sinklab.cli import app
from sinklab.errors import SinklabInputError
from sinklab.measure.engine import Observer, find_layers
from sinklab.measure.probes import explain
from sinklab.measure.probes._common import (
    RECORD_DIGITS,
    SINK,
    forward,
    record,
    rounded,
    sink_column,
    sink_edit,
    zero_values,
)
from sinklab.measure.probes.outlier import written
from sinklab.models.tiny import tiny_bert, tiny_gemma3, tiny_llama
from sinklab.ops.colsum import fused
from sinklab.testing import assert_same_record

BOS, D = 1, 16
TEXT = ["The quick brown fox jumps over the lazy dog, and then it sleeps. " * 6]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def bos_attending(kv_heads=(0,), zero_value=False, num_layers=1, seed=0):
    """tiny-llama whose query heads of ``kv_heads`` in layer 0 attend only to <bos> (score ~50 against 0).

    Embedding dim 0 is 10 on <bos> and 0 elsewhere, dim 1 is 1 everywhere; the key reads dim 0 and the query dim 1
    into the slowest RoPE pair (index 7), so the score is position-independent. ``zero_value`` makes <bos>'s value
    exactly zero in those heads (the no-op construction).
    """
    model, tok = tiny_llama(seed=seed, num_hidden_layers=num_layers)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 0.0
        emb[:, 1] = 1.0
        emb[BOS] = 0.0
        emb[BOS, 0], emb[BOS, 1] = 10.0, 1.0
        attn = model.model.layers[0].self_attn
        for g in kv_heads:
            attn.k_proj.weight[g * D : (g + 1) * D] = 0.0
            attn.k_proj.weight[g * D + 7, 0] = 2.0
            if zero_value:
                attn.v_proj.weight[g * D : (g + 1) * D, :2] = 0.0
            for h in (2 * g, 2 * g + 1):
                attn.q_proj.weight[h * D : (h + 1) * D] = 0.0
                attn.q_proj.weight[h * D + 7, 1] = 2.0
    return model, tok


def run(model, tok, probes, **kw):
    kw = {"max_tokens": 48, "num_texts": 2, "bos": "always", "progress": False, **kw}
    return explain(model, tok, TEXT, probes=probes, **kw)


def test_mlp_in_hook_sees_and_replaces_the_mlp_input():
    model, _ = tiny_llama()
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    seen, outs = {}, {}
    hooks = {
        "layers.1.mlp_in": [lambda x, ctx: seen.setdefault("x", x.detach().clone())],
        "layers.1.mlp": [lambda y, ctx: outs.setdefault("y", y.detach().clone())],
    }
    with torch.no_grad(), Observer(model, hooks=hooks):
        model(input_ids=ids, use_cache=False)
    mlp = find_layers(model)[1].mlp
    with torch.no_grad():
        assert rel(mlp(seen["x"]), outs["y"]) < 1e-6
        outs.clear()
        hooks["layers.1.mlp_in"] = [lambda x, ctx: 2.0 * x]
        with Observer(model, hooks=hooks):
            model(input_ids=ids, use_cache=False)
        assert rel(outs["y"], mlp(2.0 * seen["x"])) < 1e-6
        assert rel(outs["y"], mlp(seen["x"])) > 1e-2


def test_sink_edit_zero_equals_zeroing_the_sink_values():
    """o_t - A_t0 v_0 in every head is the same forward pass as v_0 = 0 (GQA model, fp32)."""
    model, tok = tiny_llama(seed=3)
    ids = tok(TEXT[0])["input_ids"][:48]
    every = torch.ones(3, 4, dtype=torch.bool)
    edited = forward(model, ids, sink_edit(model, every))
    literal = forward(model, ids, zero_values(3, SINK))
    base = forward(model, ids)
    assert rel(edited.token_loss, literal.token_loss) < 1e-5
    assert rel(base.token_loss, literal.token_loss) > 1e-4  # the edit changes something


def test_noop_finds_the_planted_no_op_heads():
    model, tok = bos_attending(kv_heads=(0,), zero_value=True)
    section = run(model, tok, "noop").to_dict()["probes"]["noop"]
    m, iv = section["measured"], section["interventions"]
    assert min(m["alpha_1"][0][:2]) > 0.99 and max(m["alpha_1"][0][2:]) < 0.3
    assert max(m["value_norm_ratio"][0][:2]) < 1e-6 and min(m["value_norm_ratio"][0][2:]) > 0.05
    assert max(m["sink_output_share"][0][:2]) < 1e-6
    assert m["dormant"] == [[True, True, False, False]] and m["dormant_share"] == 0.5
    assert abs(iv["zero_sink_dormant"]["loss_delta"]) < 1e-6  # a no-op head: zeroing its sink changes nothing
    assert abs(iv["zero_middle"]["loss_delta"]) > 1e-5  # the control does change the loss


def test_noop_sink_with_a_real_value_is_not_dormant():
    model, tok = bos_attending(kv_heads=(0,), zero_value=False)
    m = run(model, tok, "noop").to_dict()["probes"]["noop"]["measured"]
    assert min(m["alpha_1"][0][:2]) > 0.99
    assert min(m["value_norm_ratio"][0][:2]) > 0.3
    assert min(m["sink_output_share"][0][:2]) > 0.99  # the head's output is the sink's value
    assert m["dormant"] == [[False, False, False, False]]


def test_bias_constant_head_keeps_the_loss_under_its_mean():
    model, tok = bos_attending(kv_heads=(0, 1), zero_value=False)
    section = run(model, tok, "bias").to_dict()["probes"]["bias"]
    m, iv = section["measured"], section["interventions"]
    assert m["cv_by_layer"][0] < 1e-6 and m["cosine_to_mean_by_layer"][0] > 1 - 1e-6
    assert abs(iv["mean_sink"]["loss_delta"]) < 1e-5
    assert abs(iv["zero_sink"]["loss_delta"]) > 1e-3


def test_bias_varies_in_a_random_model():
    model, tok = tiny_llama(seed=1)
    m = run(model, tok, "bias").to_dict()["probes"]["bias"]["measured"]
    assert min(m["cv_by_layer"]) > 0.05


def planted_massive(neuron=7, dim=5, seed=0):
    """tiny-llama whose layer-0 MLP writes ~5,000 into ``dim`` of <bos> through down_proj[dim, neuron]."""
    model, tok = bos_attending(kv_heads=(), num_layers=2, seed=seed)
    with torch.no_grad():
        mlp = model.model.layers[0].mlp
        mlp.gate_proj.weight[neuron] = 0.0
        mlp.up_proj.weight[neuron] = 0.0
        mlp.gate_proj.weight[neuron, 0] = 3.0
        mlp.up_proj.weight[neuron, 0] = 3.0
        model.model.layers[0].self_attn.o_proj.weight[0] = 0.0  # only <bos> has dim 0, so only it fires the neuron
        mlp.down_proj.weight[:, neuron] = 0.0
        mlp.down_proj.weight[dim, neuron] = 10.0
    return model, tok


def test_outlier_finds_the_planted_massive_activation_and_its_neuron():
    model, tok = planted_massive(neuron=7, dim=5)
    section = run(model, tok, "outlier").to_dict()["probes"]["outlier"]
    m, clamp = section["measured"], section["interventions"]["clamp_massive"]
    assert m["write_layer"] == 0 and m["dim"] == 5 and m["dims"][0] == 5
    assert m["massive"] and m["written_by"] == "mlp" and m["peak_abs_mean"] > 1000
    top = m["down_proj"][0]
    assert top["dim"] == 5 and top["neurons"][0] == 7 and top["share_of_output"][0] > 0.95
    assert clamp["baseline_sink_max_abs_later_layers"] > 1000
    assert clamp["sink_max_abs_later_layers"] < 100  # clamped at the writing layer, it does not grow back
    every = section["interventions"]["clamp_massive_all_layers"]
    assert every["sink_max_abs_later_layers"] < 100 and every["baseline_sink_max_abs_later_layers"] > 1000


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3])
def test_written_parts_add_up_to_the_residual_update(build):
    """attention + MLP writes (through Gemma's post-norms) = h_l - h_{l-1} at the sink."""
    model, tok = build(seed=2)
    base = record(model, tok(TEXT[0])["input_ids"][:40])
    blocks = find_layers(model)
    for layer in range(1, model.config.num_hidden_layers):
        rec = base.layers[layer]
        a, m = written(blocks[layer], rec.attn, rec.mlp)
        assert rel(a + m, rec.resid - base.layers[layer - 1].resid) < 1e-5


def test_anchor_sink_follows_the_content_anchored_token():
    model, tok = bos_attending(kv_heads=(0, 1), zero_value=False)
    section = run(model, tok, "anchor").to_dict()["probes"]["anchor"]
    m, iv = section["measured"], section["interventions"]
    assert min(m["sink_key_cosine_to_query_axis"][0]) > 0.99
    assert max(abs(x) for x in m["other_keys_cosine_to_query_axis"][0]) < 1e-6
    assert iv["baseline"]["new_sink"][0] == {"position": 0, "token": "<bos>", "heads": 4}
    moved = iv["move_first"]
    assert moved["new_sink"][0]["position"] == moved["moved_to"] == 12 and moved["new_sink"][0]["token"] == "<bos>"
    assert moved["sink_rate_of_moved_token"] == 1.0 and moved["sink_rate"] == 0.0
    assert iv["drop_first"]["new_sink"][0]["position"] is None  # no <bos>: attention is uniform, no sink


def test_emergence_uniform_attention_gives_harmonic_alpha():
    """All queries zero -> causal uniform attention: alpha_1 = (1/T) sum_t 1/t = H_T / T, Sink_1 = 0."""
    model, tok = tiny_llama(seed=0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
    section = run(model, tok, "emergence", max_tokens=65, num_texts=1).to_dict()["probes"]["emergence"]
    harmonic = sum(1.0 / t for t in range(1, 65)) / 64
    for kind in ("natural", "random", "repeated"):
        assert section["measured"]["kinds"][kind]["sink_rate"] == 0.0
        assert abs(section["measured"]["kinds"][kind]["mean_alpha_1"] - harmonic) < 1e-5
    assert section["measured"]["published_percent"]["LLaMA2-7B"]["natural"] == 92.47


def test_emergence_bos_attending_model_sinks_on_every_input():
    model, tok = bos_attending(kv_heads=(0, 1))
    kinds = run(model, tok, "emergence", max_tokens=65, num_texts=1).to_dict()["probes"]["emergence"]["measured"][
        "kinds"
    ]
    assert [kinds[k]["sink_rate"] for k in ("natural", "random", "repeated")] == [1.0, 1.0, 1.0]


def test_encoder_runs_what_applies_and_says_why_not_the_rest():
    model, tok = tiny_bert()
    d = run(model, tok, "noop,outlier,bias,anchor,emergence").to_dict()
    assert set(d["probes"]) == {"noop", "bias", "anchor"}
    assert set(d["not_applicable"]) == {"outlier", "emergence"}
    assert "encoder" in d["not_applicable"]["emergence"]
    assert d["probes"]["noop"]["interventions"]["zero_sink"]["loss"] is None
    with pytest.raises(SinklabInputError, match="no requested probe applies"):
        run(model, tok, "emergence")


def test_bad_probe_names_are_refused():
    model, tok = tiny_llama()
    with pytest.raises(SinklabInputError, match="accepted: noop, outlier, bias, anchor, emergence"):
        run(model, tok, "noop,magic")


def test_cli_writes_probes_json_and_a_self_contained_report(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["explain", "--model", "tiny-llama", "--max-tokens", "65", "--num-texts", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    d = json.loads((out / "probes.json").read_text())
    assert set(d["probes"]) == {"noop", "outlier", "bias", "anchor", "emergence"}
    for section in d["probes"].values():
        assert section["measured"] and section["interventions"]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64") >= 6 and "<h2>emergence</h2>" in page


def test_cli_bad_input_gives_one_line_and_no_output(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["explain", "--model", "tiny-llama", "--probes", "magic", "--out", str(out)])
    assert result.exit_code == 2
    assert "accepted: noop, outlier" in result.output
    assert not out.exists()


# -- the fused fast path against its twin (the site's own attention with statistics) -----------------------------


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3, tiny_bert])
def test_fused_explain_equals_its_twin(build):
    """Every number and flag of probes.json is the same with the fused path and with the site's chunked path
    (fp32, 1e-5); gemma3 mixes both (its sliding-window layers take the twin), bert is an encoder."""
    model, tok = build(seed=1)
    kw = {"max_tokens": 70, "num_texts": 2}
    fast = run(model, tok, "noop,outlier,bias,anchor,emergence", **kw).to_dict()
    slow = run(model, tok, "noop,outlier,bias,anchor,emergence", fused=False, **kw).to_dict()
    for key in ("seconds", "provenance"):
        fast.pop(key), slow.pop(key)
    assert_same_record(fast, slow)


def test_rounded_records_may_differ_by_one_rounding_step_and_no_more():
    """Two values 1e-7 apart can round to neighbours (the H200 gave 0.44473 where the CPU gave 0.44474): one step
    of the records' rounding passes with ``quantum``, three fail, and without it the neighbours fail."""
    step = 10.0**-RECORD_DIGITS
    a, b = rounded({"share": [0.444735 - 1e-7]}), rounded({"share": [0.444735 + 1e-7]})
    assert a != b
    assert_same_record(a, b, quantum=step)
    with pytest.raises(AssertionError, match="share"):
        assert_same_record(a, b)
    with pytest.raises(AssertionError, match="share"):
        assert_same_record({"share": [0.44471]}, b, quantum=step)


@pytest.mark.parametrize("build", [tiny_llama, tiny_bert])
def test_fused_pass_reads_what_the_twin_reads(build):
    """Baseline record through the fused kernel (every layer fused) = through the chunked path (no layer fused):
    alpha_1, every key's mass, A_t0, norm-weighted shares and the loss, fp32 1e-5."""
    model, tok = build(seed=4)
    ids = tok(TEXT[0])["input_ids"][:50]
    seen = []
    fast, slow = record(model, ids), record(model, ids, fused=False)
    with_obs = forward(model, ids, lambda obs: seen.append(obs) or {}, mass=True)
    assert seen[0].fused_layers == set(range(model.config.num_hidden_layers))
    assert rel(with_obs.mass, fast.run.mass) < 1e-6
    assert rel(fast.run.alpha, slow.run.alpha) < 1e-5 and rel(fast.run.mass, slow.run.mass) < 1e-5
    assert torch.equal(fast.run.eligible, slow.run.eligible)
    if fast.run.token_loss is not None:
        assert rel(fast.run.token_loss, slow.run.token_loss) < 1e-5
    for f, s in zip(fast.layers, slow.layers, strict=True):
        assert rel(f.col, s.col) < 1e-5 and rel(f.share, s.share) < 1e-5 and rel(f.resid, s.resid) < 1e-5


def test_fused_pass_leaves_the_model_output_unchanged():
    """Observing through the fused path: the per-token loss equals the plain model's (fp32 1e-5)."""
    model, tok = tiny_llama(seed=5)
    ids = tok(TEXT[0])["input_ids"][:60]
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x, use_cache=False).logits[0]
    plain = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="none")
    assert rel(forward(model, ids, mass=True, share=True).token_loss, plain) < 1e-5
    assert rel(forward(model, ids).token_loss, plain) < 1e-5


@pytest.mark.parametrize("causal", [True, False])
def test_transposed_colsum_and_sink_column_equal_the_definition(causal):
    """Column sums from the transposed fused problem and A_t0 from the row logsumexp = the naive T x T softmax."""
    gen = torch.Generator().manual_seed(0)
    B, H, Hkv, T, Dh, scale = 2, 4, 2, 37, 8, 0.35
    q, k = torch.randn(B, H, T, Dh, generator=gen), torch.randn(B, Hkv, T, Dh, generator=gen)
    keys = k.repeat_interleave(H // Hkv, dim=1)
    scores = scale * q.double() @ keys.double().transpose(-1, -2)
    if causal:
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    probs = scores.softmax(-1)
    lse = torch.logsumexp(scores, -1).float()
    assert rel(fused.transposed(q, k, lse, scale, causal)[0].double(), probs.sum(2)) < 1e-5
    assert rel(sink_column(q, k, lse, scale), probs[..., 0]) < 1e-5


def test_explain_progress_counts_end_at_their_totals(capsys):
    """Off a terminal: one progress stage per probe (and one for the baseline), each count ends at its total, and
    the totals add up to the forward passes the model really ran."""
    model, tok = tiny_llama(seed=1)
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        run(model, tok, "noop,outlier,bias,anchor,emergence", max_tokens=70, num_texts=2, progress=True)
    finally:
        handle.remove()
    final = {}
    for line in capsys.readouterr().err.splitlines():
        found = re.match(r"sinklab: explain (.+?): +\d+% \((\d+)/(\d+)\)", line)
        if found:
            final[found[1]] = (int(found[2]), int(found[3]))
    stages = ["baseline", "noop", "outlier", "bias", "anchor", "emergence"]
    assert sorted(final) == sorted(f"LlamaForCausalLM: {s}" for s in stages)
    assert all(done == total > 0 for done, total in final.values()), final
    assert sum(total for _, total in final.values()) == len(calls)


def test_other_massive_positions_come_in_a_fixed_order():
    """Ties (each hit in one sequence) are listed by position, then dim: not in a set's order, which depends on the
    process's string hashing, so the same run gives the same probes.json."""
    from types import SimpleNamespace

    from sinklab.measure.engine import ResidualStats
    from sinklab.measure.probes.outlier import _other_massive

    pos, dim = torch.tensor([[9, 3, 7, 5, 0]]), torch.tensor([[2, 1, 1, 4, 1]])
    value = torch.full((1, 5), 5000.0)
    stats = ResidualStats(value[:, 0], torch.ones(1), torch.ones(1), value, pos, dim, torch.zeros(1, 8))
    run = SimpleNamespace(residual={0: stats}, ids=list(range(10)))
    ctx = SimpleNamespace(baselines=[SimpleNamespace(run=run)], decode=lambda t: f"tok{t}")
    found = _other_massive(ctx, limit=3)
    assert [(f["position"], f["dim"]) for f in found] == [(3, 1), (5, 4), (7, 1)]
