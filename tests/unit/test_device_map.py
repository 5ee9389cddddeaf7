"""Issue 19 on the CPU: a model placed by accelerate (``sinklab.load(..., device_map=...)``, ``sinklab scan
--device-map``) scans to the same numbers as the model loaded plainly, including layers offloaded to disk (which
runs accelerate's AlignDevicesHook path: weights on 'meta' outside the forward); bad maps are refused in one line.
The split over real devices (cuda:0 + cpu) is tests/gpu/test_device_map_gpu.py."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import sinklab
from sinklab.cli import app
from sinklab.errors import SinklabInputError
from sinklab.models import input_device, load, parse_device_map, parse_max_memory, tiny_llama
from sinklab.testing import assert_refused

LAYERS = 4
ARRAYS = (
    "first_token_mass", "entropy", "top_other_mass", "layer_max_abs", "layer_median_abs", "layer_kurtosis", "dim_max",
    "pattern",
)  # fmt: skip
METRIC_KEYS = (
    "num_layers", "num_heads", "tokens", "sink_rate", "first_token_mass", "sinks", "massive_activations", "entropy",
    "layer_max_abs", "layer_median_abs", "layer_kurtosis",
)  # fmt: skip


def disk_map(offloaded=(1, 2)) -> dict:
    """Embedding, layers 0 and 3, norm and head on the CPU; the ``offloaded`` layers on disk."""
    layers = {f"model.layers.{i}": "disk" if i in offloaded else "cpu" for i in range(LAYERS)}
    return {"model.embed_tokens": "cpu", **layers, "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-dir")
    model, tok = tiny_llama(num_hidden_layers=LAYERS)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# two sequences of different lengths in one batch: left padding, so the padding mask travels between layers
SEQUENCES = [list(range(10, 58)), list(range(30, 66))]


def run_scan(model, tok):
    return sinklab.scan(model, tok, SEQUENCES, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def reference(model_dir):
    return run_scan(*load(str(model_dir)))


def assert_same_scan(result, reference, tol=1e-6):
    assert result.sink_rate == pytest.approx(reference.sink_rate, abs=tol)
    for name in ARRAYS:
        got, want = getattr(result, name), getattr(reference, name)
        assert got.shape == want.shape, name
        assert torch.allclose(got.double(), want.double(), rtol=0, atol=tol, equal_nan=True), name
    assert [(s["position"], s["token"], s["heads"], s["layers"]) for s in result.sinks] == [
        (s["position"], s["token"], s["heads"], s["layers"]) for s in reference.sinks
    ]
    for got, want in zip(result.sinks, reference.sinks, strict=True):
        assert got["mass"] == pytest.approx(want["mass"], abs=tol)
    assert len(result.massive_activations) == len(reference.massive_activations)
    for got, want in zip(result.massive_activations, reference.massive_activations, strict=True):
        assert (got["layer"], got["position"], got["dim"]) == (want["layer"], want["position"], want["dim"])
        assert got["value"] == pytest.approx(want["value"], abs=tol)


@pytest.mark.parametrize("device_map", ["cpu", {"": "cpu"}, "auto", "sequential"], ids=str)
def test_device_map_on_one_device_scans_the_same(model_dir, reference, device_map):
    model, tok = load(str(model_dir), device_map=device_map)
    assert input_device(model) == torch.device("cpu")
    assert_same_scan(run_scan(model, tok), reference)


def test_layers_offloaded_to_disk_scan_the_same(model_dir, reference, tmp_path):
    model, tok = load(str(model_dir), device_map=disk_map(), offload_folder=tmp_path / "offload")
    assert model.hf_device_map["model.layers.1"] == "disk"
    assert {p.device.type for n, p in model.named_parameters() if ".layers.1." in n} == {"meta"}  # hooks load them
    assert input_device(model) == torch.device("cpu")
    result = run_scan(model, tok)
    assert_same_scan(result, reference)
    prov = result.provenance["model"]
    assert prov["device_map"]["model.layers.2"] == "disk" and prov["device"] == "cpu,disk"


def test_offloaded_embedding_inputs_go_to_its_execution_device(model_dir, reference, tmp_path):
    """Embedding on disk: its weight is 'meta' outside the forward; inputs go to accelerate's execution device."""
    dm = {**disk_map(offloaded=(0,)), "model.embed_tokens": "disk"}
    model, tok = load(str(model_dir), device_map=dm, offload_folder=tmp_path / "offload")
    assert model.get_input_embeddings().weight.device.type == "meta"
    assert input_device(model) == torch.device("cpu")
    assert_same_scan(run_scan(model, tok), reference)


