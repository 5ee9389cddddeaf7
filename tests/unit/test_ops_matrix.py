"""One matrix over every registered attention variant (and a toy one defined here alone): the chunked paths against
the naive definition, forward, backward and statistics; the naive definition against semantic references (fp64).
The toy variant also runs through patch, scan and a training step: a new variant is one definition."""

from __future__ import annotations

import importlib
import math
import pkgutil
import types
import zlib
from collections import Counter

import pytest
import torch

import sinklab.ops._rows as rows_mod
import sinklab.ops._sdpa as sdpa_mod
import sinklab.ops.colsum.chunked as chunked_mod
from sinklab.errors import SinklabInputError
from sinklab.ops import VARIANTS, Param, StatsRequest, Variant, attention, attention_calls, register_variant
from sinklab.ops._common import head_param, masked_softmax
from sinklab.ops.stats import query_validity
from sinklab.testing import assert_close


def temperature_weights(s: torch.Tensor, keep: torch.Tensor | None, *, t: torch.Tensor) -> torch.Tensor:
    """a_ij = softmax_j(t_h * s_ij): a learnable inverse temperature per head (1 = softmax)."""
    return masked_softmax(s * head_param(t, s.shape[1], s), keep)


TOY = Variant(
    name="toy_temperature",
    doc=temperature_weights.__doc__,
    family="rowwise",
    params={"t": Param(("H",), learnable=True, required=True, identity=1.0, init=1.0, doc="inverse temperature")},
    weights=temperature_weights,
    example=lambda H, D, device, dtype: {"t": torch.linspace(0.5, 1.5, H, dtype=dtype, device=device)},
)
ALL = [*VARIANTS, TOY.name]
STATS = StatsRequest(colsum=True, entropy=True, lse=True, pattern=9, columns=(0, 3, 17))
FIELDS = ("colsum", "entropy", "slot", "lse", "columns", "pattern")


@pytest.fixture(autouse=True, scope="module")
def toy_registered():
    """The toy variant exists only while this file runs."""
    register_variant(TOY)
    yield
    VARIANTS.pop(TOY.name)


@pytest.fixture
def small_blocks(monkeypatch):
    """Several query chunks even at test sizes, in every chunked path."""
    monkeypatch.setattr(sdpa_mod, "BLOCK_ELEMS", 300)
    monkeypatch.setattr(rows_mod, "BLOCK_ELEMS", 300)
    monkeypatch.setattr(chunked_mod, "DEFAULT_BLOCK_BYTES", 1)  # 16-row chunks


def seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def example(variant: str, H: int, D: int, dtype) -> dict:
    params = VARIANTS[variant].example(H, D, "cpu", dtype)
    return {n: p.detach().clone().requires_grad_() if isinstance(p, torch.Tensor) else p for n, p in params.items()}


# (B, H, Hkv, T, S, D, causal, window, key padding, bool attn_mask)
CASES = [
    (2, 4, 2, 37, 37, 16, True, None, False, False),  # GQA causal, T == S
    (1, 4, 4, 29, 29, 8, False, None, False, False),  # bidirectional
    (2, 4, 1, 23, 41, 8, True, 7, True, False),  # S > T (a cache), multi-query, window, key padding
    (2, 2, 2, 33, 33, 8, True, None, True, True),  # key padding and an attn_mask together
    (1, 2, 1, 40, 31, 4, True, None, False, False),  # S < T: the first queries see nothing
    (2, 6, 3, 1, 23, 8, True, None, True, False),  # one query (decoding)
    (1, 2, 2, 19, 19, 8, False, 5, True, False),  # bidirectional window, key padding
]


