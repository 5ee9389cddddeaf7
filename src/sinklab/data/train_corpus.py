"""Token corpora for pre-training studies: real English prose, tokenized once to flat uint16 files.

Layout of a built corpus directory::

    train.bin  val.bin   uint16 token ids, documents joined by the tokenizer's EOS id
    meta.json            tokenizer, vocab size, BOS/EOS ids, token counts, sources with their sizes
    tokenizer/           the tokenizer itself (``save_pretrained``), so the corpus is usable anywhere

The text is the English documentation that Debian ships (``DEBIAN_DOCS``: language and library references, manuals,
a dictionary), fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` under
``$SINKLAB_CACHE/debian-docs`` (no root, nothing installed), Python's ``pydoc_data`` topics, and any user files.
``SMALL_DOCS`` is the default (about 10M tokens); every package gives over 100M unique tokens. Markup is
removed (HTML, info, man), lines repeated across many documents (navigation, inherited-member lists) are dropped,
then near-empty pages and exact duplicates. Whole documents are held out (by a hash of their source path), so
validation text is never seen in training. :func:`pack_corpus` splits a built corpus into compressed parts that
travel to a GPU machine one call at a time (``install_corpus`` in ``benchmarks/ship.sh`` joins them there).
"""

from __future__ import annotations

import gzip
import hashlib
import html.parser
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from sinklab.errors import SinklabInputError


@dataclass(frozen=True)
class DocPackage:
    """Where a Debian package keeps its documentation and how to read it."""

    root: str  # directory inside the package
    suffixes: tuple[str, ...]  # file name endings read there (``.gz``/``.dz`` files are decompressed first)
    markup: str = "text"  # a key of EXTRACTORS
    skip: tuple[str, ...] = ()  # path fragments never read: generated indexes, usage lists, source listings


