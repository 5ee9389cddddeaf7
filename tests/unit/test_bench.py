"""sinklab bench: every metric on a tiny model built so the answer is known, determinism, resume, --compare."""

import json
import math

import pytest
import torch

from sinklab.bench import compare_runs, make_protocol, protocol_hash, run_bench
from sinklab.bench import metrics as bm
from sinklab.bench.methods import Design, cell_label, cells, parse_designs, parse_factorial, parse_methods
from sinklab.bench.metrics import COST_KEYS
from sinklab.bench.protocol import Protocol
from sinklab.bench.report import write_bench
from sinklab.bench.runner import factorial_effects
from sinklab.errors import SinklabInputError
from sinklab.method import Method
from sinklab.models import load
from sinklab.remove.quant import W8A8
from sinklab.testing import assert_refused

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


class Planted(Method):
    """Unit-norm values except the first token's (norm ``scale``); in every layer the query heads ``heads`` attend
    only to key 0, the others uniformly over the keys they may see. Known answers: the value-norm ratio is ``scale``
    everywhere; a planted head outputs v_0 (output ratio ``scale``), so it is dormant iff scale < 0.5; a uniform
    head has alpha_1 = H_T / T (0.21 at T=16) < eps = 0.3, so it is neither a sink nor dormant."""

    name = ""

    def __init__(self, scale: float, heads: tuple[int, ...]):
        self.scale, self.heads = scale, list(heads)

    def install(self, model_sites):
        for site in model_sites.attention:
            model_sites.add(self, f"layers.{site.layer}.attn.qkv", self._values)
            model_sites.add(self, f"layers.{site.layer}.attn.weights", self._weights)

    def _values(self, qkv, call):
        q, k, v = qkv
        v = torch.nn.functional.normalize(v, dim=-1)
        v[:, :, 0] *= self.scale
        return q, k, v

    def _weights(self, weights, call):  # [B, H, R, K]: rows r0..r1, keys lo..hi
        (r0, r1), (lo, hi) = call.rows, call.keys
        t = torch.arange(r0, r1)[:, None]
        j = torch.arange(lo, hi)[None, :]
        out = ((j <= t) / (t + 1.0)).to(weights.dtype).expand_as(weights).clone()
        out[:, self.heads] = (j == 0).to(weights.dtype)
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


@pytest.mark.parametrize(("scale", "dormant"), [(0.1, 0.5), (0.8, 0.0)])
def test_dormant_share_and_value_norm_ratio_known_answers(tiny, corpus, scale, dormant):
    """Two of four heads attend only the first token; its value is ``scale`` times the others': dormant share 2/4
    when scale < 0.5 (their output is shorter than half a typical value), none at 0.8; the ratio is ``scale``."""
    model, tok = tiny
    p = _protocol(corpus)
    layers = model.config.num_hidden_layers
    with Planted(scale, heads=(0, 1))(model):
        got = bm.gu_metrics(model, tok, p, bm.Sequences(tok, p))
    assert got["sink_rate@16"] == 0.5
    assert got["dormant_share@16"] == dormant and got["dormant_heads@16"] == dormant * 4 * layers
    assert got["value_norm_ratio@16"] == pytest.approx(scale, rel=1e-5)
    assert got["value_norm_ratio_sink_heads@16"] == pytest.approx(scale, rel=1e-5)
    assert got["value_norm_ratio_by_layer@16"] == pytest.approx([scale] * layers, rel=1e-5)
    plain = bm.gu_metrics(model, tok, p, bm.Sequences(tok, p))
    assert plain["value_norm_ratio@16"] != pytest.approx(scale, rel=1e-2)  # the plain tiny model is not planted


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
    assert [cell_label(c) for c in cells(("sinks", "kv4"))] == [
        "factorial:-sinks-kv4", "factorial:-sinks+kv4", "factorial:+sinks-kv4", "factorial:+sinks+kv4"]  # fmt: skip


