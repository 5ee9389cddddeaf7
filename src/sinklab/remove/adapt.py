"""Adapt a pretrained model to a sink-free attention variant with a little training: ``sinklab adapt``.

The survey's open direction "lightweight adaptation for pre-trained models": instead of pre-training again (Gu et al.
2024; Qiu et al. 2025; Zuhri et al. 2025), patch the variant into the pretrained model (``sinklab.remove.patch``,
identity initialisation where the variant has one) and train only a few parameters so the model keeps its outputs
while the sink goes. Bondarenko et al. 2023 fine-tuned all of OPT-1.3B with gates (kurtosis 2086 -> 665); the gated
attention authors report that identity-initialised gates barely move in continued pre-training and a random init
spikes the loss (qiuzh20/gated_attention issue #10): ``init`` and ``beta`` are the ablation.

    student  = the patched model (variant on, LoRA on);  teacher = the SAME weights with the variant (and LoRA) off,
               under no_grad: no second copy of the model in memory
    loss     = CE(next token) + beta * KL(teacher || student) + mass_penalty * mean_{l,h} alpha_1^{l,h}
               + act_penalty * mean_l max_t |x_l,t| / d_model
    trainable: "variant" (the variant's own parameters), "lora" (peft LoRA on the attention projections + the
               variant's), "attention" (every parameter of the attention modules), "all"
    measured : before (the original model), at every evaluation and after, on held-out text, through
               ``sinklab.measure.quality.quality`` at T = 64 (Gu et al.'s Sink_1) and at ``long_context``
               (perplexity, W8A8, int4 KV, window-only and 4 sinks + window streaming, max |x|, kurtosis, Sink_1)

KL(teacher || student) = sum_v p_t(v) (log p_t(v) - log p_s(v)), averaged over the predicted positions. alpha_1 is
the mean attention the first key (BOS) receives, from the attention sites' statistics (Gu et al.'s alpha_k). With
``trainable="attention"`` or ``"all"`` the teacher's base weights move with the student's: the KL term then holds the
variant's effect, not the drift of the base weights (the cross-entropy holds that).

The identity value -30 of the ``sink`` / ``kv_bias`` slot logit gives the slot a weight of about e^-30 and a gradient
of the same size, below AdamW's eps = 1e-8: it cannot learn. ``slot_logit`` (default -10: a slot weight of at most
e^-10 = 4.5e-5 of a row, still near identity, with gradients far above eps) starts it where it can; ``None`` keeps -30.
The per-head logits (sink, sigmoid bias) learn at ``param_lr``: they have to travel several units in few steps.
Sigmoid attention has no identity; its per-head bias starts at -log(context) (Ramapuram et al. 2024) and learns.

A checkpoint holds only what changed: the trained tensors (variant parameters, LoRA matrices, or the attention /
all weights) in ``adapter.safetensors`` plus ``adapt.json``; ``load_adapted`` rebuilds the patch from the recorded
variant (``sinklab.remove.patch`` restoring ``config.sinklab_variant``, as ``load_patched`` does), the LoRA layers
from the recorded peft config, and copies the tensors back: bit-identical outputs.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sinklab.errors import SinklabInputError
from sinklab.hf.site import ModelSites, sites
from sinklab.method import Method
from sinklab.ops.stats import StatsRequest
from sinklab.remove.train import (
    Batches,
    LoopResult,
    _autocast,
    _distributed,
    heldout_batches,
    place,
    training_loop,
)
from sinklab.remove.variant import CONFIG_KEY, PREFIX, patch, patch_variants

TRAINABLE = ("variant", "lora", "attention", "all")
INITS = ("identity", "default")
METRIC_LEN = 64  # Gu et al. measure Sink_1 at T = 64
LR = {"variant": 1e-3, "lora": 1e-3, "attention": 1e-4, "all": 5e-5}  # matrices: gates, LoRA, projections
SLOT_VARIANTS = ("sink", "kv_bias")  # variants whose slot logit starts at ``slot_logit``
ADAPTER_FILE = "adapter.safetensors"


@dataclass
class AdaptConfig:
    """One adaptation run. ``tokens``: the training budget (steps = tokens // (batch_size * context * ranks))."""

    model: str = "smollm2-135m"
    variant: str = "gated"
    trainable: str = "variant"
    tokens: int = 131_072
    init: str = "identity"  # "default": the variant's fresh init (random gates) for the init ablation
    headwise: bool = False  # gated: one gate per head (W_g [d, H]) instead of per channel ([d, H * D])
    slot_logit: float | None = -10.0  # sink / kv_bias: the slot logit's start; None = the identity value -30
    beta: float = 1.0  # weight of KL(teacher || student)
    mass_penalty: float = 0.0  # weight of the mean first-token mass alpha_1
    act_penalty: float = 0.0  # weight of mean over layers of max |x| / d_model of the residual stream
    lora_rank: int = 8
    lora_alpha: float = 16.0
    context: int = 256
    batch_size: int = 8
    lr: float | None = None  # matrices (gates, LoRA, projections); default by trainable set: LR
    param_lr: float = 0.2  # the variant's per-head logits ([H]: sink logit, sigmoid bias); [H, D] biases take lr
    warmup: float = 0.1  # share of the steps
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int | None = None  # steps; default: 4 evaluations
    eval_batches: int = 2  # held-out batches of the training shape for CE and KL
    eval_seqs: int = 16  # held-out sequences of T = 64 for Sink_1
    long_context: int = 1024
    long_seqs: int = 2
    window: int = 256  # streaming window of the quality metrics
    num_sinks: int = 4
    eps: float = 0.3
    heldout: float = 0.1  # share of the token stream held out (the embedded corpus or text files)
    text: list[str] | None = None  # text files / directories; None: the embedded corpus
    corpus: str | None = None  # a built token corpus (scripts/build_train_corpus.py) instead of ``text``
    bos: str = "always"  # "always": every sequence starts with BOS; "never"
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    out: str | None = None

    def check(self, world: int = 1) -> AdaptConfig:
        """Refuse bad settings in one line before anything slow; return the config with ``lr`` filled in."""
        if self.variant not in patch_variants():
            raise SinklabInputError(f"unknown variant {self.variant!r}; accepted: {', '.join(patch_variants())}")
        if self.trainable not in TRAINABLE:
            raise SinklabInputError(f"unknown trainable set {self.trainable!r}; accepted: {', '.join(TRAINABLE)}")
        if self.init not in INITS:
            raise SinklabInputError(f"unknown init {self.init!r}; accepted: {', '.join(INITS)}")
        if self.bos not in ("always", "never"):
            raise SinklabInputError(f"unknown --bos {self.bos!r}; accepted: always, never")
        if self.headwise and self.variant != "gated":
            raise SinklabInputError(f"--headwise applies to variant 'gated' only, not {self.variant!r}")
        if self.trainable == "variant" and not _has_learnable(self.variant):
            raise SinklabInputError(
                f"variant {self.variant!r} has no learnable parameters; train it with --trainable lora, attention "
                "or all (variants with parameters: gated, sink, kv_bias, sigmoid)"
            )
        if self.trainable == "lora":
            _require_peft()
        for name in ("context", "batch_size", "eval_batches", "eval_seqs", "long_seqs", "window", "lora_rank"):
            if getattr(self, name) < 1:
                raise SinklabInputError(
                    f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}"
                )
        if self.context < 8 or self.long_context < METRIC_LEN:
            raise SinklabInputError(
                f"--context must be >= 8 and --long-context >= {METRIC_LEN}, got {self.context}, {self.long_context}"
            )
        for name in ("beta", "mass_penalty", "act_penalty", "weight_decay", "num_sinks"):
            if getattr(self, name) < 0:
                raise SinklabInputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.heldout < 1 or not 0 <= self.warmup < 1:
            raise SinklabInputError(
                f"--heldout must be in (0, 1) and warmup in [0, 1), got {self.heldout}, {self.warmup}"
            )
        per_step = self.batch_size * self.context * world
        if self.tokens < per_step:
            raise SinklabInputError(
                f"--tokens {self.tokens:,} is below one batch: {self.batch_size} sequences x {self.context} tokens"
                f"{f' x {world} ranks' if world > 1 else ''} = {per_step:,}; give --tokens >= {per_step} or a smaller "
                "--batch-size / --context"
            )
        lr = LR[self.trainable] if self.lr is None else self.lr
        if lr <= 0 or self.param_lr <= 0:
            raise SinklabInputError(f"learning rates must be > 0, got lr={lr}, param_lr={self.param_lr}")
        return replace(self, lr=lr)

    @property
    def name(self) -> str:
        variant = f"{self.variant}-headwise" if self.headwise else self.variant
        parts = [variant, self.trainable] + ([] if self.init == "identity" else [f"init-{self.init}"])
        return "-".join([*parts, f"beta{self.beta:g}"])


