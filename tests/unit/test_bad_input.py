"""The bad-input contract (issue 20): every user error gives one line on stderr naming what is wrong and what is
accepted, exit code 2, no traceback and nothing left on disk; Ctrl-C gives one line and exit code 130. The same
errors from the Python API are ``SinklabInputError`` (a ``ValueError``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

import sinklab
from sinklab.cli import app
from sinklab.errors import SinklabInputError
from sinklab.testing import assert_refused

NO_CUDA = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"

# (command and arguments, text the one line must contain); {d} is the test's own directory, which holds the
# files made by the `files` fixture; "--out {d}/out" is added unless the case names --out
CASES = [
    # models
    ("scan --model gpt-17", "unknown model 'gpt-17'; accepted: smollm2-135m"),
    ("scan --model ''", "unknown model ''"),
    ("scan --model /no/such/model/dir", "unknown model '/no/such/model/dir'"),
    ("scan --model nobody/nothing", "could not load 'nobody/nothing'"),
    ("scan --model {d}/prose.txt", "is not a .gguf file"),
    ("scan --model {d}/emptydir", "holds neither config.json nor a .gguf file"),
    ("scan --model {d}/vit", "no file named model.safetensors"),  # an image encoder: weights missing
    ("scan --model {d}/badconfig", "could not load"),
    ("scan --model {d}/fake.gguf", "could not load"),
    ("scan --out {d}/out --model", "requires an argument"),
    # texts
    ("scan --text /no/such/file.txt", "does not exist"),
    ("scan --text {d}/empty.txt", "the files are empty"),
    ("scan --text {d}/blank.txt", "the files are empty"),
    ("scan --text {d}/emptydir", "holds no text files"),
    ("scan --text {d}/binary.txt", "is not UTF-8 text"),
    ("scan --text {d}/bad.jsonl", "is not valid JSON"),
    ("scan --text {d}/notext.jsonl", 'no string "text" field'),
    # token bounds and counts
    ("scan --max-tokens 1000000000", "more than the text holds"),
    ("scan --text {d}/prose.txt --num-texts 100 --max-tokens 64", "--num-texts 100 is more than the text gives"),
    ("scan --text {d}/prose.txt --max-tokens 4000", "--max-tokens 4000 is more than the text holds"),
    ("scan --max-tokens 4096", "exceed the model's 1024 positions"),
    ("scan --max-tokens 1", "--max-tokens must be >= 2"),
    ("scan --max-tokens 0", "--max-tokens must be >= 2"),
    ("scan --max-tokens -5", "--max-tokens must be >= 2"),
    ("scan --max-tokens abc", "Invalid value for '--max-tokens'"),
    ("scan --num-texts 0", "--num-texts >= 1"),
    ("scan --batch-size 0", "--batch-size"),
    # thresholds
    ("scan --eps 0", "--eps must lie in (0, 1)"),
    ("scan --eps 1", "--eps must lie in (0, 1)"),
    ("scan --eps 1.5", "--eps must lie in (0, 1)"),
    ("scan --eps -0.1", "--eps must lie in (0, 1)"),
    ("scan --eps nan", "--eps must lie in (0, 1)"),
    ("scan --sink-threshold 2", "--sink-threshold must lie in (0, 1)"),
    ("scan --sink-threshold 0", "--sink-threshold must lie in (0, 1)"),
    ("scan --bos maybe", "accepted: auto, always, never"),
    # devices and dtypes
    ("scan --device tpu9", "unknown device 'tpu9'; accepted: cpu"),
    ("scan --device ''", "unknown device ''"),
    (f"scan --device {NO_CUDA}", "CUDA"),
    ("scan --dtype int3", "unknown dtype 'int3'"),
    # output paths
    ("scan --out {d}/prose.txt", "is an existing file"),
    ("scan --out {d}/prose.txt/sub", "which is a file"),
    ("scan --out /proc/sinklab-out", "cannot be written"),
    # typos and usage
    ("scan --epss 0.3", "No such option: --epss"),
    ("scna", "No such command 'scna'"),
    ("scan extra", "unexpected extra argument"),
    ("--nope", "No such option: --nope"),
    ("models --all", "No such option: --all"),
    # explain
    ("explain --probes nope", "unknown probe 'nope'; accepted: noop"),
    ("explain --probes ,", "(none given)"),
    ("explain --max-tokens 3", "--max-tokens must be >= 4"),
    ("explain --eps 2", "--eps must lie in (0, 1)"),
    ("explain --device tpu9", "unknown device"),
    ("explain --out {d}/prose.txt", "is an existing file"),
    ("explain --text {d}/prose.txt --num-texts 50 --max-tokens 64", "more than the text gives"),
    # train
    ("train --variant nope", "unknown variant 'nope'; accepted: softmax"),
    ("train --preset huge", "unknown preset 'huge'; accepted: tiny, small"),
    ("train --steps 0", "--steps must be a positive integer"),
    ("train --batch-size 0", "--batch-size must be a positive integer"),
    ("train --eval-every 0", "--eval-every must be a positive integer"),
    ("train --lr 0", "learning rate must be > 0"),
    ("train --weight-decay -1", "weight decay >= 0"),
    ("train --bos sometimes", "unknown --bos 'sometimes'"),
    ("train --steps 10000000", "corpus too small"),
    ("train --corpus /no/such/corpus", "/no/such/corpus"),
    ("train --device tpu9", "unknown device"),
    ("train --out {d}/prose.txt", "is an existing file"),
    # stream and eval-stream
    ("stream", "give --prompt TEXT or --interactive"),
    ("stream --prompt hi --interactive", "either --prompt or --interactive"),
    ("stream --prompt hi --temperature -1", "--temperature"),
    ("stream --prompt hi --max-new-tokens -1", "--max-new-tokens must be >= 0"),
    ("stream --prompt hi --positions sideways", "accepted: cache, absolute"),
    ("stream --prompt hi --window 0", "window"),
    ("stream --prompt hi --sinks -1", "sink"),
    ("stream --prompt hi --device tpu9", "unknown device"),
    ("eval-stream --policies nope", "nope"),
    ("eval-stream --window 0", "window"),
    ("eval-stream --recompute-points 0", "--recompute-points must be >= 1"),
    ("eval-stream --chunk 0", "chunk"),
    ("eval-stream --max-tokens 1000000000", "1000000000"),
    ("eval-stream --tokens 1000000000", "1000000000"),
    ("eval-stream --out {d}/prose.txt", "is an existing file"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad inputs of every kind, made once."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "prose.txt").write_text("A short text of prose for the bad-input catalogue. " * 40)
    (d / "empty.txt").write_text("")
    (d / "blank.txt").write_text("  \n\n ")
    (d / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 64)
    (d / "bad.jsonl").write_text("{not json}\n")
    (d / "notext.jsonl").write_text('{"txt": "x"}\n')
    (d / "emptydir").mkdir()
    (d / "badconfig").mkdir()
    (d / "badconfig" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    (d / "vit").mkdir()
    (d / "vit" / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    (d / "fake.gguf").write_bytes(b"GGUF" + b"\x00" * 64)
    return d


@pytest.mark.parametrize("line, message", CASES, ids=[c[0] for c in CASES])
def test_cli_bad_input(line, message, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default output directory would appear here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [a.replace("''", "") for a in line.format(d=files).split(" ")]
    if args[0] in ("scan", "explain") and "--model" not in args:
        args += ["--model", "tiny-llama"]
    if args[0] in ("stream", "eval-stream") and "--model" not in args:
        args += ["--model", "tiny-llama"]
    if args[0] in ("scan", "explain", "train", "eval-stream") and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    assert_refused(args, message, files, tmp_path)


def test_catalogue_is_large_enough():
    assert len(CASES) >= 43


def _run(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "sinklab.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        **kw,
    )


def test_entry_point_exit_code_and_one_line(tmp_path):
    """The real process: exit code 2 and one line for a bad value and for a typo flag."""
    for args, message in ((["scan", "--eps", "7"], "--eps must lie in (0, 1)"), (["scan", "--tokns", "4"], "--tokns")):
        proc = _run([*args, "--out", str(tmp_path / "out")])
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    """SIGINT in the middle of a run: one line, exit code 130, no traceback, no output directory."""
    out = tmp_path / "out"
    # a user's shell starts commands with SIGINT at its default; a pytest worker's disposition can be SIG_IGN by
    # now (seen in the full suite), and a child that inherits SIG_IGN ignores Ctrl-C (Python keeps it at start-up)
    args = ["scan", "--model", "tiny-llama", "--max-tokens", "1024", "--num-texts", "400", "--out", str(out)]
    proc = _run(args, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stderr.readline()  # the progress display's first line: the run has started
    assert "scan tiny-llama" in first, first
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    lines = [line for line in rest.splitlines() if not line.startswith("sinklab: scan")]
    assert proc.returncode == 130 and lines == ["sinklab: interrupted"], rest
    assert not out.exists()


def test_help_version_and_aliases():
    runner = CliRunner()
    for flag in ("-h", "--help"):
        result = runner.invoke(app, ["scan", flag])
        assert result.exit_code == 0 and "--max-tokens" in result.output
        assert "<bool>" not in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"sinklab {sinklab.__version__}"
    help_text = runner.invoke(app, ["eval-stream", "--help"]).output
    assert "--max-tokens" in help_text and "--tokens " not in help_text  # the old name is a hidden alias


# ---- the Python API: the same errors are SinklabInputError ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return sinklab.load("tiny-llama")


def test_api_error_is_a_value_error():
    assert issubclass(SinklabInputError, ValueError)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eps": 0.0}, "eps must lie in"),
        ({"eps": 3}, "eps must lie in"),
        ({"sink_threshold": 2.0}, "sink_threshold must lie in"),
        ({"batch_size": 0}, "batch size must be >= 1"),
        ({"bos": "sometimes"}, "accepted: auto, always, never"),
        ({"max_tokens": 1}, "at least 2"),
        ({"texts_or_ids": []}, "no texts given"),
        ({"texts_or_ids": [[]]}, "all token sequences are empty"),
        ({"texts_or_ids": torch.zeros(1, 0, dtype=torch.long)}, "all token sequences are empty"),
        ({"texts_or_ids": [[1, 2, 10**6]]}, "outside the model's vocabulary; accepted: 0 .."),
        ({"texts_or_ids": [[-1, 2, 3]]}, "token id -1 is outside"),
        ({"texts_or_ids": ["a text", [1, 2]]}, "not a mix"),
        ({"texts_or_ids": [[1.5, 2.0]]}, "strings or lists of token ids"),
        ({"texts_or_ids": "x" * 4000, "max_tokens": 2048}, "exceed the model's 1024 positions"),
    ],
)
def test_api_scan_refuses(tiny, kwargs, message):
    model, tok = tiny
    kwargs = {"texts_or_ids": "some text to scan", "progress": False, **kwargs}
    with pytest.raises(SinklabInputError, match=message):
        sinklab.scan(model, tok, **kwargs)


def test_api_string_is_a_text(tiny):
    model, tok = tiny
    result = sinklab.scan(model, tok, "some text, not a path", progress=False)
    assert result.tokens == len(tok("some text, not a path")["input_ids"])
    assert result.provenance["texts"]["source"] == "1 string"
    assert result.provenance["command"].startswith("python api")


@pytest.mark.parametrize(
    "model, tokenizer, message",
    [
        ("tiny-llama", "tok", "model must be a transformers PreTrainedModel"),
        (torch.nn.Linear(2, 2), "tok", "got Linear"),
        ("model", None, "tokenizer must be the model's transformers tokenizer"),
        ("model", "a string", "got str"),
    ],
)
def test_api_refuses_non_models(tiny, model, tokenizer, message):
    real, tok = tiny
    model = real if model == "model" else model
    tokenizer = tok if tokenizer == "tok" else tokenizer
    for fn in (sinklab.scan, sinklab.explain):
        with pytest.raises(SinklabInputError, match=message):
            fn(model, tokenizer, "some text", progress=False)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sinklab.load("tiny-llama", device="tpu9"), "unknown device 'tpu9'"),
        (lambda: sinklab.load("tiny-llama", device=NO_CUDA), "CUDA"),
        (lambda: sinklab.load("tiny-llama", dtype="int3"), "unknown dtype"),
        (lambda: sinklab.load("nope"), "unknown model 'nope'"),
    ],
)
def test_api_load_refuses(call, message):
    with pytest.raises(SinklabInputError, match=message):
        call()


def test_api_save_refuses_bad_out(tiny, tmp_path):
    model, tok = tiny
    result = sinklab.scan(model, tok, "some text to scan", progress=False)
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "existing file"), (tmp_path / "file" / "sub", "which is a file")):
        with pytest.raises(SinklabInputError, match=message):
            result.save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