def test_parse_refuses_bad_input(tmp_path):
    with pytest.raises(SinklabInputError, match="accepted"):
        parse_methods("act,telepathy")
    with pytest.raises(SinklabInputError, match="adapt checkpoint"):
        parse_methods("variant")
    with pytest.raises(SinklabInputError, match="does not exist"):
        parse_methods(f"prefix={tmp_path / 'missing.safetensors'}")
    with pytest.raises(SinklabInputError, match="2 to 4"):
        parse_factorial("sinks")
    with pytest.raises(SinklabInputError, match="2 to 4"):
        parse_factorial("kv4,w8a8=3")
    with pytest.raises(SinklabInputError, match="act"):
        parse_factorial("sinks,act")
    with pytest.raises(SinklabInputError, match="does not exist"):
        parse_factorial(f"kv4,prefix={tmp_path / 'missing.safetensors'}")
    with pytest.raises(SinklabInputError, match="same factors"):
        parse_designs(["sinks,kv4", "kv4,sinks"])
    assert [s.name for s in parse_methods("act,kv-quant")] == ["act", "kv-quant"]
    assert parse_designs(["sinks,kv4,w8a8", "act,kv4", "none"]) == [Design(("sinks", "kv4", "w8a8")),
                                                                   Design(("act", "kv4"))]  # fmt: skip


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in (*COST_KEYS, "wall_s")} for r in rows]


@pytest.fixture(scope="module")
def prefix_file(tiny, tmp_path_factory):
    """The untrained slot (the BOS token's own key/values) saved as a prefix file: prefix=FILE must equal prefix."""
    from sinklab.bench.methods import make_prefix
    from sinklab.exploit.prefix import save_prefix

    model, tok = tiny
    return str(save_prefix(make_prefix(model, tok), tmp_path_factory.mktemp("prefix") / "slot.safetensors"))


METHODS = "act,prefix,kv-quant,knorm"
DESIGNS = ["kv4,w8a8", "act,prefix"]


@pytest.fixture(scope="module")
def runs(corpus, prefix_file, tmp_path_factory):
    p = _protocol(corpus, passkey_depths=(0.95,), num_texts=1)  # test_compare_refuses_another_corpus repeats these
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    methods = f"{METHODS},prefix={prefix_file}"
    designs = [*DESIGNS, f"kv4,prefix={prefix_file}"]
    first = run_bench(["tiny-llama", "tiny-bert"], methods, designs, p, a, cores="shared")
    second = run_bench(["tiny-llama", "tiny-bert"], methods, designs, p, b)
    return p, first, second, a, methods, designs


def test_rerun_is_identical_and_rows_are_complete(runs, prefix_file):
    """The protocol run twice: every metric of every row identical (timings and load excluded)."""
    p, first, second, *_ = runs
    assert _strip(first["rows"]) == _strip(second["rows"])
    rows = {(r["model"], r["method"]): r for r in first["rows"]}
    plain = rows[("tiny-llama", "none")]
    for key in ("dormant_share@16", "value_norm_ratio@16", "value_norm_ratio_by_layer@16", "sink_rate@16"):
        assert key in plain and key in rows[("tiny-llama", "act")] and key in rows[("tiny-bert", "none")]
    assert {"none", "act", "prefix", "kv-quant", "knorm", f"prefix={prefix_file}"} <= {
        m for (name, m) in rows if name == "tiny-llama"
    }
    cell_rows = [r for r in first["rows"] if r["model"] == "tiny-llama" and r["role"] == "factorial"]
    assert len(cell_rows) == 12 and {r["design"] for r in cell_rows} == {*DESIGNS, f"kv4,prefix={prefix_file}"}
    for r in cell_rows:
        assert cell_label(r["factors"]) == r["method"]
    assert rows[("tiny-llama", "act")]["ppl_window@32"] is None  # ACT is not applied inside StreamAttention
    assert rows[("tiny-llama", "prefix")]["prefix_mass@32"] > 0
    trained = rows[("tiny-llama", f"prefix={prefix_file}")]
    assert _strip([trained])[0] == {**_strip([rows[("tiny-llama", "prefix")]])[0], "method": trained["method"]}
    by_design = {f["design"]: f for f in first["models"]["tiny-llama"]["factorials"]}
    untrained, saved = by_design["act,prefix"], by_design[f"kv4,prefix={prefix_file}"]
    assert saved["prefix"] == prefix_file and untrained["prefix"] is None
    assert [r["ppl@32"] for r in cell_rows if r["design"] == saved["design"] and not r["factors"]["kv4"]] == [
        r["ppl@32"] for r in cell_rows if r["design"] == "act,prefix" and not r["factors"]["act"]
    ]  # the same slots, file or not: the cells without kv4 / act match
    encoder = rows[("tiny-bert", "none")]
    assert "sink_rate@32" in encoder and "ppl@32" not in encoder
    assert [m for (name, m) in rows if name == "tiny-bert"] == ["none"]
    assert any(r["published"] and "source" in r for r in first["rows"])
    assert first["protocol"]["hash"] == protocol_hash(p)
    assert "log_ppl_effects" in by_design["kv4,w8a8"]
    assert first["cost_conditions"]["cores"] == "shared" and "not idle" in first["cost_conditions"]["timings"]
    assert second["cost_conditions"]["cores"] == "unknown"