def _has_learnable(variant: str) -> bool:
    """The variant gets learnable parameters in ``adapt`` (gated, sink, kv_bias; sigmoid through its bias)."""
    return variant in ("gated", *SLOT_VARIANTS, "sigmoid")


def _variant_params(config: AdaptConfig) -> dict:
    """Keyword parameters for ``sinklab.remove.patch``: where the slot logit and sigmoid bias start."""
    if config.variant in SLOT_VARIANTS and config.slot_logit is not None:
        return {"sink": float(config.slot_logit)}
    if config.variant == "sigmoid":
        return {"bias": -math.log(config.context)}
    return {}


@dataclass
class AdaptResult:
    """What a run measured: ``before`` (the original model), ``history`` (one row per evaluation, the first at the
    patched, untrained model), ``after`` (the adapted model), the trained share, and the adapted model."""

    config: AdaptConfig
    before: dict
    history: list[dict]
    after: dict
    trainable_params: int
    total_params: int
    tokens: int
    steps: int
    tokens_per_second: float
    wall_seconds: float
    attention_calls: dict[str, int]
    variant_record: dict
    lora: dict | None
    trained: list[str]  # names of the trained parameters (what the checkpoint holds)
    model: nn.Module = field(repr=False)
    provenance: dict | None = None

    @property
    def trainable_frac(self) -> float:
        return self.trainable_params / max(self.total_params, 1)

    def summary(self) -> dict:
        """The study's row: before / after of every headline metric."""
        b, a, c = self.before, self.after, self.config
        return {
            "model": c.model,
            "variant": c.variant,
            "headwise": c.headwise,
            "trainable": c.trainable,
            "init": c.init,
            "beta": c.beta,
            "trainable_frac": self.trainable_frac,
            "tokens": self.tokens,
            "long_context": c.long_context,
            "ppl_before": b["ppl"],
            "ppl_after": a["ppl"],
            "ppl_change_pct": 100 * (a["ppl"] / b["ppl"] - 1),
            "sink_rate_before": b["sink_rate"],
            "sink_rate_after": a["sink_rate"],
            "sink_rate_long_before": b["sink_rate_long"],
            "sink_rate_long_after": a["sink_rate_long"],
            "first_token_mass_before": b["first_token_mass"],
            "first_token_mass_after": a["first_token_mass"],
            "max_abs_before": b["max_abs"],
            "max_abs_after": a["max_abs"],
            "kurtosis_before": b["kurtosis"],
            "kurtosis_after": a["kurtosis"],
            "ppl_w8a8_before": b["ppl_w8a8"],
            "ppl_w8a8_after": a["ppl_w8a8"],
            "ppl_kv4_before": b["ppl_kv4"],
            "ppl_kv4_after": a["ppl_kv4"],
            "stream_window_ppl_before": b["ppl_window"],
            "stream_window_ppl_after": a["ppl_window"],
            "stream_sinks_ppl_before": b["ppl_sinks"],
            "stream_sinks_ppl_after": a["ppl_sinks"],
            "kl_after": a.get("kl"),
        }

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "name": self.config.name,
            "variant_record": self.variant_record,
            "lora": self.lora,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "trainable_frac": self.trainable_frac,
            "tokens": self.tokens,
            "steps": self.steps,
            "tokens_per_second": self.tokens_per_second,
            "wall_seconds": self.wall_seconds,
            "attention_calls": self.attention_calls,
            "before": self.before,
            "history": self.history,
            "after": self.after,
            "summary": self.summary(),
            "provenance": self.provenance,
        }


