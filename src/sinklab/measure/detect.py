"""Sink-based detection (SinkProbe, arXiv 2604.10697): per-head sink features in O(T) memory and an L1 probe.

``sink_features(model, tokenizer, inputs)`` runs the model inside the ``SinkFeatures`` method, which reads each
attention site's statistics (``sinklab.ops.stats``: column sums, counts, entropy, logsumexp; never a T x T map),
the values from the ``qkv`` hook and the residual stream after each block. Per input, per (layer l, head h), with
``mass_j = colsum_j / count_j`` the mean attention key j receives (``metrics.mean_received``) over the keys that at
least ``min_queries`` valid queries see (default: a quarter of the queries, at most 32, at least 1):

    topk_mass, topk_pos [k]   the k largest mass_j and their positions (from the first real token; -1 if none)
    first_mass                alpha_1 of Gu et al. 2024 (``metrics.first_token_mass``)
    secondary                 #{j != first : mass_j > eps} (``metrics.is_sink``): non-initial sinks
    value_norm                ||v_j|| at the strongest key j = topk_pos[0] (its KV head under GQA)
    entropy                   mean row entropy in nats (``metrics.mean_entropy``)
    diag_log_attn             mean over queries of log A_ii = s_ii - lse_i (the "attention score" of LLM-Check,
                              Sriramanan et al. 2024): a non-sink attention feature
    rest_mass                 mean mass_j over the seen keys outside the top k: non-sink
and per layer ``massive``: the largest |hidden| after the block over the measured tokens (Sun et al. 2024);
per input ``loglik``: mean log p(token) of the scored tokens.

Inputs are texts (every query counts) or ``{"prompt", "answer"}`` pairs. For a pair the prompt runs first into a
KV cache (with no method attached: plain SDPA) and the answer then runs, observed, as the only queries against all
prompt + answer keys, so every statistic is that of the answer's queries (keys: the whole input), ``massive`` and
``loglik`` those of the answer's tokens. Batches are left-padded (answers right-padded); padding never counts.

``fit_probe(X, y)`` is SinkProbe's protocol: standardised features, L1-regularised logistic regression (C chosen by
an inner cross-validation), ROC-AUC of out-of-fold scores with a bootstrap 95 % interval. ``detect(...)`` measures
the sink probe and the baselines (mean log-likelihood, mean attention entropy, the same probe on non-sink features)
in one run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sinklab.errors import SinklabInputError, check_fraction
from sinklab.hf import AttentionCall, ModelSites, ModelView
from sinklab.measure import metrics
from sinklab.measure.engine import release_freed_memory
from sinklab.measure.scanner import padded_batches
from sinklab.method import Method
from sinklab.ops.stats import AttentionStats, StatsRequest, query_validity
from sinklab.progress import Progress

HEAD_FIELDS = ("first_mass", "secondary", "value_norm", "entropy", "diag_log_attn", "rest_mass")
SINK_FIELDS = ("first_mass", "secondary", "value_norm", "entropy")  # with topk_mass, topk_pos and massive
NONSINK_FIELDS = ("diag_log_attn", "rest_mass")
LOGIT_CHUNK = 256  # tokens per LM-head block when scoring log-likelihood (never [T, vocab] at once)


def _min_queries(rows: torch.Tensor, fixed: int | None) -> torch.Tensor:
    """[B, 1] queries a key needs to be seen by before its mean mass counts: ``fixed``, else rows / 4 in [1, 32]."""
    if fixed is not None:
        return torch.full_like(rows, fixed)[:, None]
    return (rows // 4).clamp(1, 32)[:, None]


@dataclass
class SinkFeatures(Method):
    """Collect sink features of every attention layer while the model runs (see the module docstring).

    >>> with SinkFeatures(top_k=4)(model) as feats:
    ...     model.base_model(input_ids=ids, attention_mask=mask)
    >>> feats.take()["first_mass"]     # [B, L, H]; clears for the next pass
    """

    kind = "measure"
    name = "sink_features"
    top_k: int = 4
    eps: float = 0.3
    min_queries: int | None = None
    _layers: dict = field(default_factory=dict, init=False, repr=False)
    _pending: dict = field(default_factory=dict, init=False, repr=False)
    _massive: dict = field(default_factory=dict, init=False, repr=False)

    def install(self, model_sites: ModelSites) -> None:
        if self.top_k < 1:
            raise SinklabInputError(f"top_k must be >= 1, got {self.top_k}")
        check_fraction("eps", self.eps)
        model_sites.ask(self, StatsRequest(colsum=True, entropy=True, lse=True))
        for site in model_sites.attention:
            model_sites.add(self, f"{site.name}.qkv", self._keep_qkv)
            model_sites.add(self, f"{site.name}.stats", self._reduce)
        for i in range(model_sites.view.num_layers):
            model_sites.add(self, f"layers.{i}.resid_post", self._keep_massive(i))

    def take(self) -> dict[str, torch.Tensor]:
        """The features of the passes since the last ``take``, stacked over attention layers, and clear."""
        out = {}
        if self._layers:
            layers = sorted(self._layers)
            for name in (*HEAD_FIELDS, "topk_mass", "topk_pos"):
                out[name] = torch.stack([self._layers[i][name] for i in layers], 1)  # [B, L, H(, k)]
        if self._massive:
            out["massive"] = torch.stack([self._massive[i] for i in sorted(self._massive)], 1)  # [B, blocks]
        self._layers, self._pending, self._massive = {}, {}, {}
        return out

    def _keep_qkv(self, qkv, call: AttentionCall) -> None:
        q, k, v = qkv  # q [B, H, T, D], k/v [B, Hkv, S, D]
        T, S = q.shape[2], k.shape[2]
        group = q.shape[1] // k.shape[1]
        k_at_query = k[:, :, S - T :].repeat_interleave(group, dim=1)  # [B, H, T, D]: query i's own key
        diag = (q.float() * k_at_query.float()).sum(-1) * call.scale  # [B, H, T] s_ii
        if call.softcap is not None:
            diag = call.softcap * torch.tanh(diag / call.softcap)
        vnorm = v.float().norm(dim=-1).repeat_interleave(group, dim=1)  # [B, H, S]
        self._pending[call.layer] = (diag, vnorm)

    def _reduce(self, stats: AttentionStats, call: AttentionCall) -> None:
        diag, vnorm = self._pending.pop(call.layer)
        B, H, S = stats.colsum.shape
        T = diag.shape[-1]
        padding = call.key_padding
        first = metrics.first_positions(padding, B, stats.colsum.device)
        mass = metrics.mean_received(stats).float()  # [B, H, S]
        seen = metrics.eligible_keys(stats, _min_queries(stats.rows, self.min_queries))  # [B, S]
        ranked = mass.masked_fill(~seen[:, None, :], -1.0)
        k = min(self.top_k, S)
        top_mass, top_idx = ranked.topk(k, dim=-1)  # [B, H, k]
        found = top_mass >= 0
        top_pos = torch.where(found, top_idx - first[:, None, None], -1)
        top_mass = top_mass.clamp_min(0.0)
        if k < self.top_k:  # inputs shorter than k keys: pad the ranks
            pad = (0, self.top_k - k)
            top_mass, top_pos = torch.nn.functional.pad(top_mass, pad), torch.nn.functional.pad(top_pos, pad, value=-1)
        sinks = metrics.is_sink(mass, self.eps) & seen[:, None, :]
        sinks[torch.arange(B), :, first] = False  # the first token is not a secondary sink
        n_seen = seen.sum(-1, keepdim=True)  # [B, 1]
        rest = ((mass * seen[:, None, :]).sum(-1) - top_mass.sum(-1)) / (n_seen - found.sum(-1)).clamp_min(1)
        if stats.lse is not None:
            valid = query_validity(T, S, padding, B, diag.device)  # [B, T]
            log_diag = torch.where(valid[:, None, :], diag - stats.lse.float(), 0.0)  # padded rows: lse -inf
            diag_log_attn = log_diag.sum(-1) / stats.rows[:, None].clamp_min(1)
        else:  # variants without a logsumexp (softpick, sigmoid, ...)
            diag_log_attn = torch.full((B, H), float("nan"), device=mass.device)
        self._layers[call.layer] = {
            "topk_mass": top_mass.cpu(),
            "topk_pos": top_pos.cpu(),
            "first_mass": metrics.first_token_mass(stats, first).float().cpu(),
            "secondary": sinks.sum(-1).float().cpu(),
            "value_norm": vnorm.gather(2, top_idx[..., :1]).squeeze(-1).cpu(),
            "entropy": metrics.mean_entropy(stats).float().cpu(),
            "diag_log_attn": diag_log_attn.float().cpu(),
            "rest_mass": rest.float().cpu(),
        }

    def _keep_massive(self, layer: int):
        def hook(hidden: torch.Tensor, call: AttentionCall) -> None:
            padding = call.key_padding
            valid = None if padding is None else padding[:, -hidden.shape[1] :]
            mag = hidden.detach().abs()  # [B, T, d]
            if valid is not None:
                mag = mag.masked_fill(~valid[:, :, None], 0.0)  # padding never counts
            self._massive[layer] = mag.amax((1, 2)).float().cpu()  # [B]
            release_freed_memory(hidden.device)

        return hook


@dataclass
class Features:
    """Sink features of N inputs (see the module docstring); L attention layers, H heads, k ranks."""

    topk_mass: torch.Tensor  # [N, L, H, k]
    topk_pos: torch.Tensor  # [N, L, H, k] positions from the first real token, -1 where fewer keys
    first_mass: torch.Tensor  # [N, L, H]
    secondary: torch.Tensor  # [N, L, H]
    value_norm: torch.Tensor  # [N, L, H]
    entropy: torch.Tensor  # [N, L, H]
    diag_log_attn: torch.Tensor  # [N, L, H]
    rest_mass: torch.Tensor  # [N, L, H]
    massive: torch.Tensor  # [N, blocks]
    loglik: torch.Tensor  # [N] mean log p of the scored tokens (the answer's, for pairs)
    tokens: torch.Tensor  # [N] real tokens of each input (prompt + answer)
    layers: list[int]  # block index of each attention layer

    def matrix(self, which: str = "sink") -> tuple[np.ndarray, list[str]]:
        """([N, F] features, F names) for a probe: ``sink`` (top-k masses and positions as a fraction of the input,
        first-token mass, secondary sinks, value norm, entropy, log massive activation) or ``nonsink``."""
        N, L, H, k = self.topk_mass.shape
        columns, names = [], []

        def add(values: torch.Tensor, label: str) -> None:  # values [N, L, H]
            columns.append(values.reshape(N, L * H))
            names.extend(f"L{layer}.H{h}.{label}" for layer in self.layers for h in range(H))

        if which == "sink":
            relative = self.topk_pos.float() / self.tokens[:, None, None, None].float()
            for r in range(k):
                add(self.topk_mass[..., r], f"top{r + 1}_mass")
                add(relative[..., r], f"top{r + 1}_pos")
            for name in SINK_FIELDS:
                add(getattr(self, name), name)
            columns.append(self.massive.log1p())
            names.extend(f"L{i}.massive" for i in range(self.massive.shape[1]))
        elif which == "nonsink":
            for name in NONSINK_FIELDS:
                add(getattr(self, name), name)
        else:
            raise SinklabInputError(f"unknown feature set {which!r}; accepted: sink, nonsink")
        return torch.cat(columns, 1).double().nan_to_num(0.0).numpy(), names


def _as_pairs(inputs) -> list[tuple[str, str | None]]:
    """Texts or {"prompt", "answer"} dicts (or (prompt, answer) tuples) -> [(prompt, answer | None)]."""
    if isinstance(inputs, str):
        inputs = [inputs]
    out = []
    for item in inputs:
        if isinstance(item, str):
            out.append((item, None))
        elif isinstance(item, dict) and isinstance(item.get("prompt"), str) and isinstance(item.get("answer"), str):
            out.append((item["prompt"], item["answer"]))
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            out.append((item["text"], None))
        elif isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
            out.append(item)
        else:
            raise SinklabInputError(
                'each input must be a text, {"text": str} or {"prompt": str, "answer": str}; got '
                f"{type(item).__name__}"
            )
    if not out:
        raise SinklabInputError("no inputs given")
    if len({a is None for _, a in out}) > 1:
        raise SinklabInputError("give either texts or prompt/answer pairs, not a mix")
    return out


def _padded(seqs: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, W] ids and [B, W] 0/1 mask of one batch, padded on the left or the right (scan's batching rule)."""
    _, ids, mask = next(padded_batches(seqs, len(seqs), pad_id, left_pad=left))
    return ids, mask