def inputs(case, dtype, variant):
    B, H, Hkv, T, S, D, causal, window, pad, masked = case
    gen = torch.Generator().manual_seed(seed(case, variant))
    q, k, v = (torch.randn(B, h, n, D, generator=gen, dtype=torch.float64) for h, n in ((H, T), (Hkv, S), (Hkv, S)))
    q, k, v = (x.to(dtype).requires_grad_() for x in (q, k, v))
    kw = dict(causal=causal, window=window)
    if pad:
        padding = torch.ones(B, S, dtype=torch.bool)
        padding[0, : S // 4] = False  # left padding
        padding[-1, -2:] = False  # right padding
        kw["key_padding"] = padding
    if masked:
        kw["attn_mask"] = torch.rand(B, 1, T, S, generator=gen) > 0.2
    return q, k, v, kw


def run(variant, q, k, v, params, impl, stats=None, **kw):
    result = attention(q, k, v, variant=variant, impl=impl, stats=stats, **kw, **params)
    out, st = result if stats is not None else (result, None)
    w = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view(out.shape).to(out.dtype)
    leaves = [q, k, v] + [p for p in params.values() if isinstance(p, torch.Tensor)]
    grads = torch.autograd.grad((out * w).sum(), leaves)
    return out, grads, st


def compare_stats(got, ref, dtype):
    for name in FIELDS:
        a, b = getattr(got, name), getattr(ref, name)
        assert (a is None) == (b is None), name
        if name == "lse" and a is not None:  # -inf for a row with no visible key and no slot
            assert torch.equal(torch.isneginf(a), torch.isneginf(b))
            a, b = (x.nan_to_num(neginf=0.0) for x in (a, b))
        if a is not None:
            assert_close(a, b, dtype, name)
    assert torch.equal(got.count, ref.count)
    assert torch.equal(got.rows, ref.rows)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}H{}kv{}T{}S{}D{}-c{}-w{}-pad{}-mask{}".format(*c))
@pytest.mark.parametrize("variant", ALL)
def test_chunked_matches_naive_fp32(variant, case, small_blocks):
    """Fast path and chunked statistics pass against the definition: out, every gradient, every statistic."""
    q, k, v, kw = inputs(case, torch.float32, variant)
    params = example(variant, q.shape[1], q.shape[-1], torch.float32)
    out_n, g_n, st_n = run(variant, q, k, v, params, "naive", STATS, **kw)
    for stats in (None, STATS):
        out_c, g_c, st_c = run(variant, q, k, v, params, "chunked", stats, **kw)
        assert_close(out_c, out_n, torch.float32, "out")
        for a, b in zip(g_c, g_n, strict=True):
            assert torch.isfinite(a).all()
            assert_close(a, b, torch.float32, "grad")
    compare_stats(st_c, st_n, torch.float32)
    assert (st_n.slot is not None) == (VARIANTS[variant].family == "slot")
    assert (st_n.lse is not None) == (VARIANTS[variant].family != "rowwise")


@pytest.mark.parametrize("variant", ALL)
def test_chunked_bf16_matches_fp32_naive(variant, small_blocks):
    case = CASES[2]
    q, k, v, kw = inputs(case, torch.bfloat16, variant)
    params = example(variant, q.shape[1], q.shape[-1], torch.bfloat16)
    up = {n: p.detach().float().requires_grad_() if isinstance(p, torch.Tensor) else p for n, p in params.items()}
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    out_n, g_n, st_n = run(variant, q32, k32, v32, up, "naive", STATS, **kw)
    for stats in (None, STATS):
        out_c, g_c, st_c = run(variant, q, k, v, params, "chunked", stats, **kw)
        assert out_c.dtype == torch.bfloat16
        assert_close(out_c, out_n, torch.bfloat16, "out")
        for a, b in zip(g_c, g_n, strict=True):
            assert_close(a, b, torch.bfloat16, "grad")
    compare_stats(st_c, st_n, torch.bfloat16)


