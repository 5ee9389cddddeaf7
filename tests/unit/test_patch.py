"""sinklab.remove.patch on tiny random models: identity, training, save/reload, caches, unpatch, errors."""

from __future__ import annotations

import inspect

import pytest
import torch

from sinklab.errors import SinklabInputError
from sinklab.hf import sites
from sinklab.models import load
from sinklab.remove import identity_variants, load_patched, patch, patch_variants, unpatch

MODELS = ["tiny-llama", "tiny-gemma3", "tiny-bert"]


def rel(a, b) -> float:
    return ((a - b).double().norm() / b.double().norm()).item()


def batch(seed=0, T=20):
    """Two sequences, the second left-padded by 5 tokens (T > tiny-gemma3's window of 8)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 263, (2, T), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    return ids, mask


def outputs(model, ids, mask=None):
    out = model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def lm_loss(model, ids):
    h = outputs(model, ids)
    if h.shape[-1] != model.config.vocab_size:  # encoder: reconstruct the tokens through the input embeddings
        h = h @ model.get_input_embeddings().weight.T
        return torch.nn.functional.cross_entropy(h.flatten(0, 1), ids.flatten())
    return torch.nn.functional.cross_entropy(h[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


@pytest.mark.parametrize("variant", identity_variants())
@pytest.mark.parametrize("name", MODELS)
def test_identity_patch_leaves_outputs_unchanged(name, variant):
    model, _ = load(name)
    ids, mask = batch()
    with torch.no_grad():
        ref = outputs(model, ids, mask)
        patch(model, variant)
        got = outputs(model, ids, mask)
    keep = mask.bool()
    assert rel(got[keep], ref[keep]) <= 1e-5
    assert model.config._attn_implementation == sites(model).name


@pytest.mark.parametrize("variant", [v for v in patch_variants() if v not in identity_variants()])
def test_non_identity_variants_change_outputs(variant):
    model, _ = load("tiny-llama")
    ids, mask = batch()
    with torch.no_grad():
        ref = outputs(model, ids, mask)
        got = outputs(patch(model, variant), ids, mask)
    assert rel(got[mask.bool()], ref[mask.bool()]) > 1e-3


@pytest.mark.parametrize("variant", patch_variants())
@pytest.mark.parametrize("name", MODELS)
def test_patched_model_trains_and_reloads_bit_identically(name, variant, tmp_path):
    model, _ = load(name)
    patch(model, variant, init="default")
    added = {n: p for n, p in model.named_parameters() if "sinklab_" in n}
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids, _ = batch(1, T=24)
    losses = []
    for _ in range(4):
        loss = lm_loss(model, ids)
        opt.zero_grad()
        loss.backward()
        for n, p in added.items():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    model.eval()
    ids, mask = batch(2)
    with torch.no_grad():
        before = outputs(model, ids, mask)
    model.save_pretrained(tmp_path)
    reloaded = load_patched(tmp_path)
    assert reloaded.config.sinklab_variant["variant"] == variant
    with torch.no_grad():
        after = outputs(reloaded, ids, mask)
    assert torch.equal(before, after)


def test_patch_without_variant_restores_from_config_after_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = load("tiny-llama")
    patch(model, "sink", init="default", sink=torch.linspace(-2, 2, 4))
    model.save_pretrained(tmp_path)
    ids, mask = batch()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(outputs(patch(reloaded), ids, mask), outputs(model, ids, mask))
    assert torch.equal(reloaded.model.layers[1].self_attn.sinklab_sink, torch.linspace(-2, 2, 4))


@pytest.mark.parametrize(
    ("variant", "params"),
    [("sink", {}), ("kv_bias", {}), ("softpick", {}), ("gated", {}), ("sigmoid", {"bias": -3.0})],
)  # sigmoid's default bias -log S changes as the cache grows; a set (learnable) bias decodes consistently
def test_kv_cache_decoding_matches_full_forward(variant, params):
    model, _ = load("tiny-gemma3")  # sliding window 8 < 20 tokens: the cached path needs the window too
    patch(model, variant, init="default", **params)
    ids, _ = batch(3)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        full = model(input_ids=ids).logits
        out = model(input_ids=ids[:, :-3], use_cache=True)
        steps = [out.logits]
        for t in range(ids.shape[1] - 3, ids.shape[1]):
            out = model(input_ids=ids[:, t : t + 1], use_cache=True, **{name: out.past_key_values})
            steps.append(out.logits)
    assert rel(torch.cat(steps, dim=1), full) <= 1e-5


def test_headwise_gate_and_unpatch_restore_the_model():
    model, _ = load("tiny-llama")
    ids, mask = batch()
    n_params = len(list(model.parameters()))
    with torch.no_grad():
        ref = outputs(model, ids, mask)
    patch(model, "gated", headwise=True, init="default")
    attn = model.model.layers[0].self_attn
    assert attn.sinklab_gate.weight.shape == (4, 64)  # [H, d_model]: one gate per head
    with torch.no_grad():
        assert rel(outputs(model, ids, mask), ref) > 1e-3
    unpatch(model)
    assert len(list(model.parameters())) == n_params
    assert not hasattr(model.config, "sinklab_variant")
    assert not hasattr(attn, "sinklab_gate")
    with torch.no_grad():
        assert torch.equal(outputs(model, ids, mask), ref)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "mistral"])
def test_identity_patch_on_qwen_and_mistral(arch):
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = {"qwen3": {"head_dim": 8}, "mistral": {"sliding_window": 5}}.get(arch, {})
    cfg = AutoConfig.for_model(
        arch, vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attn_implementation="sdpa", **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    ids, mask = batch(T=12)
    ids = ids % 100
    with torch.no_grad():
        ref = outputs(model, ids, mask)
        for variant in identity_variants():
            got = outputs(patch(model, variant), ids, mask)
            assert rel(got[mask.bool()], ref[mask.bool()]) <= 1e-5, variant
            unpatch(model)


def test_patch_works_on_a_model_built_from_config():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, attn_implementation="sdpa",
    )  # fmt: skip
    model = patch(LlamaForCausalLM(cfg), "kv_bias", init="default")
    assert model.model.layers[0].self_attn.sinklab_k_bias.shape == (4, 8)
    loss = lm_loss(model, torch.randint(0, 50, (2, 12)))
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("softmax0",), {}, "unknown variant 'softmax0'; accepted: softmax, softmax1, sink, kv_bias"),
        (("sink",), {"sink": torch.zeros(3)}, r"'sink' must be a float or a tensor of shape \[4\]"),
        (("kv_bias",), {"v_bias": torch.zeros(4, 3)}, r"'v_bias' must be a float or a tensor of shape \[4, 16\]"),
        (("sink",), {"gamma": -0.1}, "unknown parameter 'gamma'; accepted: sink"),
        (("sink",), {"headwise": True}, "headwise=True applies to variant 'gated' only"),
        (("sink",), {"init": "zeros"}, "unknown init 'zeros'; accepted: identity, default"),
        (("clipped",), {"gamma": 0.2}, "needs gamma < 0 and zeta >= 1"),
        ((), {}, "model config has no 'sinklab_variant' to restore; pass a variant"),
    ],
)
def test_patch_bad_input_one_clear_line(args, kwargs, match):
    model, _ = load("tiny-llama")
    with pytest.raises(SinklabInputError, match=match) as info:
        patch(model, *args, **kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(SinklabInputError, match="not patched"):
        unpatch(model)


def test_transformers_masks_reach_the_kernels_as_flags_plus_key_padding(monkeypatch):
    """A 4-D mask that is exactly the position rule (causal, sliding window) & key padding goes to sinklab.ops as
    flags + [B, S] key padding (what the fused kernels take); results are unchanged (identity tests)."""
    import sinklab.hf.site as site_module

    seen = []

    def spy(q, k, v, **kw):
        padding = kw["key_padding"]
        seen.append((kw["causal"], kw["window"], kw["attn_mask"], None if padding is None else tuple(padding.shape)))
        return real(q, k, v, **kw)

    real = site_module.ops_attention
    monkeypatch.setattr(site_module, "ops_attention", spy)
    model = patch(load("tiny-llama")[0], "softpick")
    ids, mask = batch()
    with torch.no_grad():
        outputs(model, ids, mask)
        assert set(seen) == {(True, None, None, (2, 20))}
        seen.clear()
        outputs(model, ids)  # no padding: no mask at all
        assert set(seen) == {(True, None, None, None)}
        seen.clear()
        gemma = patch(load("tiny-gemma3")[0], "softpick")  # sliding layers (window 8 < 20): flags too
        outputs(gemma, ids, mask)
        assert set(seen) == {(True, None, None, (2, 20)), (True, 8, None, (2, 20))}


def test_split_mask_follows_each_mask_and_its_changes():
    from sinklab.hf.site import split_mask

    causal = torch.ones(20, 20, dtype=torch.bool).tril()
    a = causal.expand(2, 1, 20, 20).clone()
    a[1, ..., :5] = False  # left padding of 5 in the second row
    b = causal.expand(2, 1, 20, 20).clone()
    b[0, ..., :3] = False  # another mask of the same shape
    assert split_mask(a, 20, 20, True, None, "cpu")[2].sum(-1).tolist() == [20, 15]
    assert split_mask(b, 20, 20, True, None, "cpu")[2].sum(-1).tolist() == [17, 20]
    b[0, 0, 10, 0] = True  # changed in place: no longer causal & padding
    causal_flag, _, padding, mask = split_mask(b, 20, 20, True, None, "cpu")
    assert causal_flag is False and padding is None and torch.equal(mask, b)
    windowed = causal.triu(-7).expand(1, 1, 20, 20)
    assert split_mask(windowed, 20, 20, True, 8, "cpu")[:3] == (True, 8, None)