_HTML = (".html",)
_SPHINX_SKIP = ("genindex", "modindex", "search.html", "_static/", "_sources/")
DEBIAN_DOCS: dict[str, DocPackage] = {
    "python3.11-doc": DocPackage("usr/share/doc/python3.11/html/_sources", (".txt",)),
    "perl-doc": DocPackage("usr/share/perl/5.36.0/pod", (".pod",)),
    "git-doc": DocPackage("usr/share/doc/git-doc", (".txt",)),
    "postgresql-doc-15": DocPackage("usr/share/doc/postgresql-doc-15/html", _HTML, "html"),
    "debian-reference-en": DocPackage("usr/share/debian-reference", (".en.html",), "html"),
    "python-django-doc": DocPackage("usr/share/doc/python-django-doc/html", _HTML, "html", _SPHINX_SKIP),
    # the large build adds these (bookworm, all in main)
    "rust-doc": DocPackage("usr/share/doc/rust-doc/html", _HTML, "html", ("src/",)),  # src/: line-numbered listings
    "openjdk-17-doc": DocPackage(
        "usr/share/doc/openjdk-17-jre-headless/api", _HTML, "html", ("class-use/", "index-files/", "-tree.html")
    ),
    "scala-doc": DocPackage("usr/share/doc/scala-2.11/api", _HTML, "html"),
    "ghc-doc": DocPackage("usr/share/doc/ghc-doc/html", _HTML, "html", ("/src/",)),
    "erlang-doc": DocPackage("usr/share/doc/erlang-doc", _HTML, "html"),
    "libstdc++-12-doc": DocPackage("usr/share/doc/gcc-12-base/libstdc++", _HTML, "html", ("_source.html",)),
    "cppreference-doc-en-html": DocPackage("usr/share/cppreference/doc/html/en", _HTML, "html"),
    "libboost1.74-doc": DocPackage("usr/share/doc/libboost1.74-doc", _HTML, "html"),
    "qtbase5-doc-html": DocPackage("usr/share/qt5/doc", _HTML, "html"),
    "qtdeclarative5-doc-html": DocPackage("usr/share/qt5/doc", _HTML, "html"),
    "qttools5-doc-html": DocPackage("usr/share/qt5/doc", _HTML, "html"),
    "libglib2.0-doc": DocPackage("usr/share/gtk-doc/html", _HTML, "html"),
    "libgtk-3-doc": DocPackage("usr/share/gtk-doc/html", _HTML, "html"),
    "libgtk-4-doc": DocPackage("usr/share/doc/libgtk-4-doc", _HTML, "html"),
    "linux-doc-6.1": DocPackage("usr/share/doc/linux-doc-6.1/html/_sources", (".txt",)),
    "llvm-15-doc": DocPackage("usr/share/doc/llvm-15-doc/html/_sources", (".txt",)),
    "clang-15-doc": DocPackage("usr/share/doc/clang-15/html/_sources", (".txt",)),
    "racket-doc": DocPackage("usr/share/doc/racket", _HTML, "html"),
    "nodejs-doc": DocPackage("usr/share/doc/nodejs/api", _HTML, "html"),
    "python-pandas-doc": DocPackage("usr/share/doc/python-pandas-doc/html", _HTML, "html", _SPHINX_SKIP),
    "python-scipy-doc": DocPackage("usr/share/doc/python-scipy-doc/html", _HTML, "html", _SPHINX_SKIP),
    "python-sympy-doc": DocPackage("usr/share/doc/python-sympy-doc/html", _HTML, "html", _SPHINX_SKIP),
    "python-astropy-doc": DocPackage("usr/share/doc/python-astropy-doc/html", _HTML, "html", _SPHINX_SKIP),
    "python-sklearn-doc": DocPackage("usr/share/doc/python-sklearn-doc/html", _HTML, "html", _SPHINX_SKIP),
    "python-statsmodels-doc": DocPackage("usr/share/doc/python-statsmodels-doc/html", _HTML, "html", _SPHINX_SKIP),
    "python-dask-doc": DocPackage("usr/share/doc/python-dask-doc/html", _HTML, "html", _SPHINX_SKIP),
    "python-sqlalchemy-doc": DocPackage("usr/share/doc/python-sqlalchemy-doc/html", _HTML, "html", _SPHINX_SKIP),
    "sphinx-doc": DocPackage("usr/share/doc/sphinx-doc/html", _HTML, "html", _SPHINX_SKIP),
    "docutils-doc": DocPackage("usr/share/doc/docutils-doc/docs", (".txt",)),
    "cmake-doc": DocPackage("usr/share/doc/cmake-data/html", _HTML, "html", _SPHINX_SKIP),
    "sqlite3-doc": DocPackage("usr/share/doc/sqlite3", _HTML, "html"),
    "octave-doc": DocPackage("usr/share/doc/octave", _HTML, "html"),
    "maxima-doc": DocPackage("usr/share/doc/maxima-doc/html", _HTML, "html"),
    "gap-doc": DocPackage("usr/share/gap/doc", _HTML, "html"),
    "apache2-doc": DocPackage("usr/share/doc/apache2-doc/manual/en", _HTML, "html"),
    "libreoffice-help-en-us": DocPackage("usr/share/libreoffice/help/en-US", _HTML, "html"),
    "gimp-help-en": DocPackage("usr/share/gimp/2.0/help/en", _HTML, "html"),
    "kicad-doc-en": DocPackage("usr/share/doc/kicad/help/en", _HTML, "html"),
    "debian-handbook": DocPackage("usr/share/doc/debian-handbook/html/en-US", _HTML, "html"),
    "debian-policy": DocPackage("usr/share/doc/debian-policy/policy.html/_sources", (".txt",)),
    "developers-reference": DocPackage("usr/share/developers-reference/_sources", (".txt",)),
    "vim-runtime": DocPackage("usr/share/vim/vim90/doc", (".txt",)),
    "emacs-common": DocPackage("usr/share/info", (".info.gz",), "info"),
    "autoconf-doc": DocPackage("usr/share/info", (".info.gz",), "info"),
    "manpages": DocPackage("usr/share/man", (".gz",), "man"),
    "manpages-dev": DocPackage("usr/share/man", (".gz",), "man"),
    "tcl8.6-doc": DocPackage("usr/share/man", (".gz",), "man"),
    "dict-gcide": DocPackage("usr/share/dictd", ("gcide.dict.dz",)),
}
SMALL_DOCS = tuple(list(DEBIAN_DOCS)[:6])  # the default build: about 10M tokens
TOKENIZERS = ("smollm2-135m", "byte")
MIN_CHARS = 200  # a document shorter than this after cleaning is a near-empty page
CHUNK_CHARS = 2**20  # longer documents (a dictionary, a whole manual) are cut at paragraphs into parts this long
BOILERPLATE_DOCS = 64  # a line of at least BOILERPLATE_CHARS found in more documents than this is boilerplate
BOILERPLATE_CHARS = 20


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