def reference_weights(variant: str, s: torch.Tensor, keep: torch.Tensor, q: torch.Tensor, params: dict, scale):
    """Each variant's (weights, slot weight, lse) from its paper's formula, written independently of sinklab.ops."""
    neg = s.masked_fill(~keep, float("-inf"))
    H = s.shape[1]
    if variant in ("softmax1", "sink", "kv_bias"):  # gpt-oss: append the slot logit as a column, softmax, split
        if variant == "softmax1":
            c = torch.zeros_like(s[..., :1])
        elif variant == "sink":
            c = params["sink"].view(1, H, 1, 1).expand_as(s[..., :1])
        else:
            c = scale * torch.einsum("bhtd,hd->bht", q, params["k_bias"])[..., None] + params["sink"].view(1, H, 1, 1)
        full = torch.cat([neg, c], -1)
        a = torch.softmax(full, -1)
        return a[..., :-1], a[..., -1:], torch.logsumexp(full, -1)
    if variant == "softmax":
        return torch.softmax(neg, -1), None, torch.logsumexp(neg, -1)
    if variant == "softpick":
        x = torch.expm1(s) * keep
        return torch.relu(x) / (x.abs().sum(-1, keepdim=True) + 1e-8), None, None
    if variant == "clipped":
        gamma, zeta = params["gamma"], params["zeta"]
        return torch.clamp((zeta - gamma) * torch.softmax(neg, -1) + gamma, 0, 1) * keep, None, None
    if variant == "sigmoid":
        return torch.sigmoid(s + params["bias"].view(1, H, 1, 1)) * keep, None, None
    raise AssertionError(variant)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_naive_matches_the_papers_formula_fp64(variant):
    """fp64: the naive definition and its statistics against each variant's formula on the full matrix."""
    B, H, Hkv, T, S, D = 2, 4, 2, 11, 19, 8
    gen = torch.Generator().manual_seed(seed(variant))
    q = torch.randn(B, H, T, D, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(B, Hkv, S, D, generator=gen, dtype=torch.float64) for _ in range(2))
    params = VARIANTS[variant].example(H, D, "cpu", q.dtype)
    padding = torch.ones(B, S, dtype=torch.bool)
    padding[1, :3] = False
    scale = 0.3
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = scale * q @ kk.transpose(-1, -2)
    keep = (torch.arange(S)[None, :] <= torch.arange(T)[:, None] + S - T) & padding[:, None, None, :]
    a, slot, lse = reference_weights(variant, s, keep, q, params, scale)
    ref = a @ vv
    if variant == "kv_bias":
        ref = ref + slot * params["v_bias"][None, :, None, :]
    out, st = attention(q, k, v, variant=variant, impl="naive", key_padding=padding, scale=scale, stats=STATS, **params)
    assert_close(out, ref, torch.float64, "out")
    valid = query_validity(T, S, padding, B, "cpu")[:, None, :, None]  # [B, 1, T, 1]
    assert_close(st.colsum, (a * valid).sum(2), torch.float64, "colsum")
    assert_close(st.entropy, -torch.special.xlogy(a * valid, a * valid).sum((-1, -2)), torch.float64, "entropy")
    assert torch.equal(st.count, (keep & valid).sum(2)[:, 0])
    assert_close(st.columns, a[..., list(STATS.columns)], torch.float64, "columns")
    if slot is not None:
        assert_close(st.slot, (slot * valid).sum((-1, -2)), torch.float64, "slot")
    assert (st.lse is None) == (lse is None)
    if lse is not None:
        assert_close(st.lse, lse, torch.float64, "lse")


