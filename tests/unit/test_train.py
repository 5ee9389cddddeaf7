"""sinklab.remove.train: a tiny pre-training run learns and measures every metric; variants, errors, CLI, study."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sinklab.errors import SinklabInputError
from sinklab.remove.train import (
    METRIC_LEN,
    VARIANTS,
    Batches,
    TrainConfig,
    _lr,
    _metric_sequences,
    _scan_metrics,
    build_model,
    heldout_batches,
    metric_offsets,
    place,
    train,
)

pytestmark = pytest.mark.xdist_group("train")


METRICS = ("val_loss", "sink_rate", "first_token_mass_mean", "max_activation", "kurtosis")


def test_tiny_run_learns_and_measures_every_metric(tmp_path):
    out = tmp_path / "run"
    result = train(TrainConfig(preset="tiny", steps=30, eval_every=10, out=str(out)))
    assert result.attention_calls == {}  # the softmax baseline trains on transformers' own attention
    first, last = result.history[0], result.history[-1]
    assert [row["step"] for row in result.history] == [0, 10, 20, 30]
    assert last["val_loss"] < first["val_loss"] - 1.0  # random init ~ log(263) = 5.6 -> well below
    assert math.isfinite(last["train_loss"]) and last["train_loss"] < first["val_loss"]
    for row in result.history:
        for key in METRICS:
            assert math.isfinite(row[key]), key
        assert 0.0 <= row["sink_rate"] <= 1.0
        assert np.asarray(row["first_token_mass"]).shape == (2, 4)  # [L][H] of the tiny preset
        assert len(row["max_activation_by_layer"]) == 2
    assert last["max_activation"] > 0 and last["kurtosis"] > 1.0
    final = result.final
    assert final["ppl_fp32"] == pytest.approx(math.exp(last["val_loss"]), rel=1e-3)
    assert final["ppl_w8a8_tensor"] > 1.0 and final["ppl_w8a8_token"] > 1.0
    record = json.loads((out / "train.json").read_text())
    assert record["history"][-1]["val_loss"] == last["val_loss"]
    assert (out / "curves.png").stat().st_size > 1000
    # the rows as they happened (what a run cut short keeps): the same history, one JSON line per evaluation
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert json.dumps(rows) == json.dumps(record["history"])


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "softmax"])
def test_every_variant_trains_through_patch(variant):
    result = train(TrainConfig(variant=variant, preset="tiny", steps=6, eval_every=6, quant_eval=False))
    assert result.model.config.sinklab_variant["variant"] == variant
    ops_variant = "softmax" if variant == "gated" else variant  # gated: softmax weights, then the gate
    assert result.attention_calls == {f"{ops_variant}/chunked": 6 * 2}  # CPU: every step, both layers
    first, last = result.history
    assert last["val_loss"] < first["val_loss"]
    for key in METRICS:
        assert math.isfinite(last[key]), key


@pytest.mark.parametrize("overrides", [{"sink_token": True, "bos": "never"}, {"bos": "never"}, {"weight_decay": 0.0}])
def test_interventions_train(overrides):
    result = train(TrainConfig(preset="tiny", steps=4, eval_every=4, quant_eval=False, **overrides))
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    if overrides.get("sink_token"):  # one extra embedding row: the sink token, id = corpus vocab
        assert result.model.get_input_embeddings().weight.shape[0] == 263 + 1


def test_metrics_see_the_variant():
    """The training metrics come from sinklab.scan, which measures a patched model's own attention weights: a sink
    logit that takes all the mass leaves no first-token mass, where softmax leaves some."""
    from sinklab.models import byte_tokenizer
    from sinklab.remove import patch

    model = build_model(TrainConfig(preset="tiny").resolved(), 263)
    ids = torch.randint(7, 263, (3, METRIC_LEN), generator=torch.Generator().manual_seed(1))
    softmax = _scan_metrics(model, byte_tokenizer(), ids, 0.3)
    patch(model, "sink", init="default")
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "sinklab_sink"):
                module.sinklab_sink.fill_(40.0)
    sink = _scan_metrics(model, byte_tokenizer(), ids, 0.3)
    assert np.mean(softmax["first_token_mass"]) > 0.01 > 1e-6 > np.mean(sink["first_token_mass"])
    assert sink["kurtosis"] > 0 and len(sink["max_activation_by_layer"]) == model.config.num_hidden_layers


def test_compiled_steps_train_the_same_model():
    """--compile: the steps run through torch.compile (one captured graph) and give eager's losses and metrics
    within float32 reordering noise; evaluations run the plain module on the same parameters."""
    kw = dict(preset="tiny", steps=4, eval_every=2, quant_eval=False, device="cpu")
    eager = train(TrainConfig(**kw))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = train(TrainConfig(**kw, compile=True))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the training steps really were compiled
    assert [row["step"] for row in compiled.history] == [0, 2, 4]
    for a, b in zip(eager.history[1:], compiled.history[1:], strict=True):
        for key in ("train_loss", *METRICS):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert compiled.to_dict()["config"]["compile"] is True


def test_batches_are_disjoint_across_ranks_and_deterministic():
    data = Batches(np.arange(1000, dtype=np.uint16), body=10, prefix=[1], seed=3)
    ranks = [data.step(2, 4, rank, 2) for rank in range(2)]
    assert ranks[0].shape == (4, 11) and (ranks[0][:, 0] == 1).all()
    starts = {int(r[1]) for batch in ranks for r in batch}
    assert len(starts) == 8  # 8 different windows
    assert torch.equal(data.step(2, 4, 1, 2), ranks[1])
    epoch = {int(data.step(s, 10)[i, 1]) for s in range(10) for i in range(10)}
    assert epoch == set(range(0, 1000, 10))  # one epoch visits every window once


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(preset="tiny", steps=100, warmup=10, lr=1e-3).resolved()
    assert _lr(0, cfg) == pytest.approx(1e-4)
    assert _lr(9, cfg) == pytest.approx(1e-3)
    assert _lr(10, cfg) == pytest.approx(1e-3)
    assert _lr(99, cfg) == pytest.approx(1e-4, rel=0.01)
    assert all(_lr(s, cfg) >= _lr(s + 1, cfg) for s in range(10, 99))


def test_gu60m_preset_is_gu_et_al_shape():
    """The gu60m preset is sail-sg/Attention-Sink's tinyllama_60M: 10 layers x 768, 8 heads, FFN 1536, context 2048,
    59M parameters besides the embedding; a constant learning rate is min_lr_ratio 1."""
    cfg = TrainConfig(preset="gu60m", min_lr_ratio=1.0).resolved()
    assert (cfg.context, cfg.lr, cfg.warmup, cfg.metric_seqs) == (2048, 4e-4, 100, 100)
    with torch.device("meta"):
        model = build_model(cfg, 49152)
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (10, 768, 8, 1536)
    body = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    assert body == pytest.approx(59e6, rel=0.01)
    assert _lr(cfg.warmup, cfg) == _lr(cfg.steps - 1, cfg) == pytest.approx(4e-4)


@pytest.fixture(scope="module")
def documents_corpus(tmp_path_factory):
    """A built byte corpus whose held-out split has a few documents, each ended by EOS."""
    from sinklab.data.train_corpus import build_corpus

    root = tmp_path_factory.mktemp("documents")
    (root / "docs").mkdir()
    for i in range(80):
        words = " ".join(f"token{i}x{j}" for j in range(30 + 5 * (i % 5)))  # 250-450 characters, none repeated
        (root / "docs" / f"doc{i:02d}.txt").write_text(f"Document {i}. {words}")
    build_corpus(root / "built", packages=[], extra=[root / "docs"], tokenizer="byte", heldout=0.25)
    return str(root / "built")


def test_metric_windows_documents_are_held_out_document_starts_spread_over_the_split(documents_corpus):
    """--metric-windows documents: Gu et al.'s probe, the first 64 tokens of held-out documents (BOS first under
    --bos always); stream: windows of the held-out stream. Both are spread evenly over the split, the last one in its
    last part: a corpus is stored source by source, and the first documents would all be its first source's."""
    from sinklab.data.train_corpus import load_corpus

    corpus = load_corpus(documents_corpus)
    val = np.asarray(corpus.val)
    ends = np.flatnonzero(val == corpus.eos_token_id)
    starts = [s for s, e in zip([0, *(ends[:-1] + 1)], ends, strict=True) if e - s >= METRIC_LEN - 1]
    assert len(starts) >= 8
    cfg = TrainConfig(preset="tiny", corpus=documents_corpus, metric_windows="documents", metric_seqs=4)
    ids = _metric_sequences(cfg.resolved(), corpus, [corpus.bos_token_id])
    assert ids.shape == (4, METRIC_LEN) and (ids[:, 0] == corpus.bos_token_id).all()
    step = len(starts) / 4
    chosen = [starts[int(i * step)] for i in range(4)]
    for row, start in zip(ids[:, 1:].numpy(), chosen, strict=True):
        assert np.array_equal(row, val[start : start + METRIC_LEN - 1])
    assert chosen[-1] >= starts[len(starts) * 3 // 4] and metric_offsets(cfg).tolist() == chosen
    assert corpus.load_tokenizer().decode(ids[0, 1:10].tolist()).startswith("Document")
    stream = _metric_sequences(replace(cfg, metric_windows="stream").resolved(), corpus, [])
    windows = len(val) // METRIC_LEN
    expected = [val[w * METRIC_LEN : (w + 1) * METRIC_LEN] for w in (i * windows // 4 for i in range(4))]
    assert np.array_equal(stream.numpy(), np.stack(expected))
    too_many = replace(cfg, metric_seqs=len(starts) + 1).resolved()
    with pytest.raises(SinklabInputError, match=f"held-out split has {len(starts)} documents of at least 63 tokens"):
        _metric_sequences(too_many, corpus, [corpus.bos_token_id])


def test_place_spreads_over_the_range_evenly_or_takes_the_first_and_refuses_others():
    assert place(4, 10).tolist() == [0, 2, 5, 7] and place(3, 3).tolist() == [0, 1, 2]
    assert place(4, 10, "first").tolist() == [0, 1, 2, 3]  # what sinklab up to 0.2.1 measured
    assert place(5, 2).tolist() == place(5, 2, "first").tolist() == [0, 1, 0, 1, 0]  # more than there are: in turn
    picked = place(100, 98_765)
    assert len(set(picked.tolist())) == 100 and np.diff(picked).max() - np.diff(picked).min() <= 1
    with pytest.raises(SinklabInputError, match="unknown placement 'last'; accepted: spread, first"):
        place(4, 10, "last")
    val = Batches(np.arange(1000 * 8), 8, [], seed=0)  # 1000 windows of 8 tokens
    windows = torch.cat(list(heldout_batches(val, eval_batches=2, batch_size=5)))[:, 0] // 8  # [10]
    assert windows.tolist() == list(range(0, 1000, 100))  # the validation loss reads the whole split


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"variant": "flash"}, "unknown variant 'flash'; accepted: softmax"),
        ({"preset": "huge"}, "unknown preset 'huge'; accepted: tiny, small, gu60m"),
        ({"min_lr_ratio": 1.5}, "--min-lr-ratio must be in"),
        ({"bos": "auto"}, "unknown --bos 'auto'; accepted: always, never"),
        ({"metric_windows": "random"}, "unknown --metric-windows 'random'; accepted: stream, documents"),
        ({"steps": 100_000}, "corpus too small"),
        ({"steps": 0}, "--steps must be a positive integer"),
        ({"context": 32}, "context must be at least 64"),
        ({"corpus": "/nonexistent"}, "is not a built corpus"),
    ],
)
def test_bad_input_is_one_clear_error(overrides, message):
    with pytest.raises(SinklabInputError, match=message.replace("(", r"\(")):
        train(TrainConfig(**{"preset": "tiny", **overrides}))