_INFO_HEADER = re.compile(r"^File: .*?, +Node: .*$", re.M)
_ROFF_FONT = re.compile(r"\\f(\[[^]]*\]|\(..|.)|\\s[-+]?\d+")
_ROFF_GLYPH = re.compile(r"\\(\(..|\[[^]]*\])")
_ROFF_STRING = re.compile(r"\\\*(\(..|\[[^]]*\]|.)")
_ROFF_GLYPHS = {
    "em": "--",
    "en": "-",
    "hy": "-",
    "aq": "'",
    "dq": '"',
    "lq": '"',
    "rq": '"',
    "oq": "'",
    "cq": "'",
    "bu": "*",
    "co": "(c)",
    "mu": "x",
    "ga": "`",
    "ti": "~",
    "ha": "^",
    "rs": "\\",
    "<=": "<=",
    ">=": ">=",
}
_ROFF_ESCAPES = {"\\-": "-", "\\e": "\\", "\\ ": " ", "\\~": " ", "\\&": "", "\\|": "", "\\^": "", "\\c": "", "\\%": ""}
_ROFF_HEADINGS = frozenset({"SH", "SS", "Sh", "IP"})  # .IP "tag" indent: the tag alone
_ROFF_TEXT_MACROS = frozenset({"B", "I", "SM", "SB", "Nm", "Nd"})
_ROFF_FILL = {"nf": False, "EX": False, "fi": True, "EE": True}
_ROFF_ALTERNATING = frozenset({"BR", "RB", "BI", "IB", "IR", "RI"})