# -- the objective ---------------------------------------------------------------------------------------------------
class _Penalties(Method):
    """Collects, during a forward with gradients, each layer's mean first-token mass alpha_1 (attention-site statistics:
    colsum[:, :, 0] / count[:, 0], Gu et al.) and each block's max |x| over tokens of the residual stream."""

    kind = "remove"
    name = ""  # private: not a registered method

    def __init__(self, mass: bool, act: bool):
        self.mass, self.act = mass, act
        self.alpha: list[torch.Tensor] = []
        self.max_abs: list[torch.Tensor] = []

    def install(self, model_sites: ModelSites) -> None:
        if self.mass:
            model_sites.ask(self, StatsRequest(colsum=True, entropy=False))
            for site in model_sites.attention:
                model_sites.add(self, f"{site.name}.stats", self._stats)
        if self.act:
            for layer in range(model_sites.view.num_layers):
                model_sites.add(self, f"layers.{layer}.resid_post", self._resid)

    def _stats(self, stats, call) -> None:
        if torch.is_grad_enabled():  # the student's forward, not the teacher's
            self.alpha.append(stats.colsum[:, :, 0] / stats.count[:, None, 0].clamp_min(1))  # [B, H]

    def _resid(self, hidden: torch.Tensor, call) -> None:
        if torch.is_grad_enabled():
            self.max_abs.append(hidden.float().abs().amax(dim=1).amax(dim=-1) / hidden.shape[-1])  # [B]

    def take(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        mass = torch.stack([a.mean() for a in self.alpha]).mean() if self.alpha else None
        act = torch.stack([m.mean() for m in self.max_abs]).mean() if self.max_abs else None
        self.alpha, self.max_abs = [], []
        return mass, act


def _without(penalties: _Penalties | None, model: nn.Module, fn: Callable):
    """``fn()`` with the penalty hooks detached: measurements (streaming overrides the attention) need none."""
    if penalties is None:
        return fn()
    penalties.detach()
    try:
        return fn()
    finally:
        penalties.apply(model)


@contextmanager
def teacher_mode(model: nn.Module, peft_model=None) -> Iterator[None]:
    """The same weights without the variant (and without LoRA): the teacher of the KL term, no copy of the model."""
    model_sites = sites(model)
    saved = model_sites.variant
    model_sites.variant = None
    try:
        with peft_model.disable_adapter() if peft_model is not None else nullcontext():
            yield
    finally:
        model_sites.variant = saved


def _targets(ids: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """Next-token targets [B, T-1]; the prefix is never predicted."""
    targets = ids[:, 1:].clone()
    targets[:, :prefix_len] = -100
    return targets


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) = sum_v p_t (log p_t - log p_s), mean over the positions where ``keep`` is True."""
    t = F.log_softmax(teacher_logits.float(), dim=-1)
    s = F.log_softmax(student_logits.float(), dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # [B, T]
    return kl[keep].mean()


def objective(
    model: nn.Module,
    raw: nn.Module,
    ids: torch.Tensor,
    config: AdaptConfig,
    prefix_len: int,
    peft_model=None,
    penalties: _Penalties | None = None,
) -> tuple[torch.Tensor, dict]:
    """The adaptation loss of one batch and its parts (ce, kl, mass, act); ``model`` may be DDP-wrapped ``raw``."""
    targets = _targets(ids, prefix_len)
    keep = targets != -100
    logits = model(input_ids=ids).logits[:, :-1]  # [B, T-1, V]
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    loss, parts = ce, {"ce": ce.detach()}
    if penalties is not None:
        mass, act = penalties.take()
        if mass is not None:
            loss = loss + config.mass_penalty * mass
            parts["mass"] = mass.detach()
        if act is not None:
            loss = loss + config.act_penalty * act
            parts["act"] = act.detach()
    if config.beta > 0:
        with torch.no_grad(), teacher_mode(raw, peft_model):
            teacher = raw(input_ids=ids).logits[:, :-1]
        kl = kl_divergence(teacher, logits, keep)
        loss = loss + config.beta * kl
        parts["kl"] = kl.detach()
    return loss, parts


# -- trainable sets --------------------------------------------------------------------------------------------------
def _projections(model: nn.Module) -> list[str]:
    """Full names of the attention modules' own projections (nn.Linear or GPT-2's Conv1D), never the gate."""
    from transformers.pytorch_utils import Conv1D

    modules = {id(site.info.module) for site in sites(model).attention}
    names = []
    for name, module in model.named_modules():
        if id(module) not in modules:
            continue
        for child, sub in module.named_children():
            if isinstance(sub, nn.Linear | Conv1D) and not child.startswith(PREFIX):
                names.append(f"{name}.{child}")
    return names


def _require_peft() -> None:
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise SinklabInputError(
            "--trainable lora needs peft (pip install 'sinklab[adapt]'); without it: --trainable variant, attention "
            "or all"
        )


def inject_lora(model: nn.Module, rank: int, alpha: float, targets: list[str]):
    """peft LoRA (Hu et al. 2021: W + (alpha / r) B A, B = 0 at the start) on the ``targets`` modules, injected into
    ``model`` in place; returns the ``PeftModel`` (whose ``disable_adapter`` gives the teacher). No dropout."""
    _require_peft()
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=list(targets))
    with warnings.catch_warnings():  # peft asks transformers a deprecated question (is_gradient_checkpointing)
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, lora)


def select_trainable(model: nn.Module, config: AdaptConfig):
    """Freeze everything but ``config.trainable``; returns the peft model for "lora" (LoRA injected into ``model``
    in place), else None."""
    peft_model = None
    for p in model.parameters():
        p.requires_grad_(False)
    if config.trainable == "lora":
        targets = _projections(model)
        if not targets:
            raise SinklabInputError(f"{type(model).__name__}: no attention projections found for LoRA")
        peft_model = inject_lora(model, config.lora_rank, config.lora_alpha, targets)
    elif config.trainable == "attention":
        for site in sites(model).attention:
            for p in site.info.module.parameters():
                p.requires_grad_(True)
    elif config.trainable == "all":
        for p in model.parameters():
            p.requires_grad_(True)
    for name, p in model.named_parameters():
        if PREFIX in name:
            p.requires_grad_(True)
    return peft_model


def _lora_record(peft_model) -> dict | None:
    if peft_model is None:
        return None
    cfg = peft_model.peft_config["default"]
    return {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "target_modules": sorted(cfg.target_modules)}


def _optimizer(model: nn.Module, config: AdaptConfig, fused: bool) -> torch.optim.Optimizer:
    """AdamW: matrices (and [H, D] key/value biases) at ``lr`` with weight decay, the variant's per-head logits at
    ``param_lr``."""
    matrices, vectors = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (vectors if PREFIX in name and p.dim() < 2 else matrices).append(p)
    groups = [
        {"params": matrices, "weight_decay": config.weight_decay, "lr_scale": 1.0},
        {"params": vectors, "weight_decay": 0.0, "lr_scale": config.param_lr / config.lr},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=(0.9, 0.95), fused=fused)


def _lr(step: int, steps: int, config: AdaptConfig) -> float:
    """Linear warmup over ``warmup`` of the steps, then cosine decay to ``min_lr_ratio`` * lr."""
    warmup = int(config.warmup * steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# -- data ------------------------------------------------------------------------------------------------------------
def _token_stream(config: AdaptConfig, tokenizer, vocab_size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train tokens, held-out tokens, where they came from): a built corpus's splits, or texts joined by EOS with the
    last ``heldout`` share held out (one contiguous piece, never trained on)."""
    from sinklab.provenance import describe_texts, digest, file_sources

    if config.corpus is not None:
        from sinklab.data.train_corpus import load_corpus

        corpus = load_corpus(config.corpus)
        if corpus.vocab_size > vocab_size:
            raise SinklabInputError(
                f"corpus {config.corpus} was tokenized with {corpus.tokenizer!r} ({corpus.vocab_size} ids), more than "
                f"the model's {vocab_size} embeddings; build it with the model's tokenizer"
            )
        train, held = np.asarray(corpus.train), np.asarray(corpus.val)
        source = {"corpus": config.corpus, "tokenizer": corpus.tokenizer}
    else:
        from sinklab.data import read_texts

        texts = read_texts(config.text)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        ids: list[int] = []
        for text in texts:
            ids += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + eos
        stream = np.asarray(ids, dtype=np.int64)
        cut = int(len(stream) * (1 - config.heldout))
        train, held = stream[:cut], stream[cut:]
        source = {"texts": file_sources(config.text) if config.text else describe_texts(None)}
    source.update(train_tokens=len(train), heldout_tokens=len(held), train_sha256=digest(train))
    source["heldout_sha256"] = digest(held)
    return train, held, source


