"""Property tests (hypothesis): the attention weights of each variant on random logits and masks.

With V = I (head dim D = S, value j = e_j) the output row of query i is its weight row a_i, for any implementation.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sinklab.ops import attention

TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny problems: one thread avoids OpenMP barriers that stall when other processes share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@st.composite
def problems(draw):
    T = draw(st.integers(1, 9))
    S = draw(st.integers(1, 9))
    H = draw(st.sampled_from([1, 2]))
    seed = draw(st.integers(0, 2**31 - 1))
    spread = draw(st.sampled_from([0.1, 1.0, 10.0, 60.0]))  # logit scale: up to overflow-prone magnitudes
    causal = draw(st.booleans())
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, T, S, generator=gen, dtype=torch.float64) * spread  # head dim D = S, so V can be I
    k = torch.randn(1, H, S, S, generator=gen, dtype=torch.float64)
    mask = torch.rand(1, 1, T, S, generator=gen) > draw(st.sampled_from([0.0, 0.3, 0.9]))
    v = torch.eye(S, dtype=torch.float64).expand(1, H, S, S)
    return q, k, v, mask, causal, H, gen


def weights(variant, impl, q, k, v, mask, causal, **params):
    a = attention(q, k, v, variant=variant, impl=impl, causal=causal, attn_mask=mask, **params)  # [1, H, T, S]
    assert torch.isfinite(a).all()
    return a


@settings(max_examples=40, deadline=None)
@given(problems(), st.sampled_from(["naive", "chunked"]))
def test_softmax1_sink_softpick_rows_sum_to_at_most_one(problem, impl):
    q, k, v, mask, causal, H, gen = problem
    for variant, params in [
        ("softmax1", {}),
        ("sink", {"sink": torch.randn(H, generator=gen, dtype=torch.float64) * 5}),
        ("softpick", {}),
    ]:
        a = weights(variant, impl, q, k, v, mask, causal, **params)
        assert (a >= -TOL).all(), variant
        assert (a.sum(-1) <= 1 + TOL).all(), variant
        assert (a.masked_select(~mask.expand_as(a)).abs() <= TOL).all(), variant  # masked keys get nothing


@settings(max_examples=40, deadline=None)
@given(problems(), st.sampled_from(["naive", "chunked"]), st.floats(-0.5, -1e-3), st.floats(1.0, 1.5))
def test_clipped_rows_in_unit_interval(problem, impl, gamma, zeta):
    q, k, v, mask, causal, _, _ = problem
    a = weights("clipped", impl, q, k, v, mask, causal, gamma=gamma, zeta=zeta)
    assert (a >= -TOL).all() and (a <= 1 + TOL).all()


@settings(max_examples=25, deadline=None)
@given(problems(), st.sampled_from(["naive", "chunked"]))
def test_softmax_rows_sum_to_one_where_a_key_is_visible(problem, impl):
    q, k, v, mask, causal, _, _ = problem
    a = weights("softmax", impl, q, k, v, mask, causal)
    T, S = q.shape[2], k.shape[2]
    i = torch.arange(T)[:, None] + S - T
    visible = mask & ((torch.arange(S)[None, :] <= i) if causal else True)
    expect = visible.any(-1).to(a.dtype).expand(a.shape[:-1])
    assert torch.allclose(a.sum(-1), expect, atol=1e-9)
