"""SinkCache: equal to the dense cache while the stream fits, equal to the naive pattern reference beyond it."""

import pytest
import torch
from transformers import DynamicCache

from sinklab.errors import SinklabInputError
from sinklab.exploit.cache import SinkCache
from sinklab.exploit.cache.naive import stream_reference_logits, visible_keys
from sinklab.exploit.cache.rope import rotate
from sinklab.models import load


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert not torch.isnan(a).any()
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma3"])
def model(request):
    return load(request.param)[0]


def decode(model, ids, cache, chunks=None, own_positions=True):
    chunks = chunks or [1] * ids.shape[1]
    out, t = [], 0
    with torch.no_grad():
        for c in chunks:
            kw = {"position_ids": cache.position_ids(c, ids.shape[0])} if own_positions else {}
            out.append(model(input_ids=ids[:, t : t + c], cache=cache, use_cache=True, **kw).logits)
            t += c
    return torch.cat(out, 1)


@pytest.mark.parametrize("positions", ["cache", "absolute"])
def test_equals_dense_cache_while_it_fits(model, positions):
    ids = torch.randint(7, 200, (2, 13), generator=torch.Generator().manual_seed(1))
    got = decode(model, ids, SinkCache(3, 10, positions, model=model), own_positions=False)
    want = decode(model, ids, DynamicCache(config=model.config), own_positions=False)
    assert torch.equal(got, want)


@pytest.mark.parametrize("positions", ["cache", "absolute"])
@pytest.mark.parametrize("own_positions", [True, False])
@pytest.mark.parametrize("evict", ["after", "before"])
def test_matches_reference_beyond_window(model, positions, own_positions, evict):
    ids = torch.randint(7, 200, (2, 28), generator=torch.Generator().manual_seed(2))
    cache = SinkCache(3, 10, positions, model=model, evict=evict)
    got = decode(model, ids, cache, own_positions=own_positions)
    want = stream_reference_logits(model, ids, 3, 10, positions, evict=evict)
    assert rel(got, want) <= 1e-5
    assert cache.cache_size() == 13
    dense = model(input_ids=ids).logits
    assert rel(got[:, 20:], dense[:, 20:]) > 1e-3  # the eviction really changes the result


def test_positions_stay_bounded_with_rebase(model):
    ids = torch.randint(7, 200, (1, 36), generator=torch.Generator().manual_seed(3))
    cache = SinkCache(2, 6, "cache", model=model)
    got = decode(model, ids, cache)
    assert cache._next_position <= cache.max_position == 16  # sinks + 2 x (window + the current token's slot)
    assert rel(got, stream_reference_logits(model, ids, 2, 6, "cache")) <= 1e-5


def test_cache_and_absolute_differ(model):
    ids = torch.randint(7, 200, (1, 30), generator=torch.Generator().manual_seed(4))
    a = decode(model, ids, SinkCache(3, 8, "cache", model=model))
    b = decode(model, ids, SinkCache(3, 8, "absolute", model=model))
    assert torch.equal(a[:, :11], b[:, :11])
    assert rel(a[:, 12:], b[:, 12:]) > 1e-4


@pytest.mark.parametrize("positions", ["cache", "absolute"])
@pytest.mark.parametrize("evict", ["after", "before"])
def test_chunks_match_reference(model, positions, evict):
    chunks = [5, 1, 4, 1, 1, 10, 3, 1, 1]
    ids = torch.randint(7, 200, (1, sum(chunks)), generator=torch.Generator().manual_seed(5))
    got = decode(model, ids, SinkCache(3, 8, positions, model=model, evict=evict), chunks)
    assert rel(got, stream_reference_logits(model, ids, 3, 8, positions, chunks, evict)) <= 1e-5


def test_evict_before_is_one_window_slot_less(model):
    """Token by token, evicting before attention with window W shows the keys of trimming after it with W - 1."""
    ids = torch.randint(7, 200, (1, 30), generator=torch.Generator().manual_seed(9))
    before = decode(model, ids, SinkCache(3, 9, model=model, evict="before"))
    assert torch.equal(before, decode(model, ids, SinkCache(3, 8, model=model, evict="after")))
    assert rel(before[:, 13:], decode(model, ids, SinkCache(3, 9, model=model))[:, 13:]) > 1e-4