@dataclass
class _Data:
    train: Batches
    val: Batches
    short: torch.Tensor  # [eval_seqs, 64] held-out sequences for Sink_1 at T = 64
    long: torch.Tensor  # [long_seqs, long_context]
    source: dict


def _data(config: AdaptConfig, tokenizer, vocab_size: int, max_positions: int | None) -> _Data:
    if config.bos == "always" and tokenizer.bos_token_id is None:
        raise SinklabInputError("--bos always needs a tokenizer with a BOS token; this one has none: use --bos never")
    prefix = [tokenizer.bos_token_id] if config.bos == "always" else []
    if max_positions is not None and max(config.context, config.long_context) > max_positions:
        raise SinklabInputError(
            f"--context {config.context} / --long-context {config.long_context} exceed the model's {max_positions} "
            "positions"
        )
    train, held, source = _token_stream(config, tokenizer, vocab_size)
    body = config.context - len(prefix)
    data = Batches(train, body, prefix, config.seed)
    val = Batches(held, body, prefix, config.seed)
    short = Batches(held, METRIC_LEN - len(prefix), prefix, config.seed)
    long = Batches(held, config.long_context - len(prefix), prefix, config.seed)
    need = {
        "training": (data.windows, 1),
        "held-out CE/KL": (val.windows, config.batch_size),
        "held-out T=64": (short.windows, config.eval_seqs),
        "held-out long context": (long.windows, config.long_seqs),
    }
    for what, (have, want) in need.items():
        if have < want:
            raise SinklabInputError(
                f"not enough text for the {what} sequences: {len(train):,} training and {len(held):,} held-out tokens "
                f"give {have}, need {want}; give more text (--text / --corpus) or smaller sequence counts"
            )
    return _Data(
        data,
        val,
        short.take(place(config.eval_seqs, short.windows)),  # spread over the held-out text, as train's probes
        long.take(place(config.long_seqs, long.windows)),
        {**source, "bos": config.bos, "prefix": prefix},
    )


