"""Passkey and key-value retrieval prompts: length, needle placement, and what a sink cache can still see."""

import pytest
import torch

from sinklab.data.tasks import kv_retrieval, passkey
from sinklab.errors import SinklabInputError
from sinklab.exploit.cache import SinkCache
from sinklab.exploit.stream import answer
from sinklab.models import byte_tokenizer, load


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_length_and_depth(tok, depth):
    ex = passkey(tok, 2000, depth=depth, seed=3)
    assert abs(ex.num_tokens - 2000) < 100
    assert ex.answer in ex.prompt and len(ex.answer) == 5
    ids = tok(ex.prompt)["input_ids"]
    needle = tok.decode(ids[ex.needle_start : ex.needle_end])
    assert needle.startswith("The pass key is " + ex.answer) and needle.strip().endswith("is the pass key.")
    assert abs(ex.needle_start / ex.num_tokens - depth) < 0.1
    assert passkey(tok, 2000, depth=depth, seed=3) == ex  # seeded


def test_in_window_follows_the_cache_rule(tok):
    early, late = passkey(tok, 3000, depth=0.1, seed=1), passkey(tok, 3000, depth=1.0, seed=1)
    assert not early.in_window(4, 500) and late.in_window(4, 500)
    assert early.in_window(4, 3000)  # a window larger than the prompt keeps everything
    first = passkey(tok, 3000, depth=0.0, seed=1)
    assert first.in_window(first.needle_end, 100)  # enough sinks keep the needle itself


def test_kv_retrieval(tok):
    ex = kv_retrieval(tok, 20, depth=0.25, seed=2)
    ids = tok(ex.prompt)["input_ids"]
    pair = tok.decode(ids[ex.needle_start : ex.needle_end])
    assert ex.answer in pair and ex.prompt.count(ex.answer) == 1
    assert ex.prompt.endswith('is: "')


@pytest.mark.parametrize(("n", "depth"), [(0, 0.5), (100, 1.5), (100, -0.1)])
def test_bad_task_arguments(tok, n, depth):
    with pytest.raises(SinklabInputError):
        passkey(tok, n, depth)


def test_answer_streams_through_a_sink_cache():
    model, tok = load("tiny-llama")
    ex = passkey(tok, 300, depth=0.2)
    cache = SinkCache(4, 64, model=model)
    out = answer(model, tok, ex.prompt, cache, max_new_tokens=6)
    assert isinstance(out, str) and cache.cache_size() == 68
    assert cache.get_seq_length() == ex.num_tokens + 5  # the last answer token is never fed back
    assert not ex.in_window(4, 64)  # this needle was evicted: no cache policy can recover it
    assert torch.is_tensor(cache.layers[0].keys)
