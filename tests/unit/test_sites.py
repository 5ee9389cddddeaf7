"""The attention sites on every architecture of the matrix: observing or identity-patching never changes outputs,
and the statistics equal eager attention's `output_attentions`."""

from pathlib import Path

import pytest
import torch

from sinklab.errors import SinklabInputError
from sinklab.hf import ModelView, sites
from sinklab.measure import Observer
from sinklab.models.tiny import ARCHS, tiny_arch
from sinklab.remove import identity_variants, patch, unpatch
from sinklab.testing import assert_close

TEXTS = ["The quick brown fox jumps over the lazy dog, again and again.", "Short text."]
ENCODERS = ("bert", "roberta", "modernbert")
SRC = Path(__file__).resolve().parents[2] / "src"


def _inputs(arch, tokenizer):
    tokenizer.padding_side = "right" if arch in ENCODERS else "left"
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    kwargs = {"attention_mask": mask}
    if arch not in ENCODERS:
        kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp_min(0)
    return ids, mask, kwargs


def _outputs(model, ids, kwargs):
    out = model(input_ids=ids, **kwargs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("arch", ARCHS)
def test_observed_equals_eager(arch):
    model, tok = tiny_arch(arch)
    ids, mask, kwargs = _inputs(arch, tok)
    valid = mask.bool()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(input_ids=ids, output_attentions=True, **kwargs)
        reference = eager.logits if hasattr(eager, "logits") else eager.last_hidden_state
        with Observer(model) as obs:
            observed = _outputs(model, ids, kwargs)
    assert model.config._attn_implementation == "eager"  # restored on exit
    assert_close(observed[valid], reference[valid], torch.float32, f"{arch} outputs")
    view = ModelView(model)
    assert len(obs.attention) == len(view.attention) == len(eager.attentions)
    for info, A in zip(view.attention, eager.attentions, strict=True):  # [B, H, T, S]
        stats = obs.attention[info.layer]
        A = A.double() * valid[:, None, :, None]
        assert_close(stats.colsum.double() * valid[:, None, :], A.sum(2), torch.float32, f"{arch} colsum")
        entropy = -torch.special.xlogy(A, A).sum((-1, -2))
        if arch != "gpt_oss":  # there the rows do not sum to one: the slot's share is not in A
            assert_close(stats.entropy.double(), entropy, torch.float32, f"{arch} entropy")
        if arch == "gpt_oss":
            slot = (valid[:, None, :].double() - A.sum(-1)).sum(-1)  # [B, H] mass on the learned sink
            assert_close(stats.slot.double(), slot, torch.float32, f"{arch} sink-slot mass")
            assert float(slot.min()) > 0.01  # the sinks really take mass
        else:
            assert stats.slot is None


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_patch_leaves_outputs(arch):
    model, tok = tiny_arch(arch)
    ids, mask, kwargs = _inputs(arch, tok)
    valid = mask.bool()
    with torch.no_grad():
        reference = _outputs(model, ids, kwargs)
    accepted = ("softmax", "gated") if arch == "gpt_oss" else identity_variants()
    for variant in accepted:
        patch(model, variant, init="identity")
        with torch.no_grad():
            patched = _outputs(model, ids, kwargs)
        unpatch(model)
        assert_close(patched[valid], reference[valid], torch.float32, f"{arch} {variant}")
    with torch.no_grad():
        assert torch.equal(_outputs(model, ids, kwargs), reference)  # bit-identical after unpatch


def test_own_sinks_refuse_other_variants():
    model, _ = tiny_arch("gpt_oss")
    patch(model, "softpick")
    with pytest.raises(SinklabInputError, match="s_aux"):
        model(input_ids=torch.tensor([[5, 6, 7]]))
    unpatch(model)


def test_unknown_attention_keyword_is_refused():
    model, _ = tiny_arch("llama")
    site_sets = sites(model)
    site = site_sets.attention[0]
    q = torch.randn(1, 4, 3, 16)
    kv = torch.randn(1, 2, 3, 16)
    with pytest.raises(SinklabInputError, match="alibi_slopes"):
        site(site.info.module, q, kv, kv, None, {"alibi_slopes": torch.ones(4)})


def test_training_dropout_is_applied_as_eager_applies_it():
    model, tok = tiny_arch("bert")
    model.train()
    ids = tok(["dropout on the attention weights"], return_tensors="pt")["input_ids"]
    model.set_attn_implementation("eager")
    torch.manual_seed(1)
    eager = model(input_ids=ids).last_hidden_state
    with Observer(model):
        torch.manual_seed(1)
        observed = model(input_ids=ids).last_hidden_state
        torch.manual_seed(2)
        other = model(input_ids=ids).last_hidden_state
    assert not torch.allclose(observed, other)  # dropout really acts
    assert torch.isfinite(observed).all() and observed.shape == eager.shape


def test_hook_names_are_checked():
    model, _ = tiny_arch("llama")
    with (
        pytest.raises(SinklabInputError, match="unknown hook name"),
        Observer(model, hooks={"layers.0.attn.chunk": []}),
    ):
        pass
    with pytest.raises(SinklabInputError, match="2 blocks"), Observer(model, hooks={"layers.7.mlp": []}):
        pass
    assert model.config._attn_implementation != sites(model).name  # a failed attach leaves nothing behind


def test_registration_lives_and_dies_with_the_methods():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    model, _ = tiny_arch("llama")
    before = model.config._attn_implementation
    name = sites(model).name
    with Observer(model):
        patch(model, "sink")
        assert name in AttentionInterface._global_mapping and name in AttentionMaskInterface._global_mapping
    assert model.config._attn_implementation == name  # the patch still holds the site
    unpatch(model)
    assert name not in AttentionInterface._global_mapping and name not in AttentionMaskInterface._global_mapping
    assert model.config._attn_implementation == before


def test_one_registration_in_the_source():
    text = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    assert text.count("AttentionInterface.register(") == 1
    assert text.count("AttentionMaskInterface.register(") == 1


def test_model_view_structure():
    view = ModelView(tiny_arch("gemma3")[0])
    assert [a.kind for a in view.attention] == ["sliding", "full"]
    assert view.attention[0].window == 5 and view.attention[1].window is None
    assert view.attention[0].num_kv_heads == 2 and view.attention[0].head_dim == 16
    assert all(a.inv_freq is not None for a in view.attention)
    assert not torch.equal(view.attention[0].inv_freq, view.attention[1].inv_freq)  # local and global RoPE
    bert = ModelView(tiny_arch("bert")[0])
    assert [a.causal for a in bert.attention] == [False, False] and bert.attention[0].inv_freq is None
    assert ModelView(tiny_arch("gpt2")[0]).attention[0].name == "transformer.h.0.attn"
    with pytest.raises(SinklabInputError, match="transformers model"):
        ModelView(object())


def test_model_output_flags_pass_through_an_observed_model():
    """transformers passes output_hidden_states on to attention: a flag, not math; observing keeps every output."""
    from sinklab.measure import Observer
    from sinklab.models import load

    model, _ = load("tiny-llama")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        plain = model(input_ids=ids, output_hidden_states=True)
        with Observer(model):
            observed = model(input_ids=ids, output_hidden_states=True)
    assert len(observed.hidden_states) == len(plain.hidden_states)
    for a, b in zip(observed.hidden_states, plain.hidden_states, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
