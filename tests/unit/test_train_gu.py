"""Gu et al.'s regime in sinklab.remove.train: a unique-token subset, checkpoints that load back, emergence steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sinklab.errors import SinklabInputError
from sinklab.remove.train import TrainConfig, _train_subset, emergence, metric_ids, train

pytestmark = pytest.mark.xdist_group("train")

# tiny preset: batch 8, context 64, BOS prefix -> windows of 63 tokens; one batch = 8 * 63 = 504 tokens


def test_unique_tokens_limit_the_windows_and_count_epochs_over_the_subset():
    result = train(TrainConfig(preset="tiny", steps=6, eval_every=6, unique_tokens=1000, quant_eval=False,
                               max_epochs=10))  # fmt: skip
    windows = 1000 // 63  # 15 whole windows (945 tokens), 6 steps x 8 sequences = 48 sequences
    assert result.final["unique_tokens"] == 945
    assert result.final["epochs"] == pytest.approx(48 / windows)
    # the same steps over the whole split are a fraction of an epoch
    full = train(TrainConfig(preset="tiny", steps=2, eval_every=2, quant_eval=False))
    assert full.final["unique_tokens"] > 400_000 and full.final["epochs"] < 0.01
    # max_epochs counts epochs over the subset: 48 sequences over 15 windows is 3.2 epochs > 2
    with pytest.raises(SinklabInputError, match=r"--unique-tokens gives 945 \(3.20 epochs, max_epochs=2\)"):
        train(TrainConfig(preset="tiny", steps=6, unique_tokens=1000))


def test_unique_tokens_are_whole_windows_spread_over_the_split():
    """The subset takes windows from the whole training split (every source of a corpus stored source by source),
    not its first tokens (its first sources only, up to 0.2.1)."""
    config = TrainConfig(preset="tiny", unique_tokens=10 * 63 + 5).resolved()
    subset = _train_subset(np.arange(100 * 63), config, body=63, world=1)
    assert subset.size == 10 * 63 and subset[::63].tolist() == [w * 63 for w in range(0, 100, 10)]
    assert np.array_equal(subset[63:126], np.arange(10 * 63, 11 * 63))  # whole windows


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (503, "--unique-tokens 503 is less than one batch: 8 windows of 63 tokens need 504"),
        (10**9, "--unique-tokens 1,000,000,000 is larger than the corpus's training split"),
        (0, "--unique-tokens must be a positive integer, got 0"),
    ],
)
def test_unique_tokens_out_of_range_are_refused(tokens, message):
    with pytest.raises(SinklabInputError, match=message.replace("(", r"\(")):
        train(TrainConfig(preset="tiny", steps=2, unique_tokens=tokens, max_epochs=100))


def test_cli_refuses_a_subset_out_of_range_in_one_line(tmp_path):
    from sinklab.cli import app

    bad = tmp_path / "bad"
    bad_argvs = (
        ["--unique-tokens", "100"],
        ["--unique-tokens", "999999999"],
        ["--checkpoint-steps", "2,x"],
        ["--checkpoint-steps", "5", "--steps", "3"],
        ["--checkpoint-steps", "3", "--variant", "gated"],
    )
    for argv in bad_argvs:
        result = CliRunner().invoke(app, ["train", "--steps", "3", *argv, "--out", str(bad)])
        assert result.exit_code == 2, (argv, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not bad.exists()
    ok = tmp_path / "ok"
    argv = ["train", "--steps", "4", "--eval-every", "2", "--unique-tokens", "2000", "--max-epochs", "5",
            "--checkpoint-steps", "3", "--out", str(ok)]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    record = json.loads((ok / "train.json").read_text())
    assert record["final"]["unique_tokens"] == 2000 // 63 * 63  # whole windows
    assert record["config"]["checkpoint_steps"] == [3]
    assert [row["step"] for row in record["history"]] == [0, 2, 3, 4]  # a checkpoint step is evaluated too
    assert (ok / "checkpoints" / "step-3" / "model.safetensors").exists()


def test_emergence_is_the_first_evaluated_step_over_each_threshold():
    history = [
        {"step": 0, "sink_rate": 0.0},
        {"step": 100, "sink_rate": 0.02},
        {"step": 200, "sink_rate": 0.07},
        {"step": 300, "sink_rate": 0.04},  # a dip does not move it
        {"step": 400, "sink_rate": 0.10},
    ]
    assert emergence(history) == {"sink_rate_0.05": 200, "sink_rate_0.10": 400}
    assert emergence(history[:3]) == {"sink_rate_0.05": 200, "sink_rate_0.10": None}
    assert emergence(list(reversed(history))) == {"sink_rate_0.05": 200, "sink_rate_0.10": 400}
    assert emergence([]) == {"sink_rate_0.05": None, "sink_rate_0.10": None}


def test_checkpoint_loads_back_with_the_same_logits_and_scan(tmp_path):
    import sinklab

    config = TrainConfig(preset="tiny", steps=5, eval_every=5, checkpoint_steps=(5, 2), quant_eval=False,
                         out=str(tmp_path / "run"))  # fmt: skip
    result = train(config)
    paths = {c["step"]: c["path"] for c in result.final["checkpoints"]}
    assert sorted(paths) == [2, 5]
    assert [row["step"] for row in result.history] == [0, 2, 5]
    model, tokenizer = sinklab.load(paths[5])
    ids = metric_ids(config)
    assert ids.shape == (8, 64) and (ids[:, 0] == tokenizer.bos_token_id).all()
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, result.model(input_ids=ids).logits)
    for step in (2, 5):
        loaded, tok = sinklab.load(paths[step])
        scanned = sinklab.scan(
            loaded, tok, ids, eps=0.3, num_texts=None, batch_size=len(ids), keep_pattern=0, progress=False
        )
        row = next(r for r in result.history if r["step"] == step)
        assert scanned.sink_rate == row["sink_rate"]
        assert float(scanned.layer_max_abs.max()) == row["max_activation"]
    assert np.isfinite(result.final["epochs"])
    assert set(result.final["emergence"]) == {"sink_rate_0.05", "sink_rate_0.10"}


def test_time_limit_stops_at_a_step_and_records_the_run_of_the_steps_taken(tmp_path, monkeypatch):
    """--time-limit (a lease that ends): with a constant learning rate the stopped run is exactly the run of the
    steps it took (same history, same weights); checkpoints up to there are kept and the last model is saved too."""
    import time

    import sinklab.remove.train as train_module

    assert not train_module._past(None, 1, torch.device("cpu"))
    assert train_module._past(time.perf_counter() - 1, 1, torch.device("cpu"))
    assert not train_module._past(time.perf_counter() + 60, 1, torch.device("cpu"))
    boundaries = iter(range(1, 100))  # _past is asked once per step boundary after step 0: the 3rd is step 3
    monkeypatch.setattr(train_module, "_past", lambda deadline, world, device: next(boundaries) >= 3)
    kw = dict(preset="tiny", eval_every=2, min_lr_ratio=1.0, quant_eval=False, device="cpu")
    out = tmp_path / "run"
    stopped = train(TrainConfig(**kw, steps=30, time_limit=100.0, checkpoint_steps=(2, 20), out=str(out)))
    assert [row["step"] for row in stopped.history] == [0, 2, 3]
    assert stopped.final["stopped_early"] == {"planned_steps": 30, "time_limit_s": 100.0, "step": 3}
    record = json.loads((out / "train.json").read_text())
    assert record["config"]["steps"] == 3 and record["config"]["time_limit"] is None  # what reproduces it
    assert record["config"]["checkpoint_steps"] == [2, 3]
    assert [c["step"] for c in record["final"]["checkpoints"]] == [2, 3]
    assert (out / "checkpoints" / "step-3" / "model.safetensors").exists()
    assert not (out / "checkpoints" / "step-20").exists()
    monkeypatch.undo()
    asked = train(TrainConfig(**kw, steps=3))
    assert json.dumps(asked.history) == json.dumps(stopped.history)
    assert stopped.final["epochs"] == asked.final["epochs"]  # counted over the steps taken, not the 30 planned
    for a, b in zip(asked.model.parameters(), stopped.model.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(SinklabInputError, match="--time-limit needs a constant learning rate after warmup"):
        train(TrainConfig(preset="tiny", time_limit=10.0))
    with pytest.raises(SinklabInputError, match="--time-limit must be a positive number of seconds"):
        train(TrainConfig(preset="tiny", time_limit=0.0, min_lr_ratio=1.0))
