"""The parallel streaming evaluator: equal to its naive twin, to token-by-token SinkCache decoding, and to an
independent masked reference of StreamingLLM's window convention."""

import pytest
import torch
from torch.nn import functional as F

from sinklab.errors import SinklabInputError
from sinklab.exploit.cache import SinkCache
from sinklab.exploit.cache.naive import _pattern, _pattern_attention, stream_reference_logits, visible_keys
from sinklab.exploit.cache.rope import rotate
from sinklab.exploit.stream_eval import StreamAttention, stream_attention, stream_logits
from sinklab.models import load
from sinklab.testing import assert_close


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma3"])
def model(request):
    return load(request.param)[0]


def nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[B, T - 1] NLL of each next token."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), ids[:, 1:], reduction="none")


def decode(model, ids, cache):
    out = []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            pos = cache.position_ids(1, ids.shape[0])
            out.append(model(input_ids=ids[:, t : t + 1], position_ids=pos, cache=cache, use_cache=True).logits)
    return torch.cat(out, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("evict", ["after", "before"])
@pytest.mark.parametrize("positions", ["cache", "absolute"])
@pytest.mark.parametrize(
    ("sinks", "window", "block", "softcap"), [(3, 6, 5, None), (0, 9, 8, None), (4, 5, 64, 2.0), (2, 40, 7, None)]
)
def test_attention_matches_the_per_query_definition(dtype, evict, positions, sinks, window, block, softcap):
    g = torch.Generator().manual_seed(0)
    B, Hq, Hkv, T, D = 2, 4, 2, 37, 16
    inv = 1.0 / 10000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    q, k, v = (torch.randn(B, h, T, D, generator=g, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
    want = _pattern_attention(
        q, k, v, *_pattern(visible_keys(T, sinks, window, evict=evict), positions, "cpu"), inv, 0.25, softcap
    )  # un-rotated inputs, keys placed per query
    pos = torch.arange(T)
    got = stream_attention(
        rotate(q, pos, inv).to(dtype),
        rotate(k, pos, inv).to(dtype),
        v.to(dtype),
        num_sinks=sinks,
        window=window,
        scale=0.25,
        inv_freq=inv if positions == "cache" else None,
        evict=evict,
        softcap=softcap,
        block=block,
    )
    assert_close(got, want.to(dtype))


@pytest.mark.parametrize("evict", ["after", "before"])
@pytest.mark.parametrize("positions", ["cache", "absolute"])
@pytest.mark.parametrize(("sinks", "window"), [(3, 10), (0, 13)])
def test_parallel_equals_token_by_token_decoding(model, evict, positions, sinks, window):
    ids = torch.randint(7, 200, (2, 40), generator=torch.Generator().manual_seed(2))
    want = decode(model, ids, SinkCache(sinks, window, positions, model=model, evict=evict))
    got = stream_logits(model, ids, sinks, window, positions, evict)
    assert (nll(got, ids) - nll(want, ids)).abs().max() <= 1e-4
    assert_close(got, want)
    assert_close(got, stream_reference_logits(model, ids, sinks, window, positions, evict=evict))
    assert model.config._attn_implementation == "sdpa"  # the override is gone after the forward


def masked_reference_nll(model, ids: torch.Tensor, num_sinks: int, window: int) -> torch.Tensor:
    """Per-token NLL [B, T - 1] of dense attention under an explicit boolean mask written from the rule of
    StreamingLLM's eval_long_ppl.py and attention_sinks 0.4.0 (the cache is trimmed after each step): query t sees
    key j iff j <= t and (j < num_sinks or t - j <= window), at stream positions. Plain transformers, no sinklab."""
    t = torch.arange(ids.shape[1])
    causal = t[None] <= t[:, None]
    mask = (causal & ((t[None] < num_sinks) | (t[:, None] - t[None] <= window)))[None, None]
    if getattr(model.config, "layer_types", None):  # Gemma 3: its own sliding layers keep their window
        local = causal & (t[:, None] - t[None] < model.config.sliding_window)
        mask = {"full_attention": mask, "sliding_attention": local[None, None]}
    with torch.no_grad():
        return nll(model(input_ids=ids, attention_mask=mask).logits, ids)


@pytest.fixture(scope="module")
def reference(model):
    """(ids, reference NLLs) for 4 sinks + window 12 on 48 tokens."""
    ids = torch.randint(7, 200, (1, 48), generator=torch.Generator().manual_seed(3))
    return ids, masked_reference_nll(model, ids, 4, 12)


def test_default_convention_reproduces_the_reference_nlls(model, reference):
    ids, want = reference
    for got in (
        nll(decode(model, ids, SinkCache(4, 12, "absolute", model=model)), ids),
        nll(stream_logits(model, ids, 4, 12, "absolute"), ids),
    ):
        assert (got - want).abs().max() <= 1e-4
    before = nll(decode(model, ids, SinkCache(4, 12, "absolute", model=model, evict="before")), ids)
    assert (before - want).abs().max() > 1e-3  # one key fewer once the cache is full
    assert (before[:, :16] - want[:, :16]).abs().max() <= 1e-4  # equal while 4 + 12 keys still hold everything


def test_stream_attention_refuses_what_it_cannot_score():
    model = load("tiny-llama")[0]
    with pytest.raises(SinklabInputError, match="window"):
        StreamAttention(2, 0)
    with pytest.raises(SinklabInputError, match="positions"):
        StreamAttention(2, 8, "rope")
    ids = torch.randint(7, 200, (1, 12))
    with pytest.raises(SinklabInputError, match="use_cache=False"), StreamAttention(2, 8)(model):
        model(input_ids=ids, attention_mask=torch.ones(1, 12).index_fill(1, torch.tensor([0]), 0))


@pytest.mark.parametrize("variant", ["sink", "softmax1", "kv_bias", "gated"])
def test_patched_variants_stream_as_they_decode(variant):
    """A patched model's variant (its slot, or the gate after attention) is part of the parallel evaluation:
    equal to token-by-token SinkCache decoding of the patched model."""
    from sinklab.remove import patch

    model, _ = load("tiny-llama")
    patch(model, variant, init="default")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() <= 2 and p.numel() < 1000:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)) * 0.5)  # a slot that matters
    ids = torch.randint(7, 200, (1, 36), generator=torch.Generator().manual_seed(4))
    positions = ["absolute"] if variant == "kv_bias" else ["cache", "absolute"]  # kv_bias: refused with "cache"
    for pos in positions:
        want = decode(model, ids, SinkCache(2, 9, pos, model=model))
        got = stream_logits(model, ids, 2, 9, pos)
        assert (nll(got, ids) - nll(want, ids)).abs().max() <= 1e-4, pos
    if variant == "kv_bias":
        with pytest.raises(SinklabInputError, match="positions='absolute'"):
            stream_logits(model, ids, 2, 9)


def test_stream_attention_refuses_rowwise_variants_and_bypassed_methods():
    from sinklab.exploit.redistribute import ACT
    from sinklab.measure import Observer
    from sinklab.remove import patch, unpatch

    model, _ = load("tiny-llama")
    ids = torch.randint(7, 200, (1, 30), generator=torch.Generator().manual_seed(4))
    patch(model, "softpick", init="default")
    with pytest.raises(SinklabInputError, match="exact-decode"):
        stream_logits(model, ids, 2, 9)
    unpatch(model)
    for other in (Observer(), ACT()):
        with other(model), pytest.raises(SinklabInputError, match="replaces the attention computation"):
            stream_logits(model, ids, 2, 9)
