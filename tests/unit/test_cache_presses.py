"""Eviction presses: bounded cache, sinks protected, scores match their definitions."""

import pytest
import torch
from transformers import DynamicCache

from sinklab.errors import SinklabInputError
from sinklab.exploit.cache import PRESSES, H2OPress, KnormPress
from sinklab.models import load
from sinklab.testing import assert_close


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma3"])
def model(request):
    return load(request.param)[0]


def run(model, ids, cache, press=None):
    out = []
    with torch.no_grad(), press(model) if press else torch.no_grad():
        for t in range(ids.shape[1]):
            pos = torch.full((ids.shape[0], 1), t)
            out.append(model(input_ids=ids[:, t : t + 1], position_ids=pos, cache=cache).logits)
    return torch.cat(out, 1)


@pytest.mark.parametrize("name", sorted(PRESSES))
def test_press_bounds_cache_and_equals_dense_before_budget(model, name):
    ids = torch.randint(7, 200, (2, 14), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=model.config)
    got = run(model, ids, cache, PRESSES[name](budget=7, protect_sinks=2))
    dense = run(model, ids, DynamicCache(config=model.config))
    assert_close(got[:, :8], dense[:, :8])  # h2o attends eagerly, so equal up to rounding
    kinds = getattr(model.config, "layer_types", None) or ["full_attention"]
    full = [i for i, kind in enumerate(kinds) if kind == "full_attention"]
    for i in full:
        assert cache.layers[i].keys.shape[-2] == 7
    assert model.config._attn_implementation == "sdpa"  # restored on exit


def test_knorm_keeps_sinks_and_low_norm_keys():
    model = load("tiny-llama")[0]
    ids = torch.randint(7, 200, (1, 11), generator=torch.Generator().manual_seed(1))
    dense = DynamicCache(config=model.config)
    run(model, ids, dense)
    pressed = DynamicCache(config=model.config)
    run(model, ids, pressed, KnormPress(budget=10, protect_sinks=3))
    keys = dense.layers[0].keys  # before any eviction the first layer's keys are the same
    norms = keys.norm(dim=-1)[..., 3:]
    drop = norms.argmax(dim=-1) + 3  # one eviction: the largest-norm non-sink key goes
    for h in range(keys.shape[1]):
        want = torch.cat([keys[0, h, : drop[0, h]], keys[0, h, drop[0, h] + 1 :]])
        assert torch.equal(pressed.layers[0].keys[0, h], want)


def test_h2o_scores_are_accumulated_attention():
    model = load("tiny-llama")[0]
    ids = torch.randint(7, 200, (1, 8), generator=torch.Generator().manual_seed(2))
    press = H2OPress(budget=100, protect_sinks=2)
    run(model, ids, DynamicCache(config=model.config), press)
    model.config._attn_implementation = "eager"
    try:
        attn = model(input_ids=ids, output_attentions=True).attentions
    finally:
        model.config._attn_implementation = "sdpa"
    for layer, a in enumerate(attn):  # [B, Hq, T, T] -> mass per key, summed over each KV group
        want = a.sum(dim=2).unflatten(1, (2, 2)).sum(dim=2)
        assert_close(press.scores[layer], want)
        assert_close(press.score(model.model.layers[layer].self_attn, None, None), want)
        queries = torch.arange(8, 0, -1.0)  # key j can be attended by the 8 - j queries j .. 7
        assert_close(
            H2OPress(normalize=True, scores=press.scores, counts=press.counts).score(
                model.model.layers[layer].self_attn, None, None
            ),
            want / queries,
        )


@pytest.mark.parametrize("normalize", [False, True])
def test_h2o_drops_the_lowest_score(normalize):
    """The first eviction (11 tokens, budget 10) drops, per KV head, the non-sink key with the least total mass
    (raw) or the least mean mass per query that could attend it (normalised)."""
    model = load("tiny-llama")[0]
    ids = torch.randint(7, 200, (1, 11), generator=torch.Generator().manual_seed(4))
    observed, dense = H2OPress(budget=100, protect_sinks=2), DynamicCache(config=model.config)
    run(model, ids, dense, observed)
    score = observed.scores[0] / (observed.counts[0] if normalize else 1)  # [1, Hkv, 11]
    drop = score[0, :, 2:].argmin(dim=-1) + 2
    pressed = DynamicCache(config=model.config)
    run(model, ids, pressed, H2OPress(budget=10, protect_sinks=2, normalize=normalize))
    keys = dense.layers[0].keys
    for h in range(keys.shape[1]):
        want = torch.cat([keys[0, h, : drop[h]], keys[0, h, drop[h] + 1 :]])
        assert torch.equal(pressed.layers[0].keys[0, h], want)
    assert torch.equal(observed.counts[0][0, 0], torch.arange(11, 0, -1.0))


@pytest.mark.parametrize(("budget", "sinks"), [(0, 0), (4, 4), (8, -1)])
def test_bad_press_arguments(budget, sinks):
    with pytest.raises(SinklabInputError):
        KnormPress(budget=budget, protect_sinks=sinks)
