"""The Observer against eager `output_attentions` (the usual, T x T way), on tiny random models."""

import pytest
import torch
from eager_reference import eager_stats

from sinklab.measure import Observer
from sinklab.measure.metrics import first_positions, first_token_mass, mean_entropy
from sinklab.models import load
from sinklab.testing import assert_close

TEXTS = ["The quick brown fox jumps over the lazy dog, again and again.", "Short text."]


def _inputs(tokenizer, padding_side):
    tokenizer.padding_side = padding_side
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "tiny-bert"])
def test_observer_equals_eager(name):
    model, tokenizer = load(name)
    is_decoder = name != "tiny-bert"
    ids, mask = _inputs(tokenizer, "left" if is_decoder else "right")
    if name == "tiny-gemma3":
        assert ids.shape[1] > model.config.sliding_window  # the window really cuts
    eager = eager_stats(model, ids, mask, is_decoder)
    kwargs = {"position_ids": (mask.cumsum(1) - 1).clamp_min(0)} if is_decoder else {}
    with torch.no_grad():
        reference = model.base_model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
        with Observer(model) as obs:
            observed = model.base_model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
    valid = mask.bool()
    assert_close(observed[valid], reference[valid], torch.float32, "hidden states")
    first = first_positions(valid, ids.shape[0])
    for layer, (colsum, alpha, entropy) in enumerate(eager):
        stats = obs.attention[layer]
        assert_close(stats.colsum.double() * valid[:, None, :], colsum, torch.float32, f"colsum {layer}")
        assert_close(first_token_mass(stats, first).double(), alpha, torch.float32, f"alpha {layer}")
        assert_close(mean_entropy(stats).double(), entropy, torch.float32, f"entropy {layer}")
    assert model.config._attn_implementation == "sdpa"  # restored on exit


def test_padding_never_counts():
    """A left-padded batch gives the same per-sequence statistics as each sequence alone."""
    model, tokenizer = load("tiny-llama")
    ids, mask = _inputs(tokenizer, "left")
    with torch.no_grad(), Observer(model) as obs:
        model.base_model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0))
        batched = {layer: stats for layer, stats in obs.attention.items()}
        res_batched = obs.residual[1]
        row = 1
        real = mask[row].bool()
        obs.clear()
        model.base_model(input_ids=ids[row : row + 1, real])
    for layer, stats in batched.items():
        alone = obs.attention[layer]
        assert_close(stats.colsum[row][:, real], alone.colsum[0], torch.float32)
        assert_close(stats.entropy[row], alone.entropy[0], torch.float32)
        assert torch.equal(stats.count[row][real], alone.count[0])
    assert_close(res_batched.median_abs[row], obs.residual[1].median_abs[0], torch.float32)
    assert_close(res_batched.max_abs[row], obs.residual[1].max_abs[0], torch.float32)


def test_hooks_intervene_and_observe():
    model, tokenizer = load("tiny-llama")
    ids = tokenizer("hello there, sinks", return_tensors="pt")["input_ids"]
    seen = []

    def zero_values(qkv, ctx):
        q, k, v = qkv
        return q, k, torch.zeros_like(v)

    hooks = {
        "layers.0.attn.qkv": [zero_values],
        "layers.1.attn.weights": [lambda p, ctx: seen.append(ctx.rows)],
        "layers.2.resid_post": [lambda h, ctx: h * 0],
    }
    with torch.no_grad(), Observer(model, hooks=hooks) as obs:
        out = model.base_model(input_ids=ids).last_hidden_state
    assert seen and seen[0][0] == 0 and seen[-1][1] == ids.shape[1]  # blocks of whole rows cover every query
    assert obs.residual[2].max_abs.item() == 0.0
    assert torch.isfinite(out).all()
    with torch.no_grad():
        plain = model.base_model(input_ids=ids).last_hidden_state
    assert not torch.allclose(out, plain)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_residual_stats_are_exact(dtype, monkeypatch):
    """The histogram median of half-precision states equals torch.median's (counted in several chunks); every
    statistic matches float32's."""
    import sinklab.measure.engine as engine
    from sinklab.measure.engine import residual_stats

    monkeypatch.setattr(engine, "HISTOGRAM_CHUNK", 100)
    gen = torch.Generator().manual_seed(3)
    hidden = (torch.randn(2, 33, 16, generator=gen) * 50).to(dtype)
    hidden[0, 0, 3] = 3000.0
    valid = torch.ones(2, 33, dtype=torch.bool)
    valid[1, :4] = False
    half, full = residual_stats(hidden, valid), residual_stats(hidden.float(), valid)
    assert torch.equal(half.median_abs, full.median_abs)
    assert torch.equal(half.median_abs[1], hidden[1][valid[1]].float().abs().median())
    for name in ("max_abs", "top_value", "top_pos", "top_dim", "dim_max"):
        assert torch.equal(getattr(half, name), getattr(full, name)), name
    assert_close(half.kurtosis, full.kurtosis, torch.float32)
