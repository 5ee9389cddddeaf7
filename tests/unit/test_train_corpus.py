"""sinklab.data.train_corpus: the pre-training corpus build (offline part), its format, and training on it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sinklab.data.train_corpus import build_corpus, fetch_debian_docs, html_to_text, load_corpus
from sinklab.errors import SinklabInputError


def test_html_to_text_keeps_prose_and_drops_code_chrome():
    page = (
        "<html><head><title>T</title><style>p {color: red}</style></head><body><nav>Home | Next</nav>"
        "<h1>Attention</h1><p>Sinks   take &amp; keep mass.</p><script>var x = 1;</script><p>Second.</p></body></html>"
    )
    assert html_to_text(page) == "Attention\n\nSinks take & keep mass.\n\nSecond."


@pytest.fixture(scope="module")
def user_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = root / "docs"
    docs.mkdir()
    for i in range(24):
        (docs / f"doc{i:02d}.txt").write_text(f"Document {i}. " + "The first token collects attention. " * 40)
    meta = build_corpus(root / "built", packages=[], extra=[docs], tokenizer="byte", heldout=0.25)
    return root / "built", meta


def test_build_writes_uint16_splits_meta_and_tokenizer(user_corpus):
    path, meta = user_corpus
    assert json.loads((path / "meta.json").read_text()) == meta
    train, val = (np.fromfile(path / f"{s}.bin", dtype=np.uint16) for s in ("train", "val"))
    assert meta["tokens"] == {"train": train.size, "val": val.size}
    assert meta["sources"]["user"]["documents"] == 24 and meta["sources"]["pydoc_data.topics"]["documents"] == 1
    assert 0 < val.size < train.size
    assert (train == meta["eos_token_id"]).sum() + (val == meta["eos_token_id"]).sum() == 25  # one per document
    corpus = load_corpus(path)
    assert np.array_equal(corpus.train, train) and corpus.vocab_size == 263
    tok = corpus.load_tokenizer()
    assert tok.decode(corpus.val[:9].tolist()).startswith("Document")


def test_build_is_deterministic(user_corpus, tmp_path):
    path, meta = user_corpus
    docs = path.parent / "docs"
    again = build_corpus(tmp_path / "again", packages=[], extra=[docs], tokenizer="byte", heldout=0.25)
    assert again["sha256"] == meta["sha256"]


def test_training_on_a_built_corpus(user_corpus):
    from sinklab.remove.train import TrainConfig, train

    result = train(TrainConfig(preset="tiny", corpus=str(user_corpus[0]), steps=3, eval_every=3, quant_eval=False))
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    with pytest.raises(SinklabInputError, match="corpus too small"):
        train(TrainConfig(preset="tiny", corpus=str(user_corpus[0]), steps=10_000))


def test_build_errors(user_corpus, tmp_path):
    docs = user_corpus[0].parent / "docs"
    with pytest.raises(SinklabInputError, match="unknown documentation package"):
        fetch_debian_docs(["not-a-doc-package"])
    with pytest.raises(SinklabInputError, match="unknown tokenizer"):
        build_corpus(tmp_path / "x", packages=[], tokenizer="gpt9")
    with pytest.raises(SinklabInputError, match="held-out fraction"):
        build_corpus(tmp_path / "x", packages=[], tokenizer="byte", heldout=0.9)
    with pytest.raises(SinklabInputError, match="MiB travels"):
        build_corpus(tmp_path / "x", packages=[], extra=[docs], tokenizer="byte", heldout=0.25, max_bytes=1000)
    with pytest.raises(SinklabInputError, match="val split is empty"):
        build_corpus(tmp_path / "x", packages=[], tokenizer="byte", heldout=0.01)
    assert not (tmp_path / "x").exists()
