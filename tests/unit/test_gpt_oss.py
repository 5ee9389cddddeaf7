"""Learned sink logits (gpt-oss): the scan equals eager `output_attentions` with the sink slot included, and the slot's
mass is a column of its own in metrics.json, heads.csv, the terminal table and the report."""

import csv
import json

import torch
from eager_reference import eager_stats
from typer.testing import CliRunner

import sinklab
from sinklab.cli import app
from sinklab.models.tiny import tiny_arch
from sinklab.testing import assert_close

TEXTS = ["Learned sinks take a share of every row. " * 3, "gpt-oss adds one logit per head."]


def test_scan_equals_eager_with_the_sink_slot():
    """Two sequences of unequal length in one left-padded batch; eager gpt-oss drops the sink column from its
    weights, so a row's slot mass is 1 - its sum over real keys (the sinks are -2, 0, 2, 4 per head)."""
    model, tok = tiny_arch("gpt_oss")
    tok.padding_side = "left"
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    seqs = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
    result = sinklab.scan(model, tok, seqs, batch_size=2, keep_pattern=0, progress=False)
    reference = eager_stats(model, ids, mask, is_decoder=True)
    assert model.config._attn_implementation == "eager"  # gpt-oss has no SDPA path
    with torch.no_grad():
        out = model.base_model(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0), output_attentions=True
        )
    valid = mask.bool()
    f32 = torch.float32
    alpha = torch.stack([a for _, a, _ in reference]).mean(1)  # [L, H] over sequences
    entropy = torch.stack([e for _, _, e in reference]).mean(1)  # over real keys, as the statistics define it
    assert_close(result.first_token_mass, alpha, f32, "alpha_1")
    assert_close(result.entropy, entropy, f32, "entropy")
    slot = []
    for A in out.attentions:  # [B, H, T, S] without the sink column
        row_slot = (1.0 - A.double().sum(-1)) * valid[:, None, :]  # [B, H, T]
        slot.append((row_slot.sum(-1) / valid.sum(-1, keepdim=True)).mean(0))
    slot = torch.stack(slot)  # [L, H]
    assert_close(result.sink_slot_mass, slot, f32, "sink-slot mass")
    assert (slot[:, 1:] > slot[:, :-1]).all()  # larger sink logit, more mass: -2 < 0 < 2 < 4


def test_slot_column_in_every_output(tmp_path):
    model, tok = tiny_arch("gpt_oss")
    model.save_pretrained(tmp_path / "gpt-oss")
    tok.save_pretrained(tmp_path / "gpt-oss")
    out = tmp_path / "out"
    args = ["scan", "--model", str(tmp_path / "gpt-oss"), "--max-tokens", "32", "--num-texts", "2", "--out", str(out)]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert "learned sink slot" in run.output and "sink_slot_mass in heads.csv" in run.output
    metrics = json.loads((out / "metrics.json").read_text())
    slot = torch.tensor(metrics["sink_slot_mass"])
    assert slot.shape == (2, 4) and float(slot.min()) > 0.01
    with open(out / "heads.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["sink_slot_mass"]) for r in rows] == [x for row in metrics["sink_slot_mass"] for x in row]
    page = (out / "report.html").read_text()
    assert "learned sink slot" in page and "learned sink slot&#x27;s mass per head" in page
    assert (out / "sink_slot_heatmap.png").exists()


def test_no_slot_column_without_learned_sinks(tmp_path):
    model, tok = tiny_arch("llama")
    result = sinklab.scan(model, tok, TEXTS[:1], max_tokens=32, progress=False)
    assert result.sink_slot_mass is None and "sink_slot_mass" not in result.to_dict()
    result.save(tmp_path)
    assert "sink_slot_mass" not in (tmp_path / "heads.csv").read_text().splitlines()[0]
