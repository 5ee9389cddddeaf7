"""ops.colsum.fused (softmax statistics from PyTorch's fused CPU kernel) against the naive definition, and auto
choosing it exactly where it is exact."""

import pytest
import torch

from sinklab.errors import SinklabInputError
from sinklab.ops import attention, attention_calls
from sinklab.ops.stats import StatsRequest

REQUEST = StatsRequest(colsum=True, entropy=True, lse=True, pattern=12)


def _qkv(H, Hkv, T=70, D=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, h, T, D, generator=g) * 2 for h in (H, Hkv, Hkv))
    k[:, :, 0] *= 5  # a sink-like first key
    return q, k, v


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2)])
def test_fused_statistics_equal_the_definition(causal, heads):
    q, k, v = _qkv(*heads)
    with torch.no_grad():
        out, st = attention(q, k, v, causal=causal, stats=REQUEST, impl="fused")
        ref_out, ref = attention(q.double(), k.double(), v.double(), causal=causal, stats=REQUEST, impl="naive")
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    for name in ("colsum", "entropy", "lse", "pattern"):
        got, want = getattr(st, name).double(), getattr(ref, name).double()
        assert (got - want).abs().max() <= 1e-5 * want.abs().max(), name
    assert torch.equal(st.count, ref.count) and torch.equal(st.rows, ref.rows)


def test_auto_takes_the_fused_path_only_where_it_is_exact():
    q, k, v = _qkv(4, 2)
    pad = torch.ones(2, q.shape[2], dtype=torch.bool)
    pad[0, :3] = False
    cases = [
        ({}, "softmax/fused"),
        ({"key_padding": pad}, "softmax/chunked"),
        ({"window": 8}, "softmax/chunked"),
        ({"softcap": 5.0}, "softmax/chunked"),
        ({"stats": StatsRequest(columns=(0,))}, "softmax/chunked"),
    ]
    with torch.no_grad():
        for extra, path in cases:
            before = attention_calls()
            attention(q, k, v, **{"stats": REQUEST, **extra})
            assert attention_calls() - before == {path: 1}, extra
    before = attention_calls()
    attention(q.requires_grad_(), k, v, stats=REQUEST)  # the kernel's lse carries no gradient
    assert attention_calls() - before == {"softmax/chunked": 1}
    with pytest.raises(SinklabInputError, match="impl='fused'"):
        attention(q.detach(), k, v, window=8, stats=REQUEST, impl="fused")
