"""sinklab.data.train_corpus: the pre-training corpus build (offline part), its format, and training on it."""

from __future__ import annotations

import gzip
import itertools
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sinklab.data.train_corpus import (
    BOILERPLATE_DOCS,
    DEBIAN_DOCS,
    DocPackage,
    build_corpus,
    clean_documents,
    debian_documents,
    debian_versions,
    fetch_debian_docs,
    html_to_text,
    info_to_text,
    load_corpus,
    man_to_text,
    pack_corpus,
    source_spans,
    split_document,
)
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


def test_source_spans_say_where_each_source_lies_in_a_split(user_corpus):
    """meta.json counts each source's tokens per split; the spans they give tile the split, and every document in a
    span is that source's (the user documents start with 'Document'; pydoc's topics do not)."""
    path, meta = user_corpus
    tok = load_corpus(path).load_tokenizer()
    for split in ("train", "val"):
        tokens = np.fromfile(path / f"{split}.bin", dtype=np.uint16)
        spans = source_spans(meta, split)
        assert spans[0][1] == 0 and spans[-1][2] == tokens.size
        assert all(a[2] == b[1] for a, b in itertools.pairwise(spans))
        for name, start, end in spans:
            ends = np.flatnonzero(tokens[start:end] == meta["eos_token_id"]) + start
            assert ends[-1] == end - 1  # a span ends with its source's last document
            for doc_start in np.concatenate([[start], ends[:-1] + 1]):
                assert tok.decode(tokens[doc_start : doc_start + 9].tolist()).startswith("Document") == (name == "user")
    assert sum(e - s for _, s, e in source_spans(meta, "val")) == meta["tokens"]["val"]
    old = {**meta, "sources": {k: {"tokens": v["tokens"]} for k, v in meta["sources"].items()}}
    with pytest.raises(SinklabInputError, match="no per-source split counts"):
        source_spans(old, "val")


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
    with pytest.raises(SinklabInputError, match="more than --max-tokens 1,000"):
        build_corpus(tmp_path / "x", packages=[], extra=[docs], tokenizer="byte", heldout=0.25, max_tokens=1000)
    with pytest.raises(SinklabInputError, match="max tokens must be positive"):
        build_corpus(tmp_path / "x", packages=[], tokenizer="byte", max_tokens=0)
    with pytest.raises(SinklabInputError, match="val split is empty"):
        build_corpus(tmp_path / "x", packages=[], tokenizer="byte", heldout=0.01)
    assert not (tmp_path / "x").exists()


def test_build_within_max_tokens(user_corpus, tmp_path):
    path, meta = user_corpus
    total = sum(meta["tokens"].values())
    again = build_corpus(
        tmp_path / "c", packages=[], extra=[path.parent / "docs"], tokenizer="byte", heldout=0.25, max_tokens=total
    )
    assert again["sha256"] == meta["sha256"]


def test_info_to_text_drops_node_headers_and_tag_table():
    info = (
        "This is sink.info, produced by makeinfo.\n\x1f\nFile: sink.info,  Node: Top,  Next: Mass,  Up: (dir)\n\n"
        "Sinks\n*****\n\nThe first token.\n\x1f\nFile: sink.info,  Node: Mass,  Prev: Top\n\nMass goes there.\n"
        "\x1f\nTag Table:\nNode: Top\x7f40\n\x1f\nEnd Tag Table\n"
    )
    assert info_to_text(info) == (
        "This is sink.info, produced by makeinfo.\n\nSinks\n*****\n\nThe first token.\n\nMass goes there."
    )


def test_man_to_text_fills_prose_and_keeps_code_lines():
    roff = (
        '.\\" Copyright nobody\n.TH SINK 7 2024 "sinklab"\n.SH NAME\nsink \\- where attention goes\n'
        ".SH DESCRIPTION\nThe \\fBfirst\\fP token\ncollects \\(lqmass\\(rq; see\n.BR scan (1).\n.PP\n"
        "Second paragraph.\n.nf\nint a;\nint b;\n.fi\n"
    )
    assert man_to_text(roff) == (
        "NAME\n\nsink - where attention goes\n\nDESCRIPTION\n\n"
        'The first token collects "mass"; see scan(1).\n\nSecond paragraph.\n\nint a;\nint b;'
    )


def test_split_document_cuts_long_text_at_blank_lines():
    text = "\n\n".join(f"paragraph {i} " + "x" * 50 for i in range(100))
    assert list(split_document("a", text, chunk_chars=10_000)) == [("a", text)]
    parts = list(split_document("a", text, chunk_chars=1000))
    assert [name for name, _ in parts] == [f"a#{i}" for i in range(len(parts))] and len(parts) > 3
    assert "\n\n".join(part for _, part in parts) == text
    assert all(part.startswith("paragraph") for _, part in parts)


def test_debian_documents_reads_markup_gzip_and_skips(tmp_path, monkeypatch):
    monkeypatch.setenv("SINKLAB_CACHE", str(tmp_path))
    root = tmp_path / "debian-docs" / "fake-doc" / "usr/share/man"
    (root / "man1").mkdir(parents=True)
    page = ".SH NAME\nfake \\- a page " + "of words " * 30 + "\n"
    with gzip.open(root / "man1" / "fake.1.gz", "wt") as f:
        f.write(page)
    (root / "man1" / "index.gz").write_bytes(gzip.compress(b"never read"))
    monkeypatch.setitem(DEBIAN_DOCS, "fake-doc", DocPackage("usr/share/man", (".gz",), "man", skip=("index",)))
    assert list(debian_documents(["fake-doc"])) == [("fake-doc:man1/fake.1.gz", man_to_text(page))]
    with pytest.raises(SinklabInputError, match="unknown documentation package"):
        list(debian_documents(["not-a-doc-package"]))


