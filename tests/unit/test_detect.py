"""Sink features against eager `output_attentions` (T x T maps) on tiny models, and the L1 probe on known data."""

import numpy as np
import pytest
import torch

from sinklab.errors import SinklabInputError
from sinklab.measure.detect import SinkFeatures, check_labels, fit_probe, sink_features
from sinklab.method import get_method
from sinklab.models import load
from sinklab.models.tiny import tiny_arch, tiny_hybrid
from sinklab.testing import assert_close

TEXTS = ["The quick brown fox jumps over the lazy dog, again and again.", "Short text, then more."]
PAIRS = [
    {"prompt": "Question: which animal jumps?", "answer": " The quick brown fox."},
    {"prompt": "Say yes.", "answer": " yes"},
]
TOP_K, EPS = 3, 0.2


def _eager(model, tok, prompt: str, answer: str | None):
    """One input alone through eager attention: every feature from the full [H, T, T] maps (answer rows only)."""
    ids = tok(prompt)["input_ids"]
    start = len(ids)  # first measured query
    if answer is None:
        start = 0
    else:
        ids = ids + tok(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids])
    values, blocks = {}, {}
    view_layers = model.model.layers
    handles = [
        layer.self_attn.v_proj.register_forward_hook(lambda m, a, out, i=i: values.__setitem__(i, out))
        for i, layer in enumerate(view_layers)
    ]
    handles += [
        layer.register_forward_hook(
            lambda m, a, out, i=i: blocks.__setitem__(i, out[0] if isinstance(out, tuple) else out)
        )
        for i, layer in enumerate(view_layers)
    ]
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
        for h in handles:
            h.remove()
    T = ids.shape[1]
    rows = T - start
    min_q = max(1, min(32, rows // 4))
    cfg = model.config
    kv, D = cfg.num_key_value_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    feats = {k: [] for k in ("topk_mass", "topk_pos", "first_mass", "secondary", "value_norm", "entropy", "diag")}
    for layer, A in enumerate(out.attentions):
        A = A[0, :, start:].double()  # [H, rows, T]
        H = A.shape[0]
        allowed = A > 0
        window = getattr(cfg, "sliding_window", None)
        rule = torch.ones(T, T, dtype=torch.bool).tril()[start:]
        if getattr(cfg, "layer_types", None) and cfg.layer_types[layer] == "sliding_attention":
            rule = rule & torch.ones(T, T, dtype=torch.bool).triu(-(window - 1))[start:]
        assert not (allowed & ~rule).any()
        count = rule.sum(0).double()  # [T] answer queries that may attend each key
        mass = A.sum(1) / count.clamp_min(1)  # [H, T]
        seen = count >= min_q
        ranked = mass.masked_fill(~seen, -1.0)
        top, idx = ranked.topk(TOP_K, -1)
        feats["topk_mass"].append(top.clamp_min(0))
        feats["topk_pos"].append(torch.where(top >= 0, idx, -1))
        feats["first_mass"].append(mass[:, 0])
        sinks = (mass > EPS) & seen
        sinks[:, 0] = False
        feats["secondary"].append(sinks.sum(-1).double())
        v = values[layer][0].view(T, kv, D).norm(dim=-1).T.repeat_interleave(H // kv, 0)  # [H, T]
        feats["value_norm"].append(v.gather(1, idx[:, :1])[:, 0])
        feats["entropy"].append(-torch.special.xlogy(A, A).sum(-1).mean(-1))
        feats["diag"].append(torch.diagonal(A, offset=start, dim1=-2, dim2=-1).log().mean(-1))
    stacked = {k: torch.stack(v) for k, v in feats.items()}  # [L, H(, k)]
    stacked["massive"] = torch.stack([b[0, start:].abs().max() for _, b in sorted(blocks.items())])
    logp = out.logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    stacked["loglik"] = logp[max(start - 1, 0) :].mean()
    return stacked


@pytest.mark.parametrize(("name", "inputs"), [("tiny-llama", TEXTS), ("tiny-llama", PAIRS), ("gemma3", TEXTS)])
def test_features_equal_eager(name, inputs):
    """Batched (left-padded prompts, right-padded answers) features of each input equal the eager computation on
    that input alone, within 1e-5 fp32: padding never counts."""
    model, tok = load(name) if name.startswith("tiny") else tiny_arch(name)
    feats = sink_features(model, tok, inputs, top_k=TOP_K, eps=EPS, batch_size=2, progress=False)
    for b, item in enumerate(inputs):
        prompt, answer = (item, None) if isinstance(item, str) else (item["prompt"], item["answer"])
        ref = _eager(model, tok, prompt, answer)
        for field in ("topk_mass", "first_mass", "entropy", "massive"):
            assert_close(getattr(feats, field)[b].double(), ref[field], torch.float32, field)
        assert_close(feats.diag_log_attn[b].double(), ref["diag"], torch.float32, "diag_log_attn")
        assert_close(feats.loglik[b].double(), ref["loglik"], torch.float32, "loglik")
        assert torch.equal(feats.topk_pos[b], ref["topk_pos"])
        assert torch.equal(feats.secondary[b].double(), ref["secondary"])
        if name == "tiny-llama":
            assert_close(feats.value_norm[b].double(), ref["value_norm"], torch.float32, "value_norm")


def test_feature_matrix_names_and_method_default():
    model, tok = load("tiny-llama")
    feats = sink_features(model, tok, TEXTS, top_k=2, progress=False)
    X, names = feats.matrix("sink")
    L, H = 3, 4
    assert X.shape == (2, L * H * (2 * 2 + 4) + L) and len(names) == X.shape[1] and len(set(names)) == len(names)
    assert "L2.H3.top2_pos" in names and "L1.massive" in names
    Xn, nonsink = feats.matrix("nonsink")
    assert Xn.shape == (2, L * H * 2) and all(n.endswith(("diag_log_attn", "rest_mass")) for n in nonsink)
    assert isinstance(get_method("sink_features")(), SinkFeatures)
    with pytest.raises(SinklabInputError, match="not a mix"):
        sink_features(model, tok, [TEXTS[0], PAIRS[0]], progress=False)


def test_probe_finds_the_informative_feature():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 30)
    X = rng.normal(size=(60, 20))
    X[:, 7] += 2.5 * y
    probe, result = fit_probe(X, y, [f"f{i}" for i in range(20)], folds=3)
    assert result["auroc"] > 0.9 and result["ci_low"] <= result["auroc"] <= result["ci_high"]
    assert probe.selected()[0]["feature"] == "f7"
    assert np.corrcoef(probe.score(X), y)[0, 1] > 0.5


@pytest.mark.parametrize(
    ("labels", "folds", "match"),
    [([1, 1, 1, 1], 3, "one class"), ([0, 1, 0, 1, 0], 3, "too few"), ([0, 1, 2], 3, "0 or 1"), ([0, 1], 2, ">= 3")],
)
def test_check_labels_refuses(labels, folds, match):
    with pytest.raises(SinklabInputError, match=match):
        check_labels(labels, folds)


def test_auroc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from sinklab.measure.detect import auroc

    rng = np.random.default_rng(1)
    for _ in range(5):
        y, s = rng.integers(0, 2, 40), rng.integers(0, 5, 40).astype(float)  # ties on purpose
        assert abs(auroc(y, s) - roc_auc_score(y, s)) < 1e-12


def test_selection_grid_rows_are_block_indices(tmp_path):
    """Attention layers 0, 2, 5 of 7 blocks: the plotted row b is block b; the other blocks are masked (grey)."""
    from sinklab.measure.detect import Probe, plot_selection, selection_figure, selection_grid

    layers, H = [0, 2, 5], 3
    names = [f"L{layer}.H{h}.first_mass" for layer in layers for h in range(H)] + ["L6.massive"]
    coef = [0.0] * len(names)
    coef[names.index("L5.H1.first_mass")], coef[names.index("L2.H0.first_mass")] = -0.5, 0.25
    coef[-1] = 9.0  # per-layer features are not on the head grid
    probe = Probe(names, [0.0] * len(names), [1.0] * len(names), coef, 0.0, 1.0)
    grid = selection_grid(probe, layers, H)
    assert grid[2, 1] == 0.5 and grid[1, 0] == 0.25 and grid.sum() == 0.75
    image = selection_figure(grid, layers, num_blocks=7).axes[0].images[0]
    shown = image.get_array()
    assert shown.shape == (7, H) and image.get_extent() == [-0.5, H - 0.5, 6.5, -0.5]
    assert shown.mask[[1, 3, 4, 6]].all() and not shown.mask[layers].any()
    assert shown[5, 1] == 0.5 and shown[2, 0] == 0.25 and shown[0].sum() == 0
    plot = plot_selection(grid, layers, tmp_path / "grid.png", num_blocks=7)
    assert plot.path.stat().st_size > 0 and "grey: 4 blocks without softmax attention" in plot.panels[0]["title"]
    with pytest.raises(SinklabInputError, match="increasing"):
        selection_figure(grid, [2, 0, 5])


def test_detect_on_a_hybrid_plots_its_attention_layer(tmp_path):
    """A hybrid whose block 0 is linear attention: features and the grid hold block 1 only, named L1."""
    from sinklab.measure.detect import detect, selection_figure

    model, tok = tiny_hybrid()
    records = [{"text": f"{'ignore the above ' if i % 2 else ''}record number {i}.", "label": i % 2} for i in range(6)]
    result = detect(model, tok, records, folds=3, top_k=2, progress=False)
    assert result.layers == [1] and result.num_blocks == 2 and result.grid.shape == (1, 4)
    assert all(n.startswith(("L1.H", "L0.massive", "L1.massive")) for n in result.probe.names)
    result.save(tmp_path / "out")
    assert (tmp_path / "out" / "selected_features.png").stat().st_size > 0
    shown = selection_figure(result.grid, result.layers, result.num_blocks).axes[0].images[0].get_array()
    assert shown.shape == (2, 4) and shown.mask[0].all() and not shown.mask[1].any()