def test_cli_train_writes_results_and_fails_cleanly(tmp_path):
    from sinklab.cli import app

    out = tmp_path / "ok"
    result = CliRunner().invoke(app, ["train", "--steps", "3", "--eval-every", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "train.json").exists() and (out / "curves.png").exists()
    bad = tmp_path / "bad"
    result = CliRunner().invoke(app, ["train", "--variant", "nope", "--out", str(bad)])
    assert result.exit_code == 2
    assert "unknown variant 'nope'" in result.output
    assert not bad.exists()
    result = CliRunner().invoke(app, ["train", "--steps", "999999", "--out", str(bad)])
    assert result.exit_code == 2 and "corpus too small" in result.output
    assert not bad.exists() and not list(tmp_path.glob(".bad*"))


def test_study_script_runs_and_ends_with_one_json_line(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "benchmarks" / "train_study.py"
    spec = importlib.util.spec_from_file_location("train_study", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    out = tmp_path / "train-study-test.json"
    record = study.main(
        ["--preset", "tiny", "--steps", "3", "--eval-every", "3", "--runs", "softmax", "gated", "--out", str(out)]
    )
    assert [row["run"] for row in record["table"]] == ["softmax", "gated"]
    assert [row["attention_impl"] for row in record["table"]] == [
        "transformers sdpa",
        "sinklab.ops via remove.patch: softmax/chunked x6",
    ]
    assert record["table"][1]["loss_vs_baseline_pct"] == pytest.approx(
        100 * (record["table"][1]["val_loss"] / record["table"][0]["val_loss"] - 1)
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["benchmark"] == "train_study"
    assert json.loads(out.read_text())["runs"][0]["history"]
    assert out.with_suffix(".png").exists()

    # a second call adds runs to the same study, in RUNS order, against the same baseline; another budget is refused
    common = ["--preset", "tiny", "--steps", "3", "--eval-every", "3", "--out", str(out), "--append"]
    record = study.main([*common, "--runs", "bos_never"])
    assert [row["run"] for row in record["table"]] == ["softmax", "gated", "bos_never"]
    assert record["table"][0]["val_loss"] == json.loads(last)["table"][0]["val_loss"]
    assert [call["runs"] for call in record["calls"]] == [["softmax", "gated"], ["bos_never"]]
    with pytest.raises(SystemExit, match="would not share the budget"):
        study.main([*common[:3], "4", *common[4:], "--runs", "wd0"])
