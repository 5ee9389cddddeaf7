"""sinklab bench: every metric on a tiny model built so the answer is known, determinism, resume, --compare."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from sinklab.bench import compare_runs, make_protocol, protocol_hash, run_bench
from sinklab.bench import metrics as bm
from sinklab.bench.methods import cell_label, cells, parse_cell, parse_factorial, parse_methods
from sinklab.bench.metrics import COST_KEYS
from sinklab.bench.protocol import Protocol
from sinklab.bench.report import write_bench
from sinklab.bench.runner import factorial_effects
from sinklab.errors import SinklabInputError
from sinklab.method import Method
from sinklab.models import load
from sinklab.remove.quant import W8A8

TEXT = (
    "Attention sinks are tokens that receive a large share of attention although they carry little meaning. "
    "Streaming caches keep them beside a window of recent tokens, and quantized caches keep them exact. "
) * 12


class FirstTokenOnly(Method):
    """Every query puts all its attention on key 0: Sink_1 = 1 and first-token mass = 1 by construction."""

    name = ""

    def install(self, model_sites):
        for site in model_sites.attention:
            model_sites.add(self, f"layers.{site.layer}.attn.weights", _first_only)


def _first_only(weights, call):
    out = torch.zeros_like(weights)
    out[..., 0] = 1.0
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(TEXT)
    return str(path)


def _protocol(corpus, **kw):
    settings = dict(lengths=(32,), method_lengths=(32,), gu_length=16, gu_texts=2, window=8, num_sinks=2, keep_first=2,
                    passkey_tokens=48, passkey_depths=(0.05, 0.95), press_tokens=24, press_chunk=8)  # fmt: skip
    return make_protocol(corpus, **{**settings, **kw})


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load("tiny-llama")


def _ppl(model, ids):
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return math.exp(float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())))


def test_protocol_hash_pins_every_field(corpus):
    p = _protocol(corpus)
    assert protocol_hash(p) == protocol_hash(_protocol(corpus))
    assert Protocol.from_dict(p.to_dict()) == p
    assert protocol_hash(_protocol(corpus, eps=0.2)) != protocol_hash(p)
    assert make_protocol().corpus_sha256 != p.corpus_sha256  # the corpus is hashed by content
    with pytest.raises(SinklabInputError, match="BOS"):
        _protocol(corpus, bos="sometimes")


def test_forced_first_token_sink_rate_is_one(tiny, corpus):
    model, tok = tiny
    p = _protocol(corpus)
    seqs = bm.Sequences(tok, p)
    with FirstTokenOnly()(model):
        got = bm.gu_metrics(model, tok, p, seqs)
        q = bm.quality_metrics(model, seqs(32), p)
    assert got["sink_rate@16"] == 1.0 and got["first_token_mass@16"] == pytest.approx(1.0, abs=1e-6)
    assert got["secondary_sinks@16"] == 0
    assert got["first_token_mass_by_layer@16"] == pytest.approx([1.0] * len(got["first_token_mass_by_layer@16"]))
    assert q["sink_rate@32"] == 1.0 and q["first_token_mass@32"] == pytest.approx(1.0, abs=1e-6)
    plain = bm.gu_metrics(model, tok, p, seqs)
    assert plain["sink_rate@16"] < 1.0  # the random tiny model has no such sink


def test_quality_metrics_known_answers(tiny, corpus):
    model, tok = tiny
    ids = bm.sequences(tok, _protocol(corpus), 32)
    # a window covering the text is dense attention; keeping every key exact is full-precision KV
    wide = _protocol(corpus, window=64, num_sinks=2, keep_first=32)
    got = bm.quality_metrics(model, ids, wide)
    dense = _ppl(model, ids)
    assert got["ppl@32"] == pytest.approx(dense, rel=1e-5)
    assert got["ppl_window@32"] == pytest.approx(dense, rel=1e-5)
    assert got["ppl_sinks@32"] == pytest.approx(dense, rel=1e-5)
    assert got["ppl_kv4_keep32@32"] == pytest.approx(dense, rel=1e-5)
    assert got["ppl_kv4@32"] != pytest.approx(dense, rel=1e-6)
    assert got["d_ppl_kv4_keep32@32"] == pytest.approx(0.0, abs=1e-3)
    with W8A8(model, activations="tensor"):
        assert got["ppl_w8a8@32"] == pytest.approx(_ppl(model, ids), rel=1e-5)
    narrow = bm.quality_metrics(model, ids, _protocol(corpus))
    assert narrow["ppl_window@32"] != pytest.approx(dense, rel=1e-4)  # a window of 8 does cut the text
    # outliers: scan's definitions on the same tokens
    from sinklab.measure import scan

    result = scan(model, tok, ids, 0.3, max_tokens=32, num_texts=None, keep_pattern=0, progress=False)
    assert got["max_abs@32"] == pytest.approx(float(result.layer_max_abs.max()), rel=1e-5)
    assert got["kurtosis@32"] == pytest.approx(float(result.layer_kurtosis.max()), rel=1e-5)


def test_passkey_counts_inside_and_beyond_the_window(tiny, corpus, monkeypatch):
    """A stand-in reader that answers exactly when the needle is still cached: in-window 1, beyond 0, full 1."""
    model, tok = tiny
    import sinklab.exploit.stream as stream
    from sinklab.data.tasks import passkey

    p = _protocol(corpus, passkey_tokens=600, passkey_depths=(0.0, 0.5, 1.0), window=128, num_sinks=2)
    examples = {passkey(tok, 600, depth=d, seed=0).prompt: passkey(tok, 600, depth=d, seed=0) for d in (0.0, 0.5, 1.0)}

    def oracle(model, tokenizer, prompt, cache, max_new_tokens=12):
        ex = examples[prompt]
        return ex.answer if ex.in_window(cache.num_sinks, cache.window) else "no idea"

    monkeypatch.setattr(stream, "answer", oracle)
    got = bm.passkey_metrics(model, tok, p)
    inside = sum(ex.in_window(2, 128) for ex in examples.values())
    assert got["passkey_n"] == [inside, 3 - inside, 3] and 0 < inside < 3
    assert (got["passkey_in_window"], got["passkey_beyond_window"], got["passkey_full"]) == (1.0, 0.0, 1.0)


def test_press_with_room_for_everything_is_dense_decoding(tiny, corpus):
    model, tok = tiny
    ids = bm.sequences(tok, _protocol(corpus), 32)
    got = bm.press_metrics(model, ids, "knorm", _protocol(corpus, window=64, press_tokens=24))
    assert got["ppl_press@24"] == pytest.approx(got["ppl_dense_decode@24"], rel=1e-6)
    assert got["ppl_dense_decode@24"] == pytest.approx(_ppl(model, ids[:, :24]), rel=1e-4)
    tight = bm.press_metrics(model, ids, "knorm", _protocol(corpus, window=4, press_tokens=24))
    assert tight["ppl_press@24"] != pytest.approx(tight["ppl_dense_decode@24"], rel=1e-4)


def test_factorial_known_effects_and_cost(tiny, corpus):
    model, tok = tiny
    ids = bm.sequences(tok, _protocol(corpus), 32)
    p = _protocol(corpus, window=64, keep_first=32)  # sinks and keep-first-N then change nothing
    rows = [{"factors": c, "ppl": bm.cell_ppl(model, ids, c, p)} for c in cells(("sinks", "kv4", "w8a8"))]
    effects = factorial_effects(rows, ("sinks", "kv4", "w8a8"), "ppl")
    assert rows[0]["ppl"] == pytest.approx(_ppl(model, ids), rel=1e-5)
    assert all(abs(v) < 1e-5 for k, v in effects.items() if "w8a8" not in k or "sinks" in k or "kv4" in k)
    assert abs(effects["w8a8"]) > 1e-5
    cost = bm.cost_metrics(model, ids)
    assert cost["tokens_per_s"] > 0 and cost["seconds"] > 0 and cost["peak_memory_bytes"] is None


def test_factorial_effects_recover_a_known_design():
    """log ppl = 1 + 0.3 s - 0.2 k + 0.05 s k (s, k = +-1): effects 2 x the coefficients, the unused factor 0."""
    rows = []
    for cell in cells(("sinks", "kv4", "w8a8")):
        s, k = (1 if cell["sinks"] else -1), (1 if cell["kv4"] else -1)
        rows.append({"factors": cell, "ppl": math.exp(1 + 0.3 * s - 0.2 * k + 0.05 * s * k)})
    got = factorial_effects(rows, ("sinks", "kv4", "w8a8"), "ppl")
    want = {"sinks": 0.6, "kv4": -0.4, "w8a8": 0, "sinksxkv4": 0.1, "sinksxw8a8": 0, "kv4xw8a8": 0, "sinksxkv4xw8a8": 0}
    assert got == pytest.approx(want, abs=1e-12)
    for cell in cells(("sinks", "kv4")):
        assert parse_cell(cell_label(cell), ("sinks", "kv4")) == cell


def test_parse_refuses_bad_input():
    with pytest.raises(SinklabInputError, match="accepted"):
        parse_methods("act,telepathy")
    with pytest.raises(SinklabInputError, match="2 to 4"):
        parse_factorial("sinks")
    with pytest.raises(SinklabInputError, match="act"):
        parse_factorial("sinks,act")
    assert [s.name for s in parse_methods("act,kv-quant")] == ["act", "kv-quant"]


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in (*COST_KEYS, "wall_s")} for r in rows]


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    p = _protocol(corpus, passkey_depths=(0.95,), num_texts=1)
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    first = run_bench(["tiny-llama", "tiny-bert"], "act,prefix,kv-quant,knorm", "kv4,w8a8", p, a)
    second = run_bench(["tiny-llama", "tiny-bert"], "act,prefix,kv-quant,knorm", "kv4,w8a8", p, b)
    return p, first, second, a


def test_rerun_is_identical_and_rows_are_complete(runs):
    p, first, second, _ = runs
    assert _strip(first["rows"]) == _strip(second["rows"])
    rows = {(r["model"], r["method"]): r for r in first["rows"]}
    assert {"none", "act", "prefix", "kv-quant", "knorm"} <= {m for (name, m) in rows if name == "tiny-llama"}
    assert sum(1 for (name, m) in rows if name == "tiny-llama" and m.startswith("factorial:")) == 4
    for r in first["rows"]:
        if r["role"] == "factorial":
            assert cell_label(r["factors"]) == r["method"]
    assert rows[("tiny-llama", "act")]["ppl_window@32"] is None  # ACT is not applied inside StreamAttention
    assert rows[("tiny-llama", "prefix")]["prefix_mass@32"] > 0
    encoder = rows[("tiny-bert", "none")]
    assert "sink_rate@32" in encoder and "ppl@32" not in encoder
    assert [m for (name, m) in rows if name == "tiny-bert"] == ["none"]
    assert any(r["published"] and "source" in r for r in first["rows"])
    assert first["protocol"]["hash"] == protocol_hash(p)
    assert "log_ppl_effects" in first["models"]["tiny-llama"]["factorial"]


def test_resume_reuses_rows_and_refuses_another_protocol(runs, corpus):
    p, first, _, out = runs
    again = run_bench(["tiny-llama", "tiny-bert"], "act,prefix,kv-quant,knorm", "kv4,w8a8", p, out, resume=True)
    assert again["rows"] == first["rows"]  # every row read back, timings included
    with pytest.raises(SinklabInputError, match="protocol"):
        run_bench(["tiny-llama"], "none", "none", _protocol(corpus, eps=0.2), out, resume=True)


def test_written_files_and_compare(runs, tmp_path, corpus):
    _, first, second, _ = runs
    write_bench(first, tmp_path / "A")
    write_bench(second, tmp_path / "B")
    assert {f.name for f in (tmp_path / "A").iterdir()} >= {"bench.json", "bench.csv", "report.html"}
    header = (tmp_path / "A" / "bench.csv").read_text().splitlines()[0]
    assert "ppl@32" in header and "method" in header
    same = compare_runs(tmp_path / "A" / "bench.json", tmp_path / "B" / "bench.json")
    assert same["changed"] == [] and same["unchanged"] > 0
    other = json.loads((tmp_path / "B" / "bench.json").read_text())
    other["protocol"]["hash"] = "0" * 16
    (tmp_path / "B" / "bench.json").write_text(json.dumps(other))
    from sinklab.cli import app

    result = CliRunner().invoke(app, ["bench", "--compare", str(tmp_path / "A" / "bench.json"),
                                      str(tmp_path / "B" / "bench.json"), "--out", str(tmp_path / "C")])  # fmt: skip
    assert result.exit_code == 2
    assert "protocols differ" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "C").exists()


def test_cli_refuses_bad_methods_before_loading(tmp_path):
    from sinklab.cli import app

    result = CliRunner().invoke(app, ["bench", "--methods", "act,nope", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "accepted" in result.output
    assert not (tmp_path / "x").exists()