def _squeeze_blank_lines(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    kept, blank = [], False
    for line in lines:
        if line or not blank:
            kept.append(line)
        blank = not line
    return "\n".join(kept).strip()


def html_to_text(page: str) -> str:
    """Plain text of an HTML page, runs of blank lines squeezed to one."""
    parser = _HTMLText()
    parser.feed(page)
    return _squeeze_blank_lines("".join(parser.parts))


def info_to_text(info: str) -> str:
    """Plain text of a GNU info file: node headers and the tag table dropped, nodes become paragraphs."""
    nodes = (_INFO_HEADER.sub("", node).strip() for node in info.split("\x1f"))
    return "\n\n".join(
        n for n in nodes if n and not n.startswith(("Tag Table:", "End Tag Table", "Indirect:", "Local Variables"))
    )


def _roff_inline(line: str) -> str:
    line = _ROFF_FONT.sub("", line)
    line = _ROFF_STRING.sub("", line)
    line = _ROFF_GLYPH.sub(lambda m: _ROFF_GLYPHS.get(m.group(1).strip("([]"), ""), line)
    for escape, plain in _ROFF_ESCAPES.items():
        line = line.replace(escape, plain)
    return line.replace("\\\\", "\\")


def man_to_text(roff: str) -> str:
    """Plain text of a man page's roff source: comments and layout requests dropped, font escapes removed, the words
    of text macros (``.B``, ``.BR`` ...) kept, lines filled into paragraphs outside ``.nf``/``.EX`` blocks, headings
    on lines of their own; not a typesetter, good enough for prose."""
    lines: list[str] = []
    fill = True
    for line in roff.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith((".", "'")):
            name, _, args = line[1:].strip().partition(" ")
            words = [w.strip('"') for w in re.findall(r'"[^"]*"|\S+', args)]
            fill = _ROFF_FILL.get(name, fill)
            if name in _ROFF_HEADINGS and words:
                lines += ["", _roff_inline(" ".join(words[:1] if name == "IP" else words)), ""]
                continue
            if name in _ROFF_TEXT_MACROS:
                line = " ".join(words)
            elif name in _ROFF_ALTERNATING:
                line = "".join(words)
            else:  # .PP, .sp, .br, .TP, .RS ...: a paragraph or layout break
                lines.append("")
                continue
        text = _roff_inline(line)
        if fill and lines and lines[-1] and text:
            lines[-1] += " " + text
        else:
            lines.append(text)
    return _squeeze_blank_lines("\n".join(lines))


EXTRACTORS: dict[str, Callable[[str], str]] = {
    "text": str.strip,
    "html": html_to_text,
    "info": info_to_text,
    "man": man_to_text,
}


def _docs_root() -> Path:
    return Path(os.environ.get("SINKLAB_CACHE", Path.home() / ".cache" / "sinklab")) / "debian-docs"


def _check_packages(packages: Sequence[str]) -> None:
    unknown = [p for p in packages if p not in DEBIAN_DOCS]
    if unknown:
        raise SinklabInputError(f"unknown documentation package(s) {unknown}; accepted: {', '.join(DEBIAN_DOCS)}")


def fetch_debian_docs(packages: Sequence[str]) -> None:
    """``apt-get download`` each package not yet unpacked and ``dpkg-deb -x`` it into the cache (no root)."""
    _check_packages(packages)
    missing = [p for p in packages if not (_docs_root() / p / DEBIAN_DOCS[p].root).is_dir()]
    if not missing:
        return
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise SinklabInputError(f"{', '.join(missing)} not fetched and no apt-get/dpkg-deb here; pass --no-debian")
    download = _docs_root() / "debs"
    download.mkdir(parents=True, exist_ok=True)
    for package in missing:  # one .deb per package: the one unpacked below
        for stale in download.glob(f"{package}_*.deb"):
            stale.unlink()
    subprocess.run(["apt-get", "download", "-q", *missing], check=True, cwd=download, stdin=subprocess.DEVNULL)
    for package in missing:
        subprocess.run(["dpkg-deb", "-x", str(_deb_file(package)), str(_docs_root() / package)], check=True)


def _deb_file(package: str) -> Path | None:
    """The package's downloaded ``.deb``, or None when there is none or several (which one was unpacked is unknown:
    file names do not sort as Debian versions do)."""
    debs = list((_docs_root() / "debs").glob(f"{package}_*.deb"))
    return debs[0] if len(debs) == 1 else None


def debian_versions(packages: Sequence[str]) -> dict[str, str | None]:
    """Each package's version, from the ``.deb`` that :func:`fetch_debian_docs` unpacked (``package_VERSION_all.deb``,
    the epoch's ``:`` written ``%3a``); None where the cache holds the unpacked files but not one ``.deb``. Debian's
    point and security updates change documentation packages, so a corpus records what it was built from."""
    debs = {package: _deb_file(package) for package in packages}
    return {p: deb and unquote(deb.name.removeprefix(f"{p}_").rsplit("_", 1)[0]) for p, deb in debs.items()}


def read_document(path: Path, markup: str = "text") -> str:
    """The plain text of one documentation file (gzip/dictzip files decompressed first)."""
    if path.suffix in (".gz", ".dz"):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            raw = f.read()
    else:
        raw = path.read_text(encoding="utf-8", errors="replace")
    return EXTRACTORS[markup](raw)


def split_document(name: str, text: str, chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[str, str]]:
    """``(name, text)`` as it is, or cut at blank lines into parts of about ``chunk_chars`` named ``name#i``."""
    if len(text) <= chunk_chars:
        yield name, text
        return
    start, part = 0, 0
    while start < len(text):
        end = text.find("\n\n", start + chunk_chars)
        end = len(text) if end < 0 else end
        yield f"{name}#{part}", text[start:end].strip()
        start, part = end, part + 1


def debian_documents(packages: Sequence[str]) -> Iterator[tuple[str, str]]:
    """``(source name, text)`` for every document of the fetched packages, in sorted path order."""
    _check_packages(packages)
    for package in packages:
        spec = DEBIAN_DOCS[package]
        root = _docs_root() / package / spec.root
        for path in sorted(root.rglob("*")):
            rel = str(path.relative_to(root))
            if not path.is_file() or not path.name.endswith(spec.suffixes) or any(s in rel for s in spec.skip):
                continue
            yield from split_document(f"{package}:{rel}", read_document(path, spec.markup))


def clean_documents(
    documents: Iterable[tuple[str, str]], min_chars: int = MIN_CHARS
) -> tuple[list[tuple[str, str]], dict[str, dict[str, int]]]:
    """Drop boilerplate lines, then near-empty documents and exact duplicates; return the rest and, per source,
    ``{"dropped_short", "dropped_duplicate", "boilerplate_chars"}``.

    A line is boilerplate when it has at least ``BOILERPLATE_CHARS`` characters and appears in more than
    ``BOILERPLATE_DOCS`` documents (navigation bars, "Methods inherited from class Object", licence footers);
    duplicates are found by a hash of the whitespace-normalized text, and the first in order is kept.
    """
    documents = list(documents)
    seen_in: Counter[str] = Counter()
    for _, text in documents:
        seen_in.update({line.strip() for line in text.splitlines() if len(line.strip()) >= BOILERPLATE_CHARS})
    boilerplate = {line for line, n in seen_in.items() if n > BOILERPLATE_DOCS}
    kept, hashes, stats = [], set(), {}
    for source, text in documents:
        entry = stats.setdefault(
            source.split(":")[0], {"dropped_short": 0, "dropped_duplicate": 0, "boilerplate_chars": 0}
        )
        if boilerplate:
            cleaned = "\n".join(line for line in text.splitlines() if line.strip() not in boilerplate)
            entry["boilerplate_chars"] += len(text) - len(cleaned)
            text = re.sub(r"\n\s*\n(\s*\n)+", "\n\n", cleaned).strip()
        digest = hashlib.sha1(" ".join(text.split()).encode()).digest()
        if len(text) < min_chars:
            entry["dropped_short"] += 1
        elif digest in hashes:
            entry["dropped_duplicate"] += 1
        else:
            hashes.add(digest)
            kept.append((source, text))
    return kept, stats


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
    packages: Sequence[str] = SMALL_DOCS,
    extra: Sequence[str | Path] = (),
    tokenizer: str = "smollm2-135m",
    heldout: float = 0.02,
    fetch: bool = True,
    max_tokens: int | None = None,
) -> dict:
    """Tokenize documentation packages + pydoc topics + user files into ``out_dir`` and return its meta.json.

    Deterministic: documents come in sorted order, held-out documents are picked by a hash of their path.
    ``max_tokens`` refuses a corpus (train + val) larger than that, before anything is written.
    """
    from rich.progress import Progress

    from sinklab.data.corpus import embedded_corpus, read_texts

    if not 0 < heldout < 0.5:
        raise SinklabInputError(f"held-out fraction must be in (0, 0.5), got {heldout}")
    if max_tokens is not None and max_tokens <= 0:
        raise SinklabInputError(f"max tokens must be positive, got {max_tokens}")
    _check_packages(packages)
    if fetch and packages:
        fetch_debian_docs(packages)
    tok = _tokenizer(tokenizer)
    vocab = len(tok)
    if vocab > 2**16:
        raise SinklabInputError(f"tokenizer has {vocab} tokens; uint16 files hold at most 65536")
    documents: list[tuple[str, str]] = [("pydoc_data.topics", embedded_corpus())]
    documents += [(f"user:{i}", text) for i, text in enumerate(read_texts(extra))] if extra else []
    with Progress() as progress:
        bar = progress.add_task(f"reading {len(packages)} documentation packages", total=len(packages))
        for package in packages:  # the markup extraction: most of a large build's time
            documents += list(debian_documents([package]))
            progress.advance(bar)
    documents, sources = clean_documents(documents)
    for package, version in debian_versions(packages).items():
        sources.setdefault(package, {})["version"] = version
    splits: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    eos = [tok.eos_token_id]
    with Progress() as progress:
        bar = progress.add_task(f"tokenizing {len(documents)} documents", total=len(documents))
        for start in range(0, len(documents), 64):
            batch = documents[start : start + 64]
            ids = tok([text for _, text in batch], add_special_tokens=False)["input_ids"]
            for (source, text), doc in zip(batch, ids, strict=True):
                split = "val" if _is_heldout(source, heldout) else "train"
                splits[split].append(np.asarray(doc + eos, dtype=np.uint16))
                entry = sources[source.split(":")[0]]
                entry["documents"] = entry.get("documents", 0) + 1
                entry["chars"] = entry.get("chars", 0) + len(text)
                entry["tokens"] = entry.get("tokens", 0) + len(doc) + 1
                entry[f"{split}_tokens"] = entry.get(f"{split}_tokens", 0) + len(doc) + 1  # see source_spans
            progress.advance(bar, len(batch))
    for split, parts in splits.items():
        if not parts:
            raise SinklabInputError(f"the {split} split is empty; give more text or change the held-out fraction")
    counts = {split: sum(part.size for part in parts) for split, parts in splits.items()}
    if max_tokens is not None and sum(counts.values()) > max_tokens:
        raise SinklabInputError(f"corpus has {sum(counts.values()):,} tokens, more than --max-tokens {max_tokens:,}")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for split, parts in splits.items():
        np.concatenate(parts).tofile(tmp / f"{split}.bin")
    meta = {
        "tokenizer": tokenizer,
        "vocab_size": vocab,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "tokens": counts,
        "heldout_fraction": heldout,
        "sources": {name: entry for name, entry in sources.items() if entry.get("documents")},
        "sha256": {s: _sha256(tmp / f"{s}.bin") for s in splits},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    tok.save_pretrained(tmp / "tokenizer")  # travels with the corpus: GPU machines have no embedded model wheels
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    return meta


def source_spans(meta: dict, split: str) -> list[tuple[str, int, int]]:
    """``(source, start, end)``: where each source's documents lie in a split's token stream. Documents are stored
    source by source, so each source is one contiguous span (from the per-source ``train_tokens``/``val_tokens``
    that :func:`build_corpus` records in ``meta.json``)."""
    if not any("train_tokens" in entry or "val_tokens" in entry for entry in meta["sources"].values()):
        raise SinklabInputError("this corpus's meta.json has no per-source split counts (built before sinklab 0.3)")
    spans, start = [], 0
    for name, entry in meta["sources"].items():
        if tokens := entry.get(f"{split}_tokens", 0):
            spans.append((name, start, start + tokens))
            start += tokens
    return spans


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(2**24):
            digest.update(block)
    return digest.hexdigest()


class _Parts(io.RawIOBase):
    """A write-only stream cut into files ``<prefix>.partNN`` of at most ``part_bytes`` each."""

    def __init__(self, prefix: Path, part_bytes: int) -> None:
        self.prefix, self.part_bytes, self.paths = prefix, part_bytes, []
        self.file, self.room = None, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        while view:
            if self.room == 0:
                self._next()
            n = min(self.room, len(view))
            self.file.write(view[:n])
            view, self.room = view[n:], self.room - n
        return len(data)

    def _next(self) -> None:
        if self.file is not None:
            self.file.close()
        self.paths.append(self.prefix.with_name(f"{self.prefix.name}.part{len(self.paths):02d}"))
        self.file, self.room = self.paths[-1].open("wb"), self.part_bytes

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


def _reset_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def pack_corpus(corpus_dir: str | Path, pack_dir: str | Path, part_mb: float = 55) -> dict:
    """Write a built corpus as an xz-compressed tar cut into ``corpus.partNN`` files of at most ``part_mb`` MiB,
    plus ``corpus.sha256`` (``sha256sum -c`` format, one line per part); return ``{"parts", "bytes", "sha256"}``.

    Each part fits one transfer to a GPU machine; ``install_corpus`` in ``benchmarks/ship.sh`` checks, joins and
    unpacks them there. Deterministic for a given corpus (sorted names, no owners or times).
    """
    corpus_dir, pack_dir = Path(corpus_dir), Path(pack_dir)
    if not (corpus_dir / "meta.json").exists():
        raise SinklabInputError(f"{corpus_dir} is not a built corpus (no meta.json); build it first")
    if not part_mb > 0:
        raise SinklabInputError(f"part size must be positive MiB, got {part_mb}")
    shutil.rmtree(pack_dir, ignore_errors=True)
    pack_dir.mkdir(parents=True)
    parts = _Parts(pack_dir / "corpus", int(part_mb * 2**20))
    with lzma.open(parts, "wb", preset=6) as xz, tarfile.open(fileobj=xz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in corpus_dir.rglob("*") if p.is_file()):
            tar.add(path, arcname=str(path.relative_to(corpus_dir)), filter=_reset_owner)
    parts.close()
    sums = {path.name: _sha256(path) for path in parts.paths}
    (pack_dir / "corpus.sha256").write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    return {"parts": list(sums), "bytes": sum(p.stat().st_size for p in parts.paths), "sha256": sums}


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
