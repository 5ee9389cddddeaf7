"""Prefix key/value slots and test-time registers: the site path equals its eager twin (explicit keys/values in a
cache, eager attention), initialisation equals prepending the tokens, the file round-trips bit for bit, tuning moves
the loss, registers equal an explicit edit of the weights."""

import copy

import pytest
import torch

from sinklab.errors import SinklabInputError
from sinklab.exploit.prefix import PrefixKV, load_prefix, save_prefix
from sinklab.exploit.prefix.evaluate import split_corpus
from sinklab.exploit.prefix.naive import prefix_reference_logits
from sinklab.exploit.prefix.registers import TestTimeRegisters, find_register_neurons
from sinklab.exploit.prefix.tune import TuneConfig, tune
from sinklab.models import load
from sinklab.models.tiny import tiny_arch
from sinklab.testing import assert_close

ARCHS = ["llama", "qwen3", "gemma2", "gemma3", "gpt2", "gpt_oss", "phi3"]  # GQA in all but gpt2


def perturbed(model, tokens, seed=0) -> PrefixKV:
    """Slots from ``tokens``, moved off the model's own values (so a twin test sees arbitrary slots)."""
    g = torch.Generator().manual_seed(seed)
    prefix = PrefixKV.from_tokens(model, tokens)
    with torch.no_grad():
        for p in prefix.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    return prefix


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_equals_explicit_keys_and_values(arch):
    model, _ = tiny_arch(arch)
    ids = torch.randint(7, 200, (2, 3), generator=torch.Generator().manual_seed(1))  # T + n within every window
    prefix = perturbed(model, [1, 50])
    want = prefix_reference_logits(model, ids, prefix)
    with prefix(model), torch.no_grad():
        got = model(input_ids=ids).logits
    assert_close(got, want)
    with torch.no_grad():
        assert (got - model(input_ids=ids).logits).abs().max() > 1e-3  # the slots take part


def test_prefix_on_a_longer_text_equals_explicit_keys_and_values():
    model, _ = load("tiny-llama")
    ids = torch.randint(7, 200, (1, 40), generator=torch.Generator().manual_seed(2))
    prefix = perturbed(model, [1, 9, 10, 11])
    want = prefix_reference_logits(model, ids, prefix)
    with prefix(model), torch.no_grad():
        assert_close(model(input_ids=ids).logits, want)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen3"])
def test_initialisation_is_the_tokens_put_in_front(arch):
    model, _ = tiny_arch(arch)
    ids = torch.randint(7, 200, (2, 3), generator=torch.Generator().manual_seed(3))
    front = torch.tensor([1, 60])
    with PrefixKV.from_tokens(model, front)(model), torch.no_grad():
        got = model(input_ids=ids).logits
    with torch.no_grad():
        want = model(input_ids=torch.cat([front.expand(2, -1), ids], 1)).logits[:, 2:]
    assert_close(got, want)


def test_windowed_layers_see_the_slots_from_every_query():
    model, _ = load("tiny-gemma3")  # sliding window 8 on layers 0, 1, 3
    ids = torch.randint(7, 200, (1, 30), generator=torch.Generator().manual_seed(4))
    prefix = perturbed(model, [1])
    with prefix(model), torch.no_grad():
        full = model(input_ids=ids).logits
        late = model(input_ids=ids[:, :20]).logits
    assert_close(full[:, :20], late)  # causal: later tokens change nothing before them
    assert torch.isfinite(full).all()


def test_generate_with_the_prefix_is_generating_after_the_tokens():
    model, tok = load("tiny-llama")
    ids = tok(["the prefix composes with generate"], return_tensors="pt")["input_ids"]
    front = torch.tensor([[1, 70, 71]])
    with PrefixKV.from_tokens(model, front[0])(model):
        got = model.generate(ids, max_new_tokens=8, do_sample=False)
    want = model.generate(torch.cat([front, ids], 1), max_new_tokens=8, do_sample=False)
    assert torch.equal(got, want[:, 3:])


def test_the_file_round_trips_bit_for_bit(tmp_path):
    model, _ = load("tiny-llama")
    ids = torch.randint(7, 200, (2, 12), generator=torch.Generator().manual_seed(5))
    prefix = perturbed(model, [1, 2, 3])
    prefix.meta["model"] = "tiny-llama"
    path = save_prefix(prefix, tmp_path / "p.safetensors")
    loaded = load_prefix(path)
    assert loaded.n == 3 and loaded.meta["model"] == "tiny-llama"
    with prefix(model), torch.no_grad():
        a = model(input_ids=ids).logits
    with loaded(model), torch.no_grad():
        b = model(input_ids=ids).logits
    assert torch.equal(a, b)