def test_slot_and_key_mass_add_up_to_every_valid_row():
    """sum_j colsum_j + slot = number of valid rows (each sees a key) for the slot family; colsum alone for softmax."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    padding = torch.ones(2, 16, dtype=torch.bool)
    padding[0, 10:] = False  # right padding: every valid query sees key 0
    for variant in ("softmax", "softmax1", "sink", "kv_bias"):
        params = VARIANTS[variant].example(4, 8, "cpu", q.dtype)
        for impl in ("naive", "chunked"):
            _, st = attention(q, k, v, variant=variant, impl=impl, key_padding=padding, stats=True, **params)
            total = st.colsum.sum(-1) + (0 if st.slot is None else st.slot)
            assert_close(total, st.rows[:, None].double().expand(2, 4), torch.float64, variant)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_defaults_are_the_documented_values(impl):
    """kv_bias without its slot logit = sink 0; sigmoid without a bias = -log S; clipped and softpick defaults."""
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, n, 4, generator=gen, dtype=torch.float64) for n in (6, 9, 9))
    kv = VARIANTS["kv_bias"].example(2, 4, "cpu", q.dtype)
    kv.pop("sink")
    given = [
        ("kv_bias", kv, {"sink": torch.zeros(2, dtype=q.dtype)}),
        ("sigmoid", {}, {"bias": -math.log(9)}),
        ("clipped", {}, {"gamma": -0.03, "zeta": 1.0}),
        ("softpick", {}, {"eps": 1e-8}),
    ]
    for variant, params, defaults in given:
        out = attention(q, k, v, variant=variant, impl=impl, stats=True, **params)
        ref = attention(q, k, v, variant=variant, impl=impl, stats=True, **params, **defaults)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1].colsum, ref[1].colsum), variant


def test_padded_queries_never_count_but_get_outputs():
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 8, 4, generator=gen) for _ in range(3))
    padding = torch.tensor([[False, False, True, True, True, True, True, True]])
    for impl in ("naive", "chunked"):
        out, st = attention(q, k, v, impl=impl, causal=False, key_padding=padding, stats=True)
        assert st.rows.tolist() == [6] and st.count[0].tolist() == [0, 0] + [6] * 6
        assert out[:, :, :2].abs().sum() > 0  # padded queries still attend the real keys
        ref = attention(q[:, :, 2:], k[:, :, 2:], v[:, :, 2:], impl="naive", causal=False, stats=True)[1]
        assert_close(st.colsum[..., 2:], ref.colsum, torch.float32, impl)


SOFTCAP = 1.5


def shift_first_key(scores, rows, keys):
    """An attention-redistribution style logit edit: +2 on key 0, wherever it is in the block."""
    assert scores.shape[2] == rows[1] - rows[0] and scores.shape[3] == keys[1] - keys[0]
    if keys[0] == 0:
        scores = scores.clone()
        scores[..., 0] += 2.0
    return scores


def halve_second_key(weights, rows, keys):
    """A ZeroTuning style weight edit: half the weight of key 1."""
    if keys[0] <= 1 < keys[1]:
        weights = weights.clone()
        weights[..., 1 - keys[0]] *= 0.5
    return weights


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3]], ids=["causal", "window-pad", "pad-mask"])
@pytest.mark.parametrize("variant", ALL)
def test_softcap_and_edits_chunked_match_naive(variant, case, small_blocks):
    q, k, v, kw = inputs(case, torch.float32, variant)
    params = example(variant, q.shape[1], q.shape[-1], torch.float32)
    kw.update(softcap=SOFTCAP, edit_logits=shift_first_key, edit_weights=halve_second_key)
    out_n, g_n, st_n = run(variant, q, k, v, params, "naive", STATS, **kw)
    for stats in (None, STATS):
        out_c, g_c, st_c = run(variant, q, k, v, params, "chunked", stats, **kw)
        assert_close(out_c, out_n, torch.float32, "out")
        for a, b in zip(g_c, g_n, strict=True):
            assert_close(a, b, torch.float32, "grad")
    compare_stats(st_c, st_n, torch.float32)


def test_softcap_and_edits_are_the_definition():
    """softcap = c tanh(s / c) before the mask; a logit edit of +log 3 on key 0 triples its unnormalized weight; a
    weight edit changes the output but not the logits' lse."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, 7, 4, generator=gen, dtype=torch.float64) * 3 for _ in range(3))
    s = (q @ k.transpose(-1, -2)) / 2
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    capped = torch.softmax((SOFTCAP * torch.tanh(s / SOFTCAP)).masked_fill(~causal, float("-inf")), -1)
    assert_close(attention(q, k, v, impl="naive", softcap=SOFTCAP), capped @ v, torch.float64, "softcap")
    boosted = s.clone()
    boosted[..., 0] += math.log(3.0)
    ref = torch.softmax(boosted.masked_fill(~causal, float("-inf")), -1) @ v

    def edit(x, rows, keys):
        x = x.clone()
        x[..., 0] += math.log(3.0)
        return x

    for impl in ("naive", "chunked"):
        assert_close(attention(q, k, v, impl=impl, edit_logits=edit), ref, torch.float64, impl)
    _, plain = attention(q, k, v, impl="naive", stats=StatsRequest(lse=True))
    out, edited = attention(q, k, v, impl="naive", edit_weights=halve_second_key, stats=StatsRequest(lse=True))
    assert torch.equal(edited.lse, plain.lse)
    assert not torch.allclose(out, attention(q, k, v, impl="naive"))


