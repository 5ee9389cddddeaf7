"""Texts in, sequences out: DESIGN.md's splitting rule, BOS modes, files, directories, .jsonl, errors."""

import json

import pytest

from sinklab.data import embedded_corpus, read_texts, token_sequences
from sinklab.errors import SinklabInputError
from sinklab.models import byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_embedded_corpus_is_real_prose():
    text = embedded_corpus()
    assert len(text) > 300_000 and 'The "import" statement' in text
    assert read_texts(None) == [text]


def test_split_rule(tok):
    text = "abcdefghij" * 3  # 30 bytes + <bos> = 31 tokens
    seqs = token_sequences(tok, [text], 8)
    ids = tok(text)["input_ids"]
    assert seqs == [ids[0:8], ids[8:16], ids[16:24]]  # the trailing 7 tokens are dropped
    assert token_sequences(tok, ["tiny"], 8) == [tok("tiny")["input_ids"]]  # shorter than N: kept whole
    assert len(token_sequences(tok, [text, text], 8, num_texts=4)) == 4


def test_bos_modes(tok):
    text = "abcdefghij" * 3
    always = token_sequences(tok, [text], 8, bos="always")
    assert all(s[0] == tok.bos_token_id and len(s) == 8 for s in always)
    never = token_sequences(tok, [text], 8, bos="never")
    assert all(tok.bos_token_id not in s for s in never)
    auto = token_sequences(tok, [text], 8, bos="auto")
    assert auto[0][0] == tok.bos_token_id and auto[1][0] != tok.bos_token_id
    with pytest.raises(SinklabInputError, match="accepted: auto, always, never"):
        token_sequences(tok, [text], 8, bos="sometimes")


def test_files_dirs_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.md").write_text("second")
    (sub / "c.jsonl").write_text(json.dumps({"text": "third"}) + "\n\n" + json.dumps({"text": "fourth"}) + "\n")
    (sub / "image.png").write_bytes(b"\x89PNG")
    assert read_texts([tmp_path]) == ["first", "second", "third", "fourth"]
    assert read_texts([tmp_path / "a.txt"]) == ["first"]


@pytest.mark.parametrize(
    "content, message",
    [("", "empty"), ("{not json}\n", "not valid JSON"), ('{"txt": "x"}\n', 'no string "text" field')],
)
def test_bad_text(tmp_path, content, message):
    path = tmp_path / ("f.jsonl" if "{" in content else "f.txt")
    path.write_text(content)
    with pytest.raises(SinklabInputError, match=message):
        read_texts([path])


def test_missing_path(tmp_path):
    with pytest.raises(SinklabInputError, match="does not exist"):
        read_texts([tmp_path / "nope.txt"])


def test_exact_request_is_refused_with_the_numbers(tok):
    text = "abcdefghij" * 3  # 31 tokens
    assert token_sequences(tok, [text], 8, num_texts=3, exact=True) == token_sequences(tok, [text], 8, num_texts=3)
    with pytest.raises(SinklabInputError, match=r"--num-texts 4 is more than the text gives: 3 sequences of 8"):
        token_sequences(tok, [text], 8, num_texts=4, exact=True)
    with pytest.raises(SinklabInputError, match=r"--max-tokens 64 is more than the text holds: .* has 31 tokens"):
        token_sequences(tok, [text, "short"], 64, num_texts=1, exact=True)
    assert token_sequences(tok, ["short", text], 8, num_texts=1, exact=True) == [tok(text)["input_ids"][:8]]
