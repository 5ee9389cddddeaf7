"""Prefix slots as the streaming sink: the parallel evaluator (StreamAttention) with keys a qkv hook prepended equals
token-by-token SinkCache decoding with the same prefix attached."""

import pytest
import torch
from torch.nn import functional as F

from sinklab.exploit.cache import SinkCache
from sinklab.exploit.prefix import PrefixKV
from sinklab.exploit.stream_eval import stream_logits
from sinklab.models import load
from sinklab.testing import assert_close


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma3"])
def model(request):
    return load(request.param)[0]


def random_prefix(model, n: int) -> PrefixKV:
    g = torch.Generator().manual_seed(n)
    prefix = PrefixKV.from_tokens(model, [1, *range(40, 40 + n - 1)])
    with torch.no_grad():
        for p in prefix.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    return prefix


def decode(model, ids, cache):
    """Token by token with positions 0, 1, 2, ... (generate's numbering: the slots sit at position 0 of the stream;
    ``SinkCache.position_ids`` would re-base the queries under them)."""
    out = []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            pos = torch.full((ids.shape[0], 1), t)
            out.append(model(input_ids=ids[:, t : t + 1], position_ids=pos, cache=cache, use_cache=True).logits)
    return torch.cat(out, 1)


@pytest.mark.parametrize("positions", ["cache", "absolute"])
@pytest.mark.parametrize(("n", "sinks", "window"), [(1, 0, 7), (3, 0, 10), (2, 2, 6)])
def test_prefix_streams_as_the_sink_like_decoding(model, positions, n, sinks, window):
    ids = torch.randint(7, 200, (2, 30), generator=torch.Generator().manual_seed(3))
    prefix = random_prefix(model, n)
    with prefix(model):
        want = decode(model, ids, SinkCache(sinks, window, positions, model=model))
        got = stream_logits(model, ids, sinks, window, positions)
    assert_close(got, want)
    nll = [F.cross_entropy(x[:, :-1].transpose(1, 2), ids[:, 1:]) for x in (got, want)]
    assert abs(float(nll[0] - nll[1])) <= 1e-4
    without = stream_logits(model, ids, sinks, window, positions)
    assert (got - without).abs().max() > 1e-3  # the prefix takes part


def test_window_covering_everything_is_dense_attention_with_the_prefix():
    model = load("tiny-llama")[0]
    ids = torch.randint(7, 200, (1, 12), generator=torch.Generator().manual_seed(4))
    prefix = random_prefix(model, 2)
    with prefix(model), torch.no_grad():
        dense = model(input_ids=ids, use_cache=False).logits
        assert_close(stream_logits(model, ids, 0, 40), dense)


def test_prefix_with_an_int4_cache_is_the_parallel_int4_evaluator_keeping_the_slots():
    """Decoding with QuantizedSinkCache (no real token kept exact) and the prefix attached = one parallel forward of
    QuantizedKVAttention with the n prepended slots as its exact first keys: the slots are never quantized."""
    from sinklab.exploit.cache.quant import QuantizedKVAttention, QuantizedSinkCache

    model = load("tiny-llama")[0]
    ids = torch.randint(7, 200, (1, 20), generator=torch.Generator().manual_seed(5))
    prefix = random_prefix(model, 2)
    with prefix(model):
        want = decode(model, ids, QuantizedSinkCache(4, 0, group_size=8, model=model))
        with QuantizedKVAttention(4, 2, 8)(model), torch.no_grad():
            got = model(input_ids=ids, use_cache=False).logits
        with QuantizedKVAttention(4, 0, 8)(model), torch.no_grad():
            slots_quantized = model(input_ids=ids, use_cache=False).logits
    # as test_cache_quant's twin: a code may flip where a value sits on a rounding edge, so NLL within 1e-4
    nll = [F.cross_entropy(x[0, :-1], ids[0, 1:], reduction="none") for x in (got, want, slots_quantized)]
    assert (nll[0] - nll[1]).abs().max() <= 1e-4
    assert (nll[2] - nll[1]).abs().max() > 1e-3  # quantizing the slots would differ