def test_edit_blocks_hold_whole_rows(small_blocks):
    """Every key a query may see is in the block its row is edited in."""
    T, S, W = 40, 45, 9
    q, k, v = (torch.randn(1, 2, n, 4) for n in (T, S, S))
    seen = []

    def record(scores, rows, keys):
        seen.append((rows, keys))
        return scores

    attention(q, k, v, impl="chunked", window=W, edit_logits=record)
    assert len(seen) > 1 and seen[-1][0][1] == T
    for (r0, r1), (lo, hi) in seen:
        assert lo <= max(0, r0 + S - T - W + 1) and hi >= r1 + S - T  # first row's window, last row's diagonal


@pytest.mark.parametrize("shape", [(0, 2, 5, 4), (1, 2, 0, 4)], ids=["B=0", "T=0"])
@pytest.mark.parametrize("impl", ["auto", "naive", "chunked"])
def test_zero_length_inputs_raise(shape, impl):
    q = torch.zeros(shape)
    k = torch.zeros(shape[0], 2, 5, 4)
    with pytest.raises(SinklabInputError, match="must not be empty"):
        attention(q, k, k, impl=impl)
    with pytest.raises(SinklabInputError, match="must not be empty"):
        attention(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 0, 4), torch.zeros(1, 2, 0, 4), impl=impl, stats=True)


def test_stats_calls_are_counted_by_the_impl_that_ran():
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    before = attention_calls()
    attention(q, k, v, variant="sink", sink=torch.zeros(2), stats=True)
    attention(q, k, v, variant="softpick", impl="naive", stats=StatsRequest(pattern=3))
    attention(q, k, v, softcap=2.0)
    assert attention_calls() - before == Counter({"sink/chunked": 1, "softpick/naive": 1, "softmax/chunked": 1})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stats": "yes"}, "stats must be a sinklab.ops.stats.StatsRequest"),
        ({"stats": StatsRequest(columns=(5,))}, r"columns must be key indices in \[0, 5\)"),
        ({"stats": True, "attn_mask": torch.ones(1, 2, 5, 5, dtype=torch.bool)}, "same for every head"),
        ({"key_padding": torch.ones(1, 4, dtype=torch.bool)}, r"key_padding must be \[B, S\] = \[1, 5\]"),
        ({"key_padding": torch.ones(1, 5)}, "key_padding must be a bool tensor"),
        ({"softcap": 0.0}, "softcap must be a positive float"),
        ({"variant": "sink", "sink": torch.zeros(2), "impl": "triton"}, "impl='triton' needs CUDA"),
    ],
)
def test_bad_input_one_clear_line(kwargs, match):
    q, k, v = (torch.zeros(1, 2, 5, 4) for _ in range(3))
    with pytest.raises(SinklabInputError, match=match) as info:
        attention(q, k, v, **kwargs)
    assert "\n" not in str(info.value)


def test_no_ops_module_is_shadowed_by_a_function():
    """``import sinklab.ops.<name> as m`` gives a module for every module of the package (variants included)."""
    import sinklab.ops

    names = [i.name for i in pkgutil.walk_packages(sinklab.ops.__path__, "sinklab.ops.") if "_triton" not in i.name]
    assert "sinklab.ops.variants.sigmoid" in names
    for name in names:
        importlib.import_module(name)
        parent, _, leaf = name.rpartition(".")
        assert isinstance(getattr(importlib.import_module(parent), leaf), types.ModuleType), name


def test_toy_variant_patches_scans_and_trains():
    import sinklab
    from sinklab.remove import identity_variants, patch, unpatch

    model, tok = sinklab.load("tiny-llama")
    ids = tok(["a new variant in one file"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    assert TOY.name in identity_variants()
    patch(model, TOY.name)
    with torch.no_grad():
        assert_close(model(input_ids=ids).logits, reference, torch.float32, "identity init")
    result = sinklab.scan(model, tok, ["some text to scan " * 8], max_tokens=48, progress=False)
    assert 0.0 <= result.sink_rate <= 1.0
    params = [p for n, p in model.named_parameters() if n.endswith("sinklab_t")]
    assert len(params) == model.config.num_hidden_layers
    optimizer = torch.optim.SGD(params, lr=1.0)
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    optimizer.step()
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, reference)
    unpatch(model)