# -- measurement -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def measure(model: nn.Module, data: _Data, config: AdaptConfig, teacher=None) -> dict:
    """The quality metrics (``sinklab.measure.quality``) at T = 64 and at the long context, plus held-out CE and
    KL(teacher || model) at the training shape (``teacher``: a context manager that turns the model into its
    teacher; None: no KL). Keys: Sink_1 and first-token mass at T = 64 (``sink_rate``, ``first_token_mass``), the
    rest at the long context (``ppl``, ``ppl_w8a8``, ``ppl_kv4``, ``ppl_window``, ``ppl_sinks``, ``max_abs``,
    ``kurtosis``, ``sink_rate_long``), every value of both calls under ``t64`` and ``long``."""
    from sinklab.measure.quality import quality

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    kw = dict(eps=config.eps, window=config.window, num_sinks=config.num_sinks)
    with _autocast(device):  # CUDA: as in training (float32 master weights in a bf16 model need it)
        short = _floats(quality(model, data.short.to(device), parts=("ppl",), **kw))  # ppl brings the sink metrics
        long = _floats(quality(model, data.long.to(device), **kw))
    row = {k: long[k] for k in ("ppl", "ppl_w8a8", "ppl_kv4", "ppl_window", "ppl_sinks", "max_abs", "kurtosis")}
    row.update(sink_rate=short["sink_rate"], first_token_mass=short["first_token_mass"])
    row["sink_rate_long"] = long["sink_rate"]
    if "stream_unavailable" in long:  # a row-wise variant: no parallel streaming evaluation (quality says why)
        row["stream_unavailable"] = long["stream_unavailable"]
    ce, kl = [], []
    prefix_len = len(data.val.prefix)
    for ids in heldout_batches(data.val, config.eval_batches, config.batch_size):
        ids = ids.to(device)
        targets = _targets(ids, prefix_len)
        with _autocast(device):
            logits = model(input_ids=ids).logits[:, :-1]
        ce.append(F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()).item())
        if teacher is not None:
            with teacher(), _autocast(device):
                reference = model(input_ids=ids).logits[:, :-1]
            kl.append(kl_divergence(reference, logits, targets != -100).item())
    row["val_loss"] = float(np.mean(ce))
    if kl:
        row["kl"] = float(np.mean(kl))
    # the names sinklab train's curves read (sinklab.report.train)
    row.update(first_token_mass_mean=row["first_token_mass"], max_activation=row["max_abs"], t64=short, long=long)
    model.train(was_training)
    return row