def token_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets) [B, T] from final hidden states [B, T, d] through the LM head, ``LOGIT_CHUNK`` tokens at a
    time (final logit softcapping of Gemma included)."""
    head = ModelView(model).lm_head
    cap = getattr(ModelView(model).config, "final_logit_softcapping", None)
    out = torch.empty(targets.shape, dtype=torch.float32)
    for start in range(0, hidden.shape[1], LOGIT_CHUNK):
        logits = head(hidden[:, start : start + LOGIT_CHUNK]).float()  # [B, c, V]
        if cap:
            logits = cap * torch.tanh(logits / cap)
        piece = targets[:, start : start + LOGIT_CHUNK].to(logits.device)
        out[:, start : start + LOGIT_CHUNK] = logits.log_softmax(-1).gather(-1, piece[..., None])[..., 0].cpu()
    return out


def _run_batch(model, method: SinkFeatures, pairs, tokenizer, max_tokens: int) -> dict[str, torch.Tensor]:
    """One batch through the model: features [B, ...], loglik [B], tokens [B]."""
    base = model.base_model
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompts = [tokenizer(p, verbose=False)["input_ids"][:max_tokens] for p, _ in pairs]
    ids, mask = _padded(prompts, pad_id, left=True)  # [B, P]
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    if pairs[0][1] is None:  # texts: one observed pass, every query counts
        with method(model):
            out = base(
                input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                use_cache=False,
            )  # fmt: skip
        hidden = out.last_hidden_state
        logp = token_logprobs(model, hidden[:, :-1], ids[:, 1:])  # [B, P - 1]
        scored = mask[:, 1:] * mask[:, :-1]
        tokens = mask.sum(1)
    else:  # pairs: the prompt fills a cache, the answer's queries are measured against every key
        from transformers import DynamicCache

        answers = [tokenizer(a, add_special_tokens=False, verbose=False)["input_ids"] for _, a in pairs]
        if any(len(a) == 0 for a in answers):
            raise SinklabInputError("an answer tokenizes to nothing; give non-empty answers")
        if any(len(p) + len(a) > max_tokens for p, a in zip(prompts, answers, strict=True)):
            raise SinklabInputError(f"a prompt + answer is longer than {max_tokens} tokens; raise max_tokens")
        answer_ids, answer_mask = _padded(answers, pad_id, left=False)  # [B, A]
        cache = DynamicCache(config=model.config)
        cache_kw = {ModelView(base).cache_keyword: cache, "use_cache": True}
        prompt_out = base(  # not observed
            input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device), **cache_kw
        )
        full_mask = torch.cat([mask, answer_mask], 1)  # [B, P + A]
        full_positions = (full_mask.cumsum(1) - 1).clamp_min(0)[:, ids.shape[1] :]
        with method(model):
            hidden = base(
                input_ids=answer_ids.to(device),
                attention_mask=full_mask.to(device),
                position_ids=full_positions.to(device),
                **cache_kw,
            ).last_hidden_state
        # answer token t is predicted from the hidden state before it (the prompt's last one for t = 0)
        hidden = torch.cat([prompt_out.last_hidden_state[:, -1:], hidden[:, :-1]], 1)  # [B, A, d]
        logp = token_logprobs(model, hidden, answer_ids)
        scored = answer_mask
        tokens = full_mask.sum(1)
    feats = method.take()
    feats["loglik"] = (logp * scored).sum(1) / scored.sum(1).clamp_min(1)
    feats["tokens"] = tokens
    return feats


@torch.no_grad()
def sink_features(
    model,
    tokenizer,
    texts_or_pairs,
    *,
    top_k: int = 4,
    eps: float = 0.3,
    min_queries: int | None = None,
    batch_size: int = 4,
    max_tokens: int = 4096,
    progress: bool = True,
) -> Features:
    """Sink features of each input (texts, or ``{"prompt", "answer"}`` pairs: the answer's queries); see the
    module docstring for every feature."""
    from sinklab.models import check_model

    check_model(model, tokenizer)
    if batch_size < 1:
        raise SinklabInputError(f"batch size must be >= 1, got {batch_size}")
    pairs = _as_pairs(texts_or_pairs)
    view = ModelView(model)
    layers = [info.layer for info in view.require_attention()]
    method = SinkFeatures(top_k=top_k, eps=eps, min_queries=min_queries)
    parts: list[dict[str, torch.Tensor]] = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("sink features", total=len(pairs))
        for start in range(0, len(pairs), batch_size):
            group = pairs[start : start + batch_size]
            parts.append(_run_batch(model, method, group, tokenizer, max_tokens))
            bar.advance(task, len(group))
    stacked = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    return Features(**stacked, layers=layers)


# -- the probe --------------------------------------------------------------------------------------------------

MIN_FOLDS = 3
BOOTSTRAP = 1000


def require_sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise SinklabInputError('the probe needs scikit-learn: pip install "sinklab[detect]"') from None


def check_labels(labels: Sequence[int], folds: int) -> np.ndarray:
    """Labels as an array; refuse one class, non-0/1 labels, or fewer examples per class than ``folds``."""
    y = np.asarray(labels)
    if folds < MIN_FOLDS:
        raise SinklabInputError(f"folds must be >= {MIN_FOLDS}, got {folds}")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise SinklabInputError(f"labels must be 0 or 1, got {sorted(set(y.tolist()))[:5]}")
    counts = [int((y == c).sum()) for c in (0, 1)]
    if min(counts) == 0:
        raise SinklabInputError(f"labels hold one class only ({len(y)} examples of label {int(y[0])}); need 0 and 1")
    if min(counts) < folds:
        raise SinklabInputError(
            f"too few examples for {folds}-fold cross-validation: {counts[0]} of label 0 and {counts[1]} of label 1; "
            f"need at least {folds} of each"
        )
    return y


def _estimator(train_labels: np.ndarray, seed: int):
    """Standardise, then L1 logistic regression with C chosen by an inner stratified CV on ROC-AUC."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    inner = int(min(3, np.bincount(train_labels, minlength=2).min()))
    lr = LogisticRegressionCV(
        Cs=np.logspace(-2, 1, 6).tolist(),
        cv=inner,
        l1_ratios=(1.0,),
        solver="liblinear",
        scoring="roc_auc",
        max_iter=2000,
        random_state=seed,
        use_legacy_attributes=False,
    )
    return make_pipeline(StandardScaler(), lr)


def auroc(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC-AUC of each row of labels/scores [..., N] by the Mann-Whitney rank sum (ties count half):
    AUC = (sum of positives' ranks - n1 (n1 + 1) / 2) / (n1 n0); NaN for a row holding one class."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=-1)
    n1 = y.sum(-1)
    n0 = y.shape[-1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def bootstrap_auroc(y: np.ndarray, scores: np.ndarray, n: int = BOOTSTRAP, seed: int = 0) -> dict:
    """ROC-AUC and its percentile bootstrap 95 % interval (resamples holding one class are skipped)."""
    idx = np.random.default_rng(seed).integers(0, len(y), (n, len(y)))  # [n, N] resampled examples
    aucs = auroc(y[idx], scores[idx])
    low, high = np.nanpercentile(aucs, [2.5, 97.5])
    return {"auroc": float(auroc(y, scores)), "ci_low": float(low), "ci_high": float(high)}


def cross_validated_scores(X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold probabilities [N] of the L1 probe under stratified ``folds``-fold cross-validation."""
    from sklearn.model_selection import StratifiedKFold

    scores = np.zeros(len(y))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        scores[test] = _estimator(y[train], seed).fit(X[train], y[train]).predict_proba(X[test])[:, 1]
    return scores


@dataclass
class Probe:
    """A fitted L1 probe: standardisation, coefficients over named features, and the features it selected."""

    names: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    C: float

    def score(self, X: np.ndarray) -> np.ndarray:
        """P(label 1) for features [N, F] (the columns of ``names``)."""
        z = (X - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def selected(self) -> list[dict]:
        """Features with a non-zero coefficient, largest |coefficient| (on standardised features) first."""
        chosen = [{"feature": n, "coef": round(c, 6)} for n, c in zip(self.names, self.coef, strict=True) if c != 0]
        return sorted(chosen, key=lambda e: -abs(e["coef"]))

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("names", "mean", "scale", "coef", "intercept", "C")}


def fit_probe(X: np.ndarray, y: Sequence[int], names: list[str], folds: int = 5, seed: int = 0) -> tuple[Probe, dict]:
    """Fit the L1 probe on all of (X, y) and measure it by cross-validation: (probe, {auroc, ci_low, ci_high})."""
    require_sklearn()
    y = check_labels(y, folds)
    result = bootstrap_auroc(y, cross_validated_scores(X, y, folds, seed), seed=seed)
    pipe = _estimator(y, seed).fit(X, y)
    scaler, lr = pipe[0], pipe[-1]
    probe = Probe(
        names=list(names),
        mean=scaler.mean_.tolist(),
        scale=scaler.scale_.tolist(),
        coef=lr.coef_[0].tolist(),
        intercept=float(lr.intercept_[0]),
        C=float(np.ravel(lr.C_)[0]),
    )
    return probe, result


def baseline_columns(features: Features) -> dict[str, tuple[np.ndarray, list[str]]]:
    """The baselines' features: mean token log-likelihood, mean attention entropy over layers and heads, and the
    non-sink attention features (diagonal log-attention and the mass outside the top k, per head)."""
    return {
        "loglik": (features.loglik.double().numpy()[:, None], ["loglik"]),
        "entropy": (features.entropy.double().mean((1, 2)).numpy()[:, None], ["mean_entropy"]),
        "nonsink": features.matrix("nonsink"),
    }


def selection_grid(probe: Probe, layers: list[int], num_heads: int) -> torch.Tensor:
    """[L, H] sum of |coefficient| of the selected per-head features of each (layer, head)."""
    grid = torch.zeros(len(layers), num_heads)
    row = {layer: i for i, layer in enumerate(layers)}
    for name, coef in zip(probe.names, probe.coef, strict=True):
        parts = name.split(".")
        if coef != 0 and len(parts) == 3 and parts[1].startswith("H"):
            grid[row[int(parts[0][1:])], int(parts[1][1:])] += abs(coef)
    return grid


@dataclass
class DetectResult:
    """What ``detect`` measured: the sink probe, the baselines, the fitted probe and how it was made."""

    model: str
    examples: int
    positives: int
    folds: int
    top_k: int
    eps: float
    probe: Probe
    probe_auroc: dict
    baselines: dict[str, dict]
    grid: torch.Tensor  # [L, H] |coef| per head
    layers: list[int]
    provenance: dict | None = None
    num_blocks: int | None = None  # blocks of the model (attention layers are ``layers`` among them)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "examples": self.examples,
            "positives": self.positives,
            "folds": self.folds,
            "top_k": self.top_k,
            "eps": self.eps,
            "probe": {**self.probe_auroc, "features": self.probe.selected()},
            "baselines": self.baselines,
            "fitted": self.probe.to_dict(),
            "provenance": self.provenance,
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write detect.json and selected_features.png into ``out_dir`` (all or nothing)."""
        from sinklab.report.files import staged_output

        with staged_output(out_dir) as tmp:
            (tmp / "detect.json").write_text(json.dumps(self.to_dict(), indent=1) + "\n")
            plot_selection(self.grid, self.layers, tmp / "selected_features.png", self.num_blocks)
        return Path(out_dir)


def selection_figure(grid: torch.Tensor, layers: list[int], num_blocks: int | None = None):
    """The probe's selected features on a block x head grid: row b is block b of the model, so attention layers
    keep their own indices; blocks without softmax attention (hybrids' linear-attention or skipped blocks) are
    grey rows. ``grid`` [L, H] holds one row per entry of ``layers`` (block indices, increasing)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    L, H = grid.shape
    if len(layers) != L or sorted(set(layers)) != list(layers) or (layers and layers[0] < 0):
        raise SinklabInputError(f"layers must be {L} increasing block indices >= 0, got {list(layers)}")
    rows = max(num_blocks or 0, (layers[-1] + 1) if layers else 0)
    full = np.full((rows, H), np.nan)
    full[list(layers)] = grid.double().numpy()
    fig = Figure(figsize=(max(4, 0.45 * H + 2), max(3, 0.22 * rows + 1)), layout="tight")
    ax = fig.subplots()
    cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")  # masked: no softmax attention
    im = ax.imshow(np.ma.masked_invalid(full), aspect="auto", cmap=cmap, extent=(-0.5, H - 0.5, rows - 0.5, -0.5))
    missing = rows - L
    title = "sink probe: selected features"
    if missing:
        title += f"\n(grey: {missing} block{'s' if missing > 1 else ''} without softmax attention)"
    ax.set(xlabel="head", ylabel="layer (block index)", title=title)
    fig.colorbar(im, ax=ax, label="sum of |L1 coefficient| (standardised features)")
    return fig


def plot_selection(grid: torch.Tensor, layers: list[int], path: Path, num_blocks: int | None = None):
    """Save ``selection_figure`` as PNG (through ``sinklab.report.plots.save``)."""
    from sinklab.report.plots import save

    return save(selection_figure(grid, layers, num_blocks), Path(path))


def detect(
    model,
    tokenizer,
    records: Sequence[dict],
    *,
    folds: int = 5,
    top_k: int = 4,
    eps: float = 0.3,
    batch_size: int = 4,
    max_tokens: int = 4096,
    seed: int = 0,
    model_name: str | None = None,
    progress: bool = True,
) -> DetectResult:
    """Fit and measure the sink probe and the baselines on labelled records (``{"text", "label"}`` or
    ``{"prompt", "answer", "label"}``), all with the same cross-validation folds."""
    from sinklab.provenance import run_provenance

    require_sklearn()
    y = check_labels([r["label"] for r in records], folds)
    features = sink_features(
        model, tokenizer, records, top_k=top_k, eps=eps, batch_size=batch_size, max_tokens=max_tokens,
        progress=progress,
    )  # fmt: skip
    X, names = features.matrix("sink")
    probe, probe_auroc = fit_probe(X, y, names, folds, seed)
    baselines = {}
    for name, (Xb, _) in baseline_columns(features).items():
        baselines[name] = bootstrap_auroc(y, cross_validated_scores(Xb, y, folds, seed), seed=seed)
    num_heads = features.first_mass.shape[2]
    return DetectResult(
        model=model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        examples=len(y),
        positives=int(y.sum()),
        folds=folds,
        top_k=top_k,
        eps=eps,
        probe=probe,
        probe_auroc=probe_auroc,
        baselines=baselines,
        grid=selection_grid(probe, features.layers, num_heads),
        layers=features.layers,
        provenance=run_provenance(model, seed=seed),
        num_blocks=int(features.massive.shape[1]),
    )


def score(model, tokenizer, probe: Probe, records: Sequence[dict], *, top_k: int, eps: float, **kwargs) -> np.ndarray:
    """P(label 1) of each record under a fitted probe (features extracted as when it was fitted)."""
    features = sink_features(model, tokenizer, records, top_k=top_k, eps=eps, **kwargs)
    X, names = features.matrix("sink")
    if names != probe.names:
        raise SinklabInputError(
            f"the probe was fitted on {len(probe.names)} features of another model shape; this model gives {len(names)}"
        )
    return probe.score(X)


__all__ = [
    "DetectResult",
    "Features",
    "Probe",
    "SinkFeatures",
    "bootstrap_auroc",
    "cross_validated_scores",
    "detect",
    "fit_probe",
    "score",
    "sink_features",
]