def test_adapted_checkpoint_is_a_row(tiny, corpus, tmp_path):
    """adapted=DIR: the row is the whole suite on the checkpoint ``load_adapted`` rebuilds (a sink variant)."""
    from sinklab.measure.quality import quality
    from sinklab.remove.adapt import AdaptConfig, adapt, load_adapted

    small = dict(context=32, batch_size=2, long_context=64, window=16, num_sinks=2, eval_seqs=2, long_seqs=1,
                 eval_batches=1, device="cpu")  # fmt: skip
    out = str(tmp_path / "ck")
    adapt(AdaptConfig(model="tiny-llama", variant="sink", trainable="variant", tokens=2 * 32 * 2, out=out, **small))
    p = _protocol(corpus, passkey_depths=(0.95,))
    result = run_bench(["tiny-llama"], f"adapted={tmp_path / 'ck'}", None, p, tmp_path / "out")
    row = {r["method"]: r for r in result["rows"] if r["model"] == "tiny-llama"}[f"adapted={tmp_path / 'ck'}"]
    model, _ = load_adapted(tmp_path / "ck")
    assert model.config.sinklab_variant["variant"] == "sink"
    assert row["ppl@32"] == quality(model, bm.sequences(tiny[1], p, 32), eps=p.eps, parts=("ppl",))["ppl"]
    assert "dormant_share@16" in row and "passkey_full" in row


def test_resume_reuses_rows_and_refuses_another_protocol(runs, corpus):
    p, first, _, out, methods, designs = runs
    again = run_bench(["tiny-llama", "tiny-bert"], methods, designs, p, out, resume=True, cores="shared")
    assert again["rows"] == first["rows"]  # every row read back, timings included
    with pytest.raises(SinklabInputError, match="protocol"):
        run_bench(["tiny-llama"], "none", "none", _protocol(corpus, eps=0.2), out, resume=True)


def test_written_files_and_compare(runs, tmp_path, corpus):
    _, first, second, *_ = runs
    write_bench(first, tmp_path / "A")
    write_bench(second, tmp_path / "B")
    assert {f.name for f in (tmp_path / "A").iterdir()} >= {"bench.json", "bench.csv", "report.html"}
    header = (tmp_path / "A" / "bench.csv").read_text().splitlines()[0]
    assert "ppl@32" in header and "method" in header
    same = compare_runs(tmp_path / "A" / "bench.json", tmp_path / "B" / "bench.json")
    assert same["changed"] == [] and same["unchanged"] > 0 and "date_utc" in same["provenance"]
    other = json.loads((tmp_path / "B" / "bench.json").read_text())
    other["protocol"]["hash"] = "0" * 16
    (tmp_path / "B" / "bench.json").write_text(json.dumps(other))
    a, b = str(tmp_path / "A" / "bench.json"), str(tmp_path / "B" / "bench.json")
    assert_refused(["bench", "--compare", a, b, "--out", str(tmp_path / "C")], "protocols differ", tmp_path)


def test_compare_refuses_another_corpus(runs, tmp_path):
    """The same settings on another text: --compare names the two corpus hashes in one line, exit 2."""
    _, first, *_ = runs
    (tmp_path / "other.txt").write_text(TEXT.replace("sinks", "anchors"))
    moved = _protocol(str(tmp_path / "other.txt"), passkey_depths=(0.95,), num_texts=1)  # the runs' settings
    write_bench(first, tmp_path / "A")
    write_bench(run_bench(["tiny-llama"], "none", "none", moved, tmp_path / "runB"), tmp_path / "B")
    a, b = str(tmp_path / "A" / "bench.json"), str(tmp_path / "B" / "bench.json")
    assert_refused(["bench", "--compare", a, b, "--out", str(tmp_path / "C")], "corpora differ", tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "act,nope"], "accepted"),
        (["--methods", "variant"], "adapt checkpoint"),
        (["--factorial", "sinks,kv4", "--factorial", "kv4,sinks"], "same factors"),
        (["--cores", "busy"], "unknown --cores"),
    ],
)
def test_cli_refuses_bad_input_before_loading(tmp_path, args, message):
    assert_refused(["bench", *args, "--out", str(tmp_path / "x")], message, tmp_path)
