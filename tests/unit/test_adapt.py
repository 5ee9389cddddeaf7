"""sinklab.remove.adapt: a tiny CPU adaptation learns and measures every metric; the checkpoint holds only what changed
and loads back bit-identically; the teacher is the same weights with the variant off; bad input is one clear error."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from sinklab.errors import SinklabInputError
from sinklab.models.tiny import tiny_arch
from sinklab.remove.adapt import AdaptConfig, adapt, load_adapted, select_trainable, teacher_mode
from sinklab.remove.variant import patch

pytestmark = pytest.mark.xdist_group("adapt")

METRICS = ("ppl", "ppl_w8a8", "ppl_kv4", "ppl_window", "ppl_sinks", "max_abs", "kurtosis", "sink_rate",
           "sink_rate_long", "first_token_mass", "val_loss")  # fmt: skip
SMALL = dict(model="tiny-llama", context=64, batch_size=4, long_context=128, window=32, num_sinks=2, eval_seqs=4,
             long_seqs=2, eval_batches=1, device="cpu")  # fmt: skip


def _ids(n: int = 2, t: int = 40) -> torch.Tensor:
    return torch.randint(7, 263, (n, t), generator=torch.Generator().manual_seed(3))


def test_tiny_run_learns_and_measures_every_metric(tmp_path):
    """softpick changes the model at step 0 (KL > 0); LoRA + KL pull it back to the original: held-out KL falls."""
    model, tok = tiny_arch("llama")
    out = tmp_path / "run"
    config = AdaptConfig(
        variant="softpick", trainable="lora", tokens=4 * 64 * 16, lr=1e-2, beta=10.0, out=str(out), **SMALL
    )
    result = adapt(config, model, tok)
    first, last = result.history[0], result.history[-1]
    assert [row["step"] for row in result.history] == [0, 4, 8, 12, 16]
    kls = [row["kl"] for row in result.history]  # held-out windows spread over the text (0.3.0)
    assert first["kl"] > 0.05 and all(b < a for a, b in itertools.pairwise(kls)) and last["kl"] < 0.7 * first["kl"]
    streaming = ("ppl_window", "ppl_sinks")  # softpick normalises rows its own way: no parallel streaming metric
    for row in (result.before, *result.history):
        for key in METRICS:
            if key in streaming and row is not result.before:
                assert row[key] is None and "exact-decode" in row["stream_unavailable"], key
            else:
                assert math.isfinite(row[key]), key
    assert 0 <= last["sink_rate"] <= 1 and result.before["ppl_window"] > 1
    assert math.isfinite(last["train_ce"]) and math.isfinite(last["train_kl"])
    assert 0 < result.trainable_frac < 0.2 and result.tokens == 16 * 4 * 64
    record = json.loads((out / "adapt.json").read_text())
    assert record["provenance"]["texts"]["source"]["heldout_tokens"] > 0
    assert record["summary"]["ppl_after"] == last["ppl"] and record["summary"]["ppl_before"] == result.before["ppl"]
    assert "KL" in (out / "report.html").read_text() and (out / "curves.png").stat().st_size > 1000


def test_checkpoint_holds_only_what_changed_and_loads_bit_identically(tmp_path):
    model, tok = tiny_arch("llama")
    out = tmp_path / "gated"
    config = AdaptConfig(variant="gated", trainable="lora", headwise=True, tokens=4 * 64 * 3, out=str(out), **SMALL)
    result = adapt(config, model, tok)
    with safe_open(str(out / "adapter.safetensors"), framework="pt") as f:
        keys = sorted(f.keys())
    assert keys == sorted(result.trained) and keys
    assert all("sinklab_gate" in k or "lora_" in k for k in keys)  # nothing of the frozen base model
    fresh, _ = tiny_arch("llama")
    loaded, _ = load_adapted(out, fresh, tok)
    with torch.no_grad():
        assert torch.equal(result.model(input_ids=_ids()).logits, loaded(input_ids=_ids()).logits)
    assert loaded.config.sinklab_variant == result.variant_record


def test_the_teacher_is_the_same_weights_without_the_variant():
    """Identity-initialised gates leave the model as it was; after training them, the teacher mode still gives the
    original outputs (no second copy), the student does not; identity init means KL = 0 at step 0."""
    model, tok = tiny_arch("llama")
    with torch.no_grad():
        original = model(input_ids=_ids()).logits
    result = adapt(AdaptConfig(variant="gated", tokens=4 * 64 * 4, lr=3e-2, **SMALL), model, tok)
    assert result.history[0]["kl"] == pytest.approx(0.0, abs=1e-9)
    with torch.no_grad():
        student = model(input_ids=_ids()).logits
        with teacher_mode(model):
            teacher = model(input_ids=_ids()).logits
    torch.testing.assert_close(teacher, original, rtol=1e-5, atol=1e-5)
    assert (student - original).abs().max() > 1e-3


def test_trainable_sets_freeze_the_rest():
    counts = {}
    for trainable in ("variant", "lora", "attention", "all"):
        model, _ = tiny_arch("llama")
        patch(model, "sink", sink=-4.0)
        peft_model = select_trainable(model, AdaptConfig(variant="sink", trainable=trainable).check())
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        counts[trainable] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert all(("lora_" in n) == (trainable == "lora") or "sinklab_" in n for n in names)
        assert any("sinklab_sink" in n for n in names)
        assert (peft_model is not None) == (trainable == "lora")
    assert counts["variant"] < counts["lora"] < counts["attention"] < counts["all"]


def test_penalties_are_logged_and_push_the_first_token_mass_down():
    """Same data, same start: the run that pays for first-token mass ends with less of it on its last batch."""
    mass = {}
    for weight in (1e-9, 100.0):  # 1e-9: logged, without effect
        model, tok = tiny_arch("llama")
        config = AdaptConfig(variant="sink", tokens=4 * 64 * 8, slot_logit=-4.0, param_lr=2.0, beta=0.0,
                             mass_penalty=weight, act_penalty=1e-9, eval_every=8, **SMALL)  # fmt: skip
        last = adapt(config, model, tok).history[-1]
        assert math.isfinite(last["train_act"]) and last["train_act"] > 0
        mass[weight] = last["train_mass"]
    assert mass[100.0] < 0.5 * mass[1e-9]


@pytest.mark.parametrize(
    ("arch", "overrides", "message"),
    [
        ("llama", {"variant": "flash"}, "unknown variant 'flash'; accepted: softmax"),
        ("llama", {"trainable": "bias"}, "unknown trainable set 'bias'; accepted: variant, lora, attention, all"),
        ("llama", {"variant": "softpick"}, "variant 'softpick' has no learnable parameters"),
        ("llama", {"tokens": 100}, "--tokens 100 is below one batch: 4 sequences x 64 tokens = 256"),
        ("gpt_oss", {"variant": "sink"}, "variant 'sink' cannot run on GptOssForCausalLM"),
        ("bert", {}, "BertModel is not a causal language model"),
    ],
)
def test_bad_input_is_one_clear_error(arch, overrides, message):
    model, tok = tiny_arch(arch)
    with pytest.raises(SinklabInputError, match=message.replace("(", r"\(")):
        adapt(AdaptConfig(**{**SMALL, "tokens": 256, **overrides}), model, tok)
    assert not hasattr(model.config, "sinklab_variant")  # a refused patch is taken off again


def test_cli_adapt_writes_results_and_fails_cleanly(tmp_path):
    from sinklab.cli import app

    common = ["--model", "tiny-llama", "--context", "64", "--batch-size", "4", "--long-context", "128"]
    common += ["--window", "32", "--device", "cpu"]
    out = tmp_path / "ok"
    result = CliRunner().invoke(app, ["adapt", *common, "--variant", "sink", "--tokens", "512", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"adapt.json", "adapter.safetensors", "curves.png", "report.html"}
    for args, message in (
        (["--variant", "nope"], "unknown variant 'nope'"),
        (["--trainable", "nope"], "unknown trainable set 'nope'"),
        (["--tokens", "10"], "is below one batch"),
    ):
        bad = tmp_path / "bad"
        result = CliRunner().invoke(app, ["adapt", *common, *args, "--out", str(bad)])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not bad.exists() and not list(tmp_path.glob(".bad*"))


def test_lora_without_peft_is_one_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(SinklabInputError, match=r"--trainable lora needs peft \(pip install 'sinklab\[adapt\]'\)"):
        AdaptConfig(trainable="lora").check()
    AdaptConfig(trainable="variant").check()  # the other sets do not need it