def test_no_sinks_is_a_sliding_window(model):
    ids = torch.randint(7, 200, (1, 25), generator=torch.Generator().manual_seed(6))
    got = decode(model, ids, SinkCache(0, 7, "cache", model=model))
    assert rel(got, stream_reference_logits(model, ids, 0, 7, "cache")) <= 1e-5


def test_generate_matches_manual_greedy_loop(model):
    prompt = torch.randint(7, 200, (2, 5), generator=torch.Generator().manual_seed(7))
    out = model.generate(prompt, cache=SinkCache(2, 6, model=model), max_new_tokens=20, do_sample=False)
    cache, ids = SinkCache(2, 6, model=model), prompt
    with torch.no_grad():
        logits = model(input_ids=prompt, cache=cache).logits
        for _ in range(20):
            nxt = logits[:, -1:].argmax(-1)
            ids = torch.cat([ids, nxt], 1)
            logits = model(input_ids=nxt, cache=cache).logits
    assert torch.equal(out, ids)
    assert cache.cache_size() == 8


def test_memory_is_constant():
    model = load("tiny-llama")[0]
    cache = SinkCache(4, 16, model=model)
    ids = torch.randint(7, 200, (1, 60))
    decode(model, ids[:, :30], cache)
    size = cache.nbytes()
    decode(model, ids[:, 30:], cache)
    assert cache.nbytes() == size and cache.cache_size() == 20


def test_visible_keys_rule():
    vis = visible_keys(8, 2, 3)  # reference convention: sinks + 3 recent + itself
    assert vis[4] == [0, 1, 2, 3, 4]
    assert vis[7] == [0, 1, 4, 5, 6, 7]
    assert visible_keys(8, 2, 3, evict="before")[7] == [0, 1, 5, 6, 7]
    assert visible_keys(9, 1, 3, chunks=[1, 3, 3, 2])[5] == [0, 1, 2, 3, 4, 5]  # a chunk sees the whole window


@pytest.mark.parametrize(
    ("sinks", "window", "positions", "evict"),
    [
        (4, 4, "cache", "after"),
        (-1, 8, "cache", "after"),
        (2, 0, "cache", "after"),
        (2, 8, "rope", "after"),
        (2, 8, "cache", "never"),
    ],
)
def test_bad_sizes(sinks, window, positions, evict):
    model = load("tiny-llama")[0]
    with pytest.raises(SinklabInputError):
        SinkCache(sinks, window, positions, model=model, evict=evict)


def test_cache_positions_need_the_model():
    with pytest.raises(SinklabInputError, match="model"):
        SinkCache(4, 16, "cache")
    cache = SinkCache(4, 16, "absolute")  # absolute positions need no RoPE frequencies
    model = load("tiny-llama")[0]
    ids = torch.randint(7, 200, (1, 30))
    assert rel(decode(model, ids, cache), stream_reference_logits(model, ids, 4, 16, "absolute")) <= 1e-5


def test_a_decode_step_touches_one_window_slot_and_the_sinks():
    """O(sinks) RoPE work per step: the window keys are never re-rotated, only the sink slots are rewritten."""
    model = load("tiny-llama")[0]
    cache = SinkCache(2, 6, model=model)
    ids = torch.randint(7, 200, (1, 12), generator=torch.Generator().manual_seed(8))
    decode(model, ids[:, :10], cache)
    layer = cache.layers[0]
    before = layer.keys.clone()
    decode(model, ids[:, 10:11], cache)
    changed = (layer.keys != before).flatten(3).any(-1).any(0).any(0)  # [S + W] slots
    assert changed[:2].all() and changed[2:].sum() == 1
    assert layer.gap == 2  # 11 tokens: 2 sinks, 6 in the window + the current token's slot, 2 evicted between
    assert torch.equal(layer.keys[:, :, :2], rotate(layer.sink_keys, 2, layer.inv_freq))
