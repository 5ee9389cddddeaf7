"""Text in, token sequences out.

The embedded corpus is real English prose every Python has: the language reference topics in
``pydoc_data.topics`` (about 110k tokens). Users give files, directories (every text file inside, sorted) or
``.jsonl`` files (one JSON object per line with a ``"text"`` field).

Splitting rule (shared/DESIGN.md): a text is tokenized as-is with the tokenizer's default special tokens; its first
N tokens form the first sequence, the next N the second, and so on. A trailing piece shorter than N is dropped,
unless the text is shorter than N, in which case that single short sequence is kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from sinklab.errors import SinklabInputError

BosMode = Literal["auto", "always", "never"]
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text", ".jsonl", ""}


def embedded_corpus() -> str:
    """Python's language reference topics, joined in a fixed order: the default corpus on every machine."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics))


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise SinklabInputError(
                f"{path}:{lineno} is not valid JSON; .jsonl files hold one object per line"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise SinklabInputError(
                f'{path}:{lineno} has no string "text" field; .jsonl lines look like {{"text": "..."}}'
            )
        texts.append(record["text"])
    return texts


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise SinklabInputError(
                f"directory {path} holds no text files (accepted: {', '.join(sorted(TEXT_SUFFIXES - {''}))})"
            )
        return files
    if path.is_file():
        return [path]
    if path.exists():
        raise SinklabInputError(f"text path {path} is neither a file nor a directory")
    raise SinklabInputError(f"text file {path} does not exist; give existing files, directories or .jsonl files")


def text_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files that ``read_texts`` reads for ``paths`` (every text file inside a directory, sorted)."""
    return [f for raw in paths for f in _files(Path(raw).expanduser())]


def read_texts(paths: Iterable[str | Path] | None) -> list[str]:
    """Texts from files, directories and .jsonl files; the embedded corpus when ``paths`` is empty or None."""
    paths = list(paths or [])
    if not paths:
        return [embedded_corpus()]
    texts: list[str] = []
    for file in text_files(paths):
        try:
            found = _read_jsonl(file) if file.suffix == ".jsonl" else [file.read_text(encoding="utf-8")]
        except UnicodeDecodeError:
            raise SinklabInputError(f"{file} is not UTF-8 text; give plain text, Markdown or .jsonl files") from None
        except OSError as exc:
            raise SinklabInputError(f"cannot read {file}: {exc.strerror}") from None
        texts.extend(t for t in found if t.strip())
    if not texts:
        raise SinklabInputError(f"no text found in {', '.join(map(str, paths))}; the files are empty")
    return texts


def _bos_id(tokenizer) -> int:
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    if token_id is None:
        raise SinklabInputError("--bos always needs a tokenizer with a BOS or [CLS] token; this one has neither")
    return token_id


def token_sequences(
    tokenizer,
    texts: Sequence[str],
    max_tokens: int,
    num_texts: int | None = None,
    bos: BosMode = "auto",
    exact: bool = False,
) -> list[list[int]]:
    """Split texts into sequences of ``max_tokens`` token ids (DESIGN.md's rule), at most ``num_texts`` of them.

    ``bos``: ``auto`` tokenizes with the tokenizer's default special tokens (so only a text's first sequence starts
    with BOS, if the tokenizer adds one); ``always`` starts every sequence with BOS (or [CLS]) followed by
    ``max_tokens - 1`` text tokens; ``never`` uses no special tokens at all. ``exact`` (the CLI): every sequence has
    ``max_tokens`` tokens and there are ``num_texts`` of them, or ``SinklabInputError`` says what the texts give.
    """
    if max_tokens < 2:
        raise SinklabInputError(f"max tokens must be at least 2, got {max_tokens}")
    if bos not in ("auto", "always", "never"):
        raise SinklabInputError(f"unknown --bos {bos!r}; accepted: auto, always, never")
    prefix = [_bos_id(tokenizer)] if bos == "always" else []
    body = max_tokens - len(prefix)
    sequences: list[list[int]] = []
    longest = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=bos == "auto", verbose=False)["input_ids"]
        longest = max(longest, len(prefix) + len(ids))
        if not ids or (exact and len(ids) < body):
            continue
        starts = range(0, max(len(ids) - body, 0) + 1, body) if len(ids) >= body else [0]
        for start in starts:
            sequences.append(prefix + ids[start : start + body])
            if num_texts is not None and len(sequences) >= num_texts:
                return sequences
    if longest == 0:
        raise SinklabInputError("the texts tokenize to nothing; give non-empty text")
    if exact and not sequences:
        raise SinklabInputError(
            f"--max-tokens {max_tokens} is more than the text holds: its longest text has {longest:,} tokens; "
            f"give --max-tokens {longest} or less, or a longer text"
        )
    if exact and num_texts is not None:
        raise SinklabInputError(
            f"--num-texts {num_texts} is more than the text gives: {len(sequences)} sequences of {max_tokens} "
            f"tokens; give --num-texts {len(sequences)} or less, a smaller --max-tokens, or more text"
        )
    return sequences