def test_bad_prefixes_are_refused(tmp_path):
    with pytest.raises(SinklabInputError, match=">= 1"):
        PrefixKV(0)
    with pytest.raises(SinklabInputError, match="does not exist"):
        load_prefix(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_text("not a tensor file")
    with pytest.raises(SinklabInputError, match="is not a safetensors prefix file"):
        load_prefix(tmp_path / "junk.safetensors")
    llama, _ = load("tiny-llama")
    gemma, _ = load("tiny-gemma3")
    with pytest.raises(SinklabInputError, match="another model"):
        PrefixKV.from_tokens(llama, [1]).attach(gemma)
    assert gemma.config._attn_implementation != "sinklab"  # a refused attach leaves nothing behind


def test_disabled_is_the_model_as_it_is():
    model, _ = load("tiny-llama")
    ids = torch.randint(7, 200, (1, 10), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        prefix = perturbed(model, [1])
        with prefix(model), prefix.disabled():
            assert_close(model(input_ids=ids).logits, plain)


@pytest.mark.parametrize("objective", ["outliers", "quant", "kl"])
def test_tuning_moves_only_the_slots_and_lowers_the_loss(objective):
    torch.manual_seed(0)
    model, _ = load("tiny-llama")
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    seqs = torch.randint(7, 200, (4, 16), generator=torch.Generator().manual_seed(7))
    prefix = perturbed(model, [1, 2])  # far from the model's own: KL starts high
    start = [p.detach().clone() for p in prefix.parameters()]
    history = tune(model, prefix, seqs, TuneConfig(steps=15, lr=0.05, batch=4, objective=objective, weight=0.1))
    assert history["loss"][-1] < history["loss"][0]
    assert history["kl"][-1] < history["kl"][0]
    assert any(not torch.equal(a, b) for a, b in zip(start, prefix.parameters(), strict=True))
    assert all(torch.equal(p, before[n][0]) and p.requires_grad == before[n][1] for n, p in model.named_parameters())
    assert not any(p.requires_grad for p in prefix.parameters())


def test_bad_tuning_settings_are_refused():
    with pytest.raises(SinklabInputError, match="unknown objective"):
        TuneConfig(objective="mse")
    with pytest.raises(SinklabInputError, match="steps and batch"):
        TuneConfig(steps=0)
    with pytest.raises(SinklabInputError, match="lr must be"):
        TuneConfig(lr=-1.0)


def test_split_is_disjoint_and_refuses_too_little_text():
    _, tok = load("tiny-llama")
    text = "".join(chr(97 + i % 26) for i in range(500))
    tune_ids, eval_ids, split = split_corpus(tok, [text], 20, 5, 50, 4)
    assert tune_ids.shape == (5, 20) and eval_ids.shape == (4, 50)
    assert split["disjoint"] and split["tune_token_range"][1] <= split["eval_token_range"][0]
    assert (tune_ids[:, 0] == tok.bos_token_id).all()  # the byte tokenizer starts a text with BOS
    with pytest.raises(SinklabInputError, match="disjoint"):
        split_corpus(tok, [text], 100, 5, 100, 4)


def test_registers_equal_the_neurons_removed_from_the_weights():
    model, _ = load("tiny-llama")
    seqs = torch.randint(7, 200, (3, 24), generator=torch.Generator().manual_seed(8))
    found = find_register_neurons(model, seqs, top=3, min_share=0.0)
    assert 0 <= found["layer"] < 3 and 1 <= len(found["neurons"]) <= 3
    registers = TestTimeRegisters.build(model, seqs, register_token=1, top=3)
    ids = seqs[:1]
    with registers(model), torch.no_grad():
        got = model(input_ids=ids).logits
    edited = copy.deepcopy(model)
    with torch.no_grad():  # the neurons contribute nothing on the content: their down-projection columns are zero
        edited.model.layers[registers.layer].mlp.down_proj.weight[:, list(registers.neurons)] = 0
    want = prefix_reference_logits(edited, ids, registers.prefix)
    assert_close(got, want)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    assert (got - plain).abs().max() > 1e-4


def test_registers_refuse_an_mlp_without_gates():
    model, _ = tiny_arch("gpt2")
    with pytest.raises(SinklabInputError, match="not a gated MLP"):
        TestTimeRegisters(layer=0, neurons=[1]).attach(model)