def _floats(values: dict) -> dict:
    """Scalars as floats; tensors and arrays as their mean (first-token mass [L, H] -> its mean over heads)."""
    out = {}
    for k, v in values.items():
        if isinstance(v, torch.Tensor | np.ndarray):
            v = float(np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64).mean())
        elif isinstance(v, list):
            v = float(np.mean(np.asarray(v, dtype=np.float64)))
        elif isinstance(v, int | float):
            v = float(v)
        out[k] = v
    return out


# -- the run ---------------------------------------------------------------------------------------------------------
def _check_model(model: nn.Module, ids: torch.Tensor) -> None:
    """Refuse what adapt cannot train: a model without a causal LM head, or one the variant cannot run on."""
    from sinklab.measure.scanner import is_causal

    if not is_causal(model) or model.get_output_embeddings() is None:
        raise SinklabInputError(
            f"{type(model).__name__} is not a causal language model with an LM head; adapt trains next-token "
            "prediction (accepted: *ForCausalLM models)"
        )
    with torch.no_grad():
        model(input_ids=ids)  # the variant's own refusals (e.g. a model with its own sink logits) surface here


def adapt(
    config: AdaptConfig, model: nn.Module | None = None, tokenizer=None, before: dict | None = None
) -> AdaptResult:
    """Adapt ``model`` (default: ``sinklab.models.load(config.model)``) to ``config.variant``; on rank 0 write
    ``config.out`` (adapt.json, report.html, curves.png, adapter.safetensors) when it is set. The model is patched
    and trained in place and returned in the result. ``before``: the original model's ``measure`` on the same data
    when already known (a study measures it once); None measures it.

    On CUDA the trained parameters of a half-precision model are kept in float32 (master weights) and every forward,
    training and measurement alike, runs under bf16 autocast (run a loaded adapted model so too)."""
    from sinklab.models import load, resolve_device
    from sinklab.provenance import run_provenance
    from sinklab.report.files import check_output

    rank, world, _ = _distributed()
    config = config.check(world)
    if config.out is not None:
        check_output(config.out)
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if model is None:
        model, tokenizer = load(config.model, device=device, dtype=config.dtype)
    elif tokenizer is None:
        raise SinklabInputError("adapt(config, model, tokenizer): a model needs its tokenizer")
    model.to(device)
    vocab = model.get_input_embeddings().num_embeddings
    data = _data(config, tokenizer, vocab, getattr(model.config, "max_position_embeddings", None))
    probe = data.short[:1, :8].to(device)
    _check_model(model, probe)
    _check_variant(model, config, probe)
    started = time.perf_counter()
    if before is None:
        before = measure(model, data, config) if rank == 0 else {}

    torch.manual_seed(config.seed)
    patch(model, config.variant, init=config.init, headwise=config.headwise, **_variant_params(config))
    peft_model = select_trainable(model, config)
    if device.type == "cuda":  # float32 master weights of what trains; forwards run under bf16 autocast
        for p in model.parameters():
            if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
                p.data = p.data.float()
    trained = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    raw, net = model, model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    penalties = None
    if config.mass_penalty > 0 or config.act_penalty > 0:
        penalties = _Penalties(config.mass_penalty > 0, config.act_penalty > 0)
        penalties.apply(raw)
    optimizer = _optimizer(raw, config, fused=device.type == "cuda")
    per_step = config.batch_size * config.context * world
    steps = config.tokens // per_step
    eval_every = config.eval_every or max(steps // 4, 1)
    prefix_len = len(data.train.prefix)

    def teacher():
        return teacher_mode(raw, peft_model)

    model.eval()  # no dropout: the student and its teacher are the same deterministic network but for the variant
    try:
        loop: LoopResult = training_loop(
            net,
            optimizer,
            steps=steps,
            batch=lambda step: data.train.step(step, config.batch_size, rank, world),
            loss=lambda m, ids: objective(m, raw, ids, config, prefix_len, peft_model, penalties),
            lr=lambda step: _lr(step, steps, config),
            evaluate=lambda step: _without(penalties, raw, lambda: measure(raw, data, config, teacher)),
            eval_every=eval_every,
            grad_clip=config.grad_clip,
            tokens_per_step=per_step,
            description=f"adapt {config.name}",
            info=lambda row: f"ppl {row['ppl']:.2f} kl {row.get('kl', 0):.4f} sink {row['sink_rate']:.1%}",
            rank=rank,
            world=world,
        )
    finally:
        if penalties is not None:
            penalties.detach()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    after = loop.history[-1] if rank == 0 else {}
    provenance = run_provenance(raw, texts=data.source, bos=config.bos, seed=config.seed)
    result = AdaptResult(
        config=config,
        before=before,
        history=loop.history,
        after=after,
        trainable_params=sum(p.numel() for p in trained),
        total_params=total,
        tokens=steps * per_step,
        steps=steps,
        tokens_per_second=steps * per_step / max(loop.train_time, 1e-9),
        wall_seconds=time.perf_counter() - started,
        attention_calls=loop.attention_calls,
        variant_record=dict(getattr(model.config, CONFIG_KEY)),
        lora=_lora_record(peft_model),
        trained=[n for n, p in model.named_parameters() if any(p is t for t in trained)],
        model=model,
        provenance=provenance,
    )
    if rank == 0 and config.out is not None:
        save(result, config.out)
    if world > 1:
        torch.distributed.barrier()
    return result


def _check_variant(model: nn.Module, config: AdaptConfig, ids: torch.Tensor) -> None:
    """Patch, run one short forward, unpatch: a variant the model cannot take is refused before any work."""
    from sinklab.remove.variant import unpatch

    patch(model, config.variant, init=config.init, headwise=config.headwise, **_variant_params(config))
    try:
        _check_model(model, ids)
    except SinklabInputError as exc:
        raise SinklabInputError(f"variant {config.variant!r} cannot run on {type(model).__name__}: {exc}") from None
    finally:
        unpatch(model)


# -- checkpoints -----------------------------------------------------------------------------------------------------
def save(result: AdaptResult, out: str | Path) -> Path:
    """Write adapt.json, adapter.safetensors (only the trained tensors), curves.png and report.html, all at once."""
    from safetensors.torch import save_file

    from sinklab.report.files import staged_output
    from sinklab.report.page import figure_html, page, table_html
    from sinklab.report.train import training_curves

    record = result.to_dict()
    params = dict(result.model.named_parameters())
    with staged_output(out) as tmp:
        tensors = {n: params[n].detach().contiguous().cpu() for n in result.trained}
        save_file(tensors, str(tmp / ADAPTER_FILE), metadata={"format": "sinklab-adapt", "name": result.config.name})
        record["adapter"] = {"file": ADAPTER_FILE, "tensors": len(tensors)}
        (tmp / "adapt.json").write_text(json.dumps(record, indent=1, default=str))
        plot = training_curves([{"name": result.config.name, "history": result.history}], tmp / "curves.png")
        title = f"sinklab adapt: {result.config.name}"
        body = _body(result, table_html, figure_html(plot))
        (tmp / "report.html").write_text(page(title, _header(result), result.provenance, body))
    return Path(out)


REPORT_METRICS = (
    ("ppl", "perplexity (long context)"),
    ("sink_rate", "Sink_1^eps (T=64)"),
    ("sink_rate_long", "Sink_1^eps (long context)"),
    ("first_token_mass", "first-token mass (T=64)"),
    ("max_abs", "max |x| residual"),
    ("kurtosis", "kurtosis residual"),
    ("ppl_w8a8", "W8A8 perplexity"),
    ("ppl_kv4", "int4-KV perplexity"),
    ("ppl_window", "window-only streaming perplexity"),
    ("ppl_sinks", "4 sinks + window streaming perplexity"),
    ("val_loss", "held-out CE (training shape)"),
    ("kl", "held-out KL(teacher || model)"),
)


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _header(result: AdaptResult) -> list[tuple[str, str]]:
    c = result.config
    return [
        ("model", c.model),
        ("variant", f"{c.variant}{' (headwise)' if c.headwise else ''}, init {c.init}"),
        (
            "trainable",
            f"{c.trainable}: {result.trainable_params:,} of {result.total_params:,} "
            f"({100 * result.trainable_frac:.3f} %)",
        ),
        ("tokens", f"{result.tokens:,} ({result.steps} steps of {c.batch_size} x {c.context})"),
        ("loss", f"CE + {c.beta:g} KL + {c.mass_penalty:g} first-token mass + {c.act_penalty:g} max|x|/d"),
        ("held-out", f"{c.eval_seqs} x T=64 and {c.long_seqs} x {c.long_context} tokens, window {c.window}"),
    ]


def _body(result: AdaptResult, table_html, plot_html: str) -> str:
    rows = [
        {"metric": label, "before": _fmt(result.before.get(k)), "after": _fmt(result.after.get(k))}
        for k, label in REPORT_METRICS
    ]
    curve = [
        {k: _fmt(row.get(k)) for k in ("step", "tokens", "train_loss", *dict(REPORT_METRICS))} for row in result.history
    ]
    return (
        "<h2>Before and after</h2>"
        "<p>before: the original model; after: the adapted model; both on the same held-out text.</p>"
        + table_html(rows, ["metric", "before", "after"], limit=len(rows))
        + "<h2>Curves</h2>"
        + plot_html
        + table_html(curve, ["step", "tokens", "train_loss", *dict(REPORT_METRICS)], limit=len(curve))
    )


def load_adapted(path: str | Path, model: nn.Module | None = None, tokenizer=None, device=None, dtype=None):
    """Rebuild an adapted model from ``path`` (written by ``adapt``): the base model (``model``, or
    ``sinklab.models.load`` of the recorded name), the variant restored from its record through
    ``sinklab.remove.patch``, the LoRA layers from their peft config, then the saved tensors. Returns
    ``(model, tokenizer)``; outputs are bit-identical to the adapted model's."""
    from safetensors.torch import load_file

    from sinklab.models import load

    path = Path(path)
    meta_file = path / "adapt.json"
    if not meta_file.exists() or not (path / ADAPTER_FILE).exists():
        raise SinklabInputError(f"{path} holds no sinklab adapt checkpoint (adapt.json and {ADAPTER_FILE})")
    record = json.loads(meta_file.read_text())
    if model is None:
        model, tokenizer = load(record["config"]["model"], device=device, dtype=dtype)
    setattr(model.config, CONFIG_KEY, record["variant_record"])
    patch(model)  # restore the recorded variant (the path load_patched takes)
    if record.get("lora"):
        lora = record["lora"]
        inject_lora(model, lora["r"], lora["lora_alpha"], lora["target_modules"])
    saved = load_file(str(path / ADAPTER_FILE))
    params = dict(model.named_parameters())
    missing = sorted(set(saved) - set(params))
    if missing:
        raise SinklabInputError(f"{path}: the model has no parameter {missing[0]} (was it adapted from another model?)")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].data = tensor.to(params[name].device)  # in the dtype it was trained in
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), tokenizer