def test_build_records_each_packages_version_from_its_deb(tmp_path, monkeypatch):
    monkeypatch.setenv("SINKLAB_CACHE", str(tmp_path))
    for package in ("fake-doc", "bare-doc"):
        root = tmp_path / "debian-docs" / package / "usr/share/doc"
        root.mkdir(parents=True)
        for i in range(6):
            (root / f"page{i}.txt").write_text(f"{package} {i}: " + "the first token collects attention. " * 40)
        monkeypatch.setitem(DEBIAN_DOCS, package, DocPackage("usr/share/doc", (".txt",), "text"))
    debs = tmp_path / "debian-docs" / "debs"
    debs.mkdir()
    (debs / "fake-doc_1%3a2.0-1+deb12u3_all.deb").touch()
    assert debian_versions(["fake-doc", "bare-doc"]) == {"fake-doc": "1:2.0-1+deb12u3", "bare-doc": None}
    (debs / "fake-doc_1%3a2.0-1_all.deb").touch()  # two: which one was unpacked is unknown
    assert debian_versions(["fake-doc"]) == {"fake-doc": None}
    (debs / "fake-doc_1%3a2.0-1_all.deb").unlink()
    meta = build_corpus(
        tmp_path / "built", packages=["fake-doc", "bare-doc"], tokenizer="byte", heldout=0.45, fetch=False
    )
    assert meta["sources"]["fake-doc"]["version"] == "1:2.0-1+deb12u3"
    assert meta["sources"]["bare-doc"]["version"] is None and meta["sources"]["bare-doc"]["documents"] == 6
    assert "version" not in meta["sources"]["pydoc_data.topics"]


def test_clean_documents_drops_boilerplate_short_pages_and_duplicates():
    nav = "Methods inherited from class java.lang.Object"
    body = [f"page {i}: " + "real words about attention " * 10 for i in range(BOILERPLATE_DOCS + 1)]
    docs = [(f"api:{i}", f"{nav}\n{text}\n\n\n{nav}\nend") for i, text in enumerate(body)]
    docs += [("api:dup", docs[0][1]), ("other:short", "tiny page"), ("other:dup", f"  {body[1]}\nend ")]
    kept, stats = clean_documents(docs)
    assert [s for s, _ in kept] == [f"api:{i}" for i in range(len(body))]
    assert kept[0][1] == f"{body[0]}\n\nend"
    assert stats["api"] == {
        "dropped_short": 0,
        "dropped_duplicate": 1,
        "boilerplate_chars": 2 * (len(nav) + 1) * (len(body) + 1),
    }
    assert stats["other"]["dropped_short"] == 1 and stats["other"]["dropped_duplicate"] == 1


def test_docs_packages_are_well_formed():
    for name, spec in DEBIAN_DOCS.items():
        assert spec.markup in ("text", "html", "info", "man"), name
        assert not spec.root.startswith("/") and spec.suffixes, name


SHIP_SH = Path(__file__).resolve().parents[2] / "benchmarks" / "ship.sh"


def _install_corpus(ship: Path, dest: Path) -> subprocess.CompletedProcess:
    script = f'source "{SHIP_SH}"; SHIP="{ship}"; install_corpus "{dest}"'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True)


@pytest.mark.skipif(not all(map(shutil.which, ("bash", "xz", "tar", "sha256sum"))), reason="needs bash, xz, tar")
def test_pack_and_install_corpus_round_trip(user_corpus, tmp_path):
    path, meta = user_corpus
    pack = pack_corpus(path, tmp_path / "pack", part_mb=0.01)
    assert pack["parts"] == [f"corpus.part{i:02d}" for i in range(len(pack["parts"]))] and len(pack["parts"]) > 1
    assert all((tmp_path / "pack" / p).stat().st_size <= 0.01 * 2**20 for p in pack["parts"])
    assert pack_corpus(path, tmp_path / "again", part_mb=0.01)["sha256"] == pack["sha256"]  # deterministic
    done = _install_corpus(tmp_path / "pack", tmp_path / "corpus")
    assert done.returncode == 0, done.stderr
    files = sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "corpus") for p in (tmp_path / "corpus").rglob("*") if p.is_file())
    assert all((path / f).read_bytes() == (tmp_path / "corpus" / f).read_bytes() for f in files)
    assert load_corpus(tmp_path / "corpus").train.size == meta["tokens"]["train"]

    part = tmp_path / "pack" / pack["parts"][1]
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    bad = _install_corpus(tmp_path / "pack", tmp_path / "bad")
    assert bad.returncode == 1 and not (tmp_path / "bad").exists()
    assert "corpus.part01: FAILED" in bad.stdout + bad.stderr
    assert "install_corpus: a part in" in bad.stderr and "missing or corrupted" in bad.stderr


def test_pack_errors(tmp_path):
    with pytest.raises(SinklabInputError, match="not a built corpus"):
        pack_corpus(tmp_path, tmp_path / "pack")