def test_cli_device_map_writes_the_same_numbers(model_dir, tmp_path):
    runner = CliRunner()
    args = ["scan", "--model", str(model_dir), "--max-tokens", "40", "--num-texts", "2", "--batch-size", "2"]
    outs = {}
    for name, extra in {"plain": [], "auto": ["--device-map", "auto"]}.items():
        outs[name] = tmp_path / name
        result = runner.invoke(app, [*args, *extra, "--out", str(outs[name])])
        assert result.exit_code == 0, result.output
    plain, auto = (json.loads((outs[n] / "metrics.json").read_text()) for n in ("plain", "auto"))
    for key in METRIC_KEYS:
        assert auto[key] == plain[key], key


def test_cli_disk_offload(model_dir, tmp_path):
    out = tmp_path / "out"
    args = ["scan", "--model", str(model_dir), "--max-tokens", "40", "--num-texts", "2", "--out", str(out)]
    result = CliRunner().invoke(
        app, [*args, "--device-map", json.dumps(disk_map()), "--offload-folder", str(tmp_path / "off")]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["provenance"]["model"]["device_map"]["model.layers.1"] == "disk"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device-map", "everywhere"], "unknown device_map 'everywhere'; accepted: auto, balanced"),
        (["--device-map", "{not json"], "device_map is not valid JSON"),
        (["--device-map", '{"model.layers.0": "tpu"}'], "device_map['model.layers.0']"),
        (["--device-map", '{"model.layers.0": "disk"}'], "give offload_folder (--offload-folder DIR)"),
        (["--device-map", "cpu", "--max-memory", "cpu=1GiB"], "max_memory bounds the automatic maps"),
        (["--device-map", "auto", "--max-memory", "cpu"], "is not KEY=SIZE"),
        (["--device-map", "auto", "--max-memory", "cpu=lots"], "max_memory size 'lots'"),
        (["--device-map", "auto", "--max-memory", "tpu=1GiB"], "max_memory key 'tpu'"),
        (["--max-memory", "cpu=1GiB"], "need a device_map"),
        (["--device-map", "auto", "--device", "cpu"], "give --device or --device-map, not both"),
    ],
)
def test_cli_bad_device_map_is_refused(model_dir, tmp_path, extra, message):
    args = ["scan", "--model", str(model_dir), "--max-tokens", "40", "--num-texts", "2", "--out", str(tmp_path / "o")]
    assert_refused([*args, *extra], message, tmp_path)


def test_cli_unknown_module_name_is_refused(model_dir, tmp_path):
    args = ["scan", "--model", str(model_dir), "--max-tokens", "40", "--num-texts", "2", "--out", str(tmp_path / "o")]
    assert_refused([*args, "--device-map", '{"model.decoder": "cpu"}'], "device_map names no module", tmp_path)


def test_python_api_refusals(model_dir):
    with pytest.raises(SinklabInputError, match="give device or device_map, not both"):
        load(str(model_dir), device="cpu", device_map="auto")
    with pytest.raises(SinklabInputError, match="tiny-llama is built in memory"):
        load("tiny-llama", device_map="auto")
    if not torch.cuda.is_available():
        with pytest.raises(SinklabInputError, match="needs CUDA"):
            parse_device_map({"model.layers.0": 0})
        with pytest.raises(SinklabInputError, match="which this machine lacks"):
            parse_max_memory("0=20GiB,cpu=64GiB")


def test_parsers():
    assert parse_device_map(" auto ") == "auto"
    assert parse_device_map('{"": "cpu", "lm_head": "disk"}') == {"": "cpu", "lm_head": "disk"}
    assert parse_device_map(torch.device("cpu")) == "cpu"
    assert parse_max_memory("cpu=1GiB") == {"cpu": 1 << 30}
    assert parse_max_memory({"cpu": 1000}) == {"cpu": 1000}
    if torch.cuda.is_available():
        assert parse_device_map("cuda:0") == 0 and parse_device_map({"x": "cuda"}) == {"x": 0}
        assert parse_max_memory("0=2GiB,cpu=1GiB") == {0: 2 << 30, "cpu": 1 << 30}
