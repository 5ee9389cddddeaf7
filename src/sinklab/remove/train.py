"""Pre-training study: train a small Llama-style decoder from scratch and watch whether an attention sink grows.

Gu et al. 2024 ("When Attention Sink Emerges in Language Models") pre-trained 60M LLaMA models and saw the first-token
sink appear after 1-2k steps; weight decay, the amount of data, a learnable key bias and unnormalised sigmoid
attention changed it. StreamingLLM (Xiao et al. 2023) prepended a learnable sink token to every sample; gated
attention (Qiu et al. 2025), softpick (Zuhri et al. 2025) and clipped softmax (Bondarenko et al. 2023) removed the
sink together with the massive activations that break 8-bit quantization. ``train`` runs any of them:

    model  = AutoModelForCausalLM(AutoConfig.for_model(architecture, preset, **model_config)), random init (Llama by
             default; any transformers decoder, hybrids too: model_config holds e.g. its layer_types), patched by
             sinklab.remove.patch(model, variant)
    data   = non-overlapping windows of a token corpus (sinklab.data.train_corpus), prefix = [sink] [BOS] as asked
    optim  = AdamW, linear warmup then cosine decay to min_lr_ratio * lr, gradient clipping, bf16 autocast on CUDA
    every eval_every steps, on held-out text: validation loss; Sink_1^eps at T=64 and first-token mass through
    sinklab's measurement engine; max |x| and kurtosis of the residual stream. At the end: perplexity in full
    precision and after W8A8 fake quantization (sinklab.remove.quant).

Multi-GPU: launch with ``torchrun --nproc_per_node N``; torch.distributed DDP does the rest (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sinklab.errors import SinklabInputError
from sinklab.measure import scan
from sinklab.ops import attention_calls
from sinklab.report.files import staged_output

VARIANTS = ("softmax", "softmax1", "sink", "kv_bias", "softpick", "clipped", "sigmoid", "gated")
BOS_MODES = ("always", "never")
METRIC_WINDOWS = ("stream", "documents")
METRIC_LEN = 64  # Gu et al. measure Sink_1 on sequences of T = 64 tokens


@dataclass(frozen=True)
class Preset:
    """Model shape and training recipe of one study scale."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    context: int
    batch_size: int
    lr: float
    warmup: int
    steps: int
    eval_every: int
    eval_batches: int
    metric_seqs: int


PRESETS: dict[str, Preset] = {
    # CPU test scale: seconds on 2 cores (byte tokens, embedded pydoc corpus)
    "tiny": Preset(64, 2, 4, 128, 64, 8, 3e-3, 5, 30, 10, 2, 8),
    # GPU study scale: 8 x 512, SmolLM2's 49k vocabulary tied in and out (~50M parameters), context 256
    "small": Preset(512, 8, 8, 1376, 256, 48, 2e-3, 100, 1000, 100, 8, 64),
    # Gu et al.'s 60M LLaMA (sail-sg/Attention-Sink, tinyllama_60M: 10 x 768, 8 heads, FFN 1536, context 2048,
    # lr 4e-4, warmup 100, Sink_1 on 100 sequences); their batch is 512 x 2048, here 16 x 2048 per process
    "gu60m": Preset(768, 10, 8, 1536, 2048, 16, 4e-4, 100, 2000, 250, 4, 100),
}


@dataclass
class TrainConfig:
    """One pre-training run. ``None`` fields take the preset's value."""

    variant: str = "softmax"
    preset: str = "tiny"
    architecture: str = "llama"  # a transformers model type (olmo3, olmo_hybrid, qwen3_next, gemma3_text, ...)
    model_config: dict = field(default_factory=dict)  # extra config fields of the architecture (layer_types, ...)
    steps: int | None = None
    corpus: str | None = None  # a directory from scripts/build_train_corpus.py; None: the embedded byte corpus
    variant_params: dict = field(default_factory=dict)  # extra parameters for sinklab.remove.patch
    weight_decay: float = 0.1
    sink_token: bool = False  # StreamingLLM: a dedicated learnable token at position 0 of every sequence
    bos: Literal["always", "never"] = "always"
    batch_size: int | None = None  # per process
    context: int | None = None
    lr: float | None = None
    warmup: int | None = None
    min_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int | None = None
    eval_batches: int | None = None
    metric_seqs: int | None = None
    # what Sink_1 is measured on: consecutive T=64 windows of the held-out stream, or the first tokens of held-out
    # documents (Gu et al. probe the start of 100 texts)
    metric_windows: Literal["stream", "documents"] = "stream"
    eps: float = 0.3
    max_epochs: float = 2.0  # refuse runs that would pass over the training tokens more often than this
    unique_tokens: int | None = None  # train on N tokens of the training split only, spread over it (Gu's data sweep)
    checkpoint_steps: tuple[int, ...] = ()  # save the model (+ tokenizer) at these steps under out/checkpoints/
    quant_eval: bool = True
    compile: bool = False  # torch.compile the training steps (evaluations, checkpoints and scans use the plain module)
    # stop at the first step boundary this many seconds after train() was called (a device lease that ends): the
    # record is then that of a run of the steps taken, which needs a learning rate that does not depend on ``steps``
    time_limit: float | None = None
    seed: int = 0
    device: str | None = None  # default: cuda if available, else cpu
    out: str | None = None  # write train.json and plots here

    def resolved(self) -> TrainConfig:
        """Validate and fill every ``None`` from the preset."""
        if self.preset not in PRESETS:
            raise SinklabInputError(f"unknown preset {self.preset!r}; accepted: {', '.join(PRESETS)}")
        if self.variant not in VARIANTS:
            raise SinklabInputError(f"unknown variant {self.variant!r}; accepted: {', '.join(VARIANTS)}")
        if self.bos not in BOS_MODES:
            raise SinklabInputError(f"unknown --bos {self.bos!r}; accepted: {', '.join(BOS_MODES)}")
        if self.metric_windows not in METRIC_WINDOWS:
            raise SinklabInputError(
                f"unknown --metric-windows {self.metric_windows!r}; accepted: {', '.join(METRIC_WINDOWS)}"
            )
        from transformers import CONFIG_MAPPING

        if self.architecture not in CONFIG_MAPPING:
            raise SinklabInputError(
                f"unknown architecture {self.architecture!r}; accepted: a transformers model type such as llama, "
                "olmo3, olmo_hybrid, qwen3_next"
            )
        preset = PRESETS[self.preset]
        filled = replace(
            self, **{k: getattr(preset, k) for k in asdict(self) if getattr(self, k) is None and hasattr(preset, k)}
        )
        for name in ("steps", "batch_size", "context", "warmup", "eval_every", "eval_batches", "metric_seqs"):
            value = getattr(filled, name)
            if value < (0 if name == "warmup" else 1):
                raise SinklabInputError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if filled.context < METRIC_LEN:
            raise SinklabInputError(f"context must be at least {METRIC_LEN} (Sink_1 is measured at T=64)")
        if filled.weight_decay < 0 or filled.lr <= 0:
            raise SinklabInputError("learning rate must be > 0 and weight decay >= 0")
        if not 0 <= filled.min_lr_ratio <= 1:
            raise SinklabInputError(f"--min-lr-ratio must be in [0, 1] (1: constant), got {filled.min_lr_ratio}")
        if filled.time_limit is not None:
            if filled.time_limit <= 0:
                raise SinklabInputError(f"--time-limit must be a positive number of seconds, got {filled.time_limit}")
            if filled.min_lr_ratio != 1:
                raise SinklabInputError(
                    f"--time-limit needs a constant learning rate after warmup (--min-lr-ratio 1, got "
                    f"{filled.min_lr_ratio:g}): a cosine schedule stopped early matches no run of fewer --steps"
                )
        if filled.unique_tokens is not None and filled.unique_tokens < 1:
            raise SinklabInputError(f"--unique-tokens must be a positive integer, got {filled.unique_tokens}")
        steps = tuple(sorted({int(s) for s in filled.checkpoint_steps}))
        if steps:
            bad = [s for s in steps if not 0 <= s <= filled.steps]
            if bad:
                raise SinklabInputError(
                    f"--checkpoint-steps {', '.join(map(str, bad))} outside 0..{filled.steps} (the run's steps)"
                )
            if filled.out is None:
                raise SinklabInputError("--checkpoint-steps needs an output directory (out) to save them under")
            if filled.variant != "softmax" or filled.variant_params:
                raise SinklabInputError(
                    f"--checkpoint-steps saves softmax models only: a {filled.variant!r} checkpoint would load "
                    "through sinklab.load as plain softmax (its patch needs sinklab.remove.load_patched); train "
                    "--variant softmax or drop --checkpoint-steps"
                )
        return replace(filled, checkpoint_steps=steps)

    @property
    def name(self) -> str:
        parts = [self.variant, f"wd{self.weight_decay:g}", f"bos-{self.bos}"]
        parts = parts if self.architecture == "llama" else [self.architecture, *parts]
        return "-".join([*parts, "sinktoken"] if self.sink_token else parts)


@dataclass
class TrainResult:
    """What a run measured: ``history`` (one row per evaluation), ``final`` (last evaluation + W8A8), the model.
    ``attention_calls``: the ``sinklab.ops.attention`` dispatches of the training steps ("<variant>/<impl>" -> calls;
    empty when transformers' own attention trained the model)."""

    config: TrainConfig
    history: list[dict]
    final: dict
    params: int
    tokens_per_second: float
    attention_calls: dict[str, int]
    model: nn.Module = field(repr=False)
    provenance: dict | None = None  # how the result was made (sinklab.provenance)

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "name": self.config.name,
            "params": self.params,
            "tokens_per_second": self.tokens_per_second,
            "attention_calls": self.attention_calls,
            "history": self.history,
            "final": self.final,
            "provenance": self.provenance,
        }


# -- model ---------------------------------------------------------------------------------------------------------
def build_model(config: TrainConfig, vocab_size: int) -> nn.Module:
    """A randomly initialised decoder of ``config.architecture`` (transformers model type) in the preset's shape,
    ``config.model_config`` added to (or overriding) its config fields, patched to ``config.variant``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    p = PRESETS[config.preset]
    shape = dict(
        vocab_size=vocab_size,
        hidden_size=p.hidden,
        intermediate_size=p.intermediate,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.heads,
        max_position_embeddings=max(config.context, 2 * METRIC_LEN),
        tie_word_embeddings=True,
        attn_implementation="sdpa",
        pad_token_id=None,
        use_cache=False,  # training and measurement need no KV cache (a hybrid would also keep recurrent states)
    )
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(config.architecture, **{**shape, **config.model_config})
    )
    _patch(model, config)
    return model


def _patch(model: nn.Module, config: TrainConfig) -> None:
    """Turn the model into its attention variant with the same call users make (fresh parameters: init="default").
    The softmax baseline stays on transformers' own SDPA attention."""
    if config.variant == "softmax" and not config.variant_params:
        return
    from sinklab.remove import patch

    patch(model, config.variant, init="default", **config.variant_params)


# -- data ----------------------------------------------------------------------------------------------------------
@dataclass
class Batches:
    """Non-overlapping windows of ``body`` tokens, shuffled once per epoch, each behind the same ``prefix``."""

    tokens: np.ndarray  # [N] token ids
    body: int
    prefix: list[int]
    seed: int
    _epochs: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def windows(self) -> int:
        return len(self.tokens) // self.body

    def take(self, indices: np.ndarray) -> torch.Tensor:
        rows = np.stack([self.tokens[i * self.body : (i + 1) * self.body] for i in indices]).astype(np.int64)
        prefix = np.broadcast_to(np.asarray(self.prefix, dtype=np.int64), (len(indices), len(self.prefix)))
        return torch.from_numpy(np.concatenate([prefix, rows], axis=1))  # [B, len(prefix) + body]

    def order(self, position: int) -> int:
        """The window index at ``position`` of the endless stream (a fresh permutation each epoch)."""
        epoch, offset = divmod(position, self.windows)
        if epoch not in self._epochs:
            self._epochs = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.windows)}
        return int(self._epochs[epoch][offset])

    def step(self, step: int, batch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        start = (step * world + rank) * batch
        return self.take(np.asarray([self.order(start + i) for i in range(batch)]))


def _load_data(config: TrainConfig):
    from sinklab.data.train_corpus import embedded_byte_corpus, load_corpus

    return embedded_byte_corpus() if config.corpus is None else load_corpus(config.corpus)


def _prefix(config: TrainConfig, corpus, vocab_size: int) -> list[int]:
    prefix = [vocab_size - 1] if config.sink_token else []  # the sink token is the one id past the corpus vocab
    if config.bos == "always":
        if corpus.bos_token_id is None:
            raise SinklabInputError("--bos always needs a corpus whose tokenizer has a BOS token; use --bos never")
        prefix.append(corpus.bos_token_id)
    return prefix


def _targets(ids: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """Next-token targets [B, T-1]; the prefix and the first text token are never predicted, so every variant is
    scored on exactly the same tokens with the same context."""
    targets = ids[:, 1:].clone()
    targets[:, :prefix_len] = -100
    return targets


def _loss(model: nn.Module, ids: torch.Tensor, prefix_len: int) -> torch.Tensor:
    logits = model(input_ids=ids).logits  # [B, T, V]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), _targets(ids, prefix_len).flatten())


# -- metrics -------------------------------------------------------------------------------------------------------
def _scan_metrics(model: nn.Module, tokenizer, ids: torch.Tensor, eps: float) -> dict:
    """Sink_1^eps and first-token mass at T=64 (Gu et al.), max |x| and kurtosis of the residual stream (largest
    over layers; kurtosis per sequence, averaged), all from one ``sinklab.scan``: the engine computes a patched
    model's own variant weights."""
    result = scan(model, tokenizer, ids, eps=eps, num_texts=None, batch_size=len(ids), keep_pattern=0, progress=False)
    return {
        "sink_rate": result.sink_rate,
        "sink_rate_of_mean": result.sink_rate_of_mean,
        "first_token_mass": result.first_token_mass.tolist(),
        "sink_share": result.sink_share.tolist(),
        "max_activation": float(result.layer_max_abs.max()),
        "kurtosis": float(result.layer_kurtosis.max()),
        "max_activation_by_layer": result.layer_max_abs.tolist(),
    }


Placement = Literal["spread", "first"]


def place(n: int, total: int, placement: Placement = "spread") -> np.ndarray:
    """``n`` indices into ``range(total)``: ``spread`` covers it evenly, ``floor(i * total / n)`` (systematic
    sampling), ``first`` takes its first ones (sinklab up to 0.2.1); both take all of it, cyclically, when
    ``n >= total``. A corpus is stored source by source, so the first held-out windows or documents all come from its
    first sources; spread ones come from every source in proportion to its size."""
    if placement not in ("spread", "first"):
        raise SinklabInputError(f"unknown placement {placement!r}; accepted: spread, first")
    return np.arange(n) % total if n >= total or placement == "first" else np.arange(n) * total // n


def heldout_batches(val: Batches, eval_batches: int, batch_size: int) -> Iterator[torch.Tensor]:
    """The held-out windows of one evaluation (spread over the split by ``place``), in chunks of the per-process
    ``batch_size``: ``eval_batches`` batches of the *global* batch (``batch_size`` x world size under torchrun), so
    N processes at batch b evaluate exactly what one process at batch N * b does (every chunk has as many predicted
    tokens, so the mean of chunk means is that process's mean)."""
    world = _distributed()[1]
    windows = place(eval_batches * world * batch_size, val.windows)
    for i in range(eval_batches * world):
        yield val.take(windows[i * batch_size : (i + 1) * batch_size])  # [batch_size, T]


@torch.no_grad()
def evaluate(model: nn.Module, tokenizer, val: Batches, metric: torch.Tensor, config: TrainConfig) -> dict:
    """Validation loss at the training context; sink and residual metrics on the [metric_seqs, 64] ``metric`` ids."""
    model.eval()
    device = next(model.parameters()).device
    losses = []
    for ids in heldout_batches(val, config.eval_batches, config.batch_size):
        with _autocast(device):
            losses.append(_loss(model, ids.to(device), len(val.prefix)).item())
    row = {"val_loss": float(np.mean(losses))}
    row.update(_scan_metrics(model, tokenizer, metric, config.eps))
    row["first_token_mass_mean"] = float(np.nanmean(row["first_token_mass"]))  # NaN rows: a hybrid's linear layers
    model.train()
    return row


@torch.no_grad()
def quantized_perplexity(model: nn.Module, val: Batches, config: TrainConfig) -> dict:
    """Validation perplexity in full precision and under W8A8 fake quantization (per-tensor and per-token)."""
    from sinklab.remove.quant import W8A8

    device = next(model.parameters()).device
    model.eval()

    def loss() -> float:  # fp32: only the rounding differs
        losses = [_loss(model, ids.to(device), len(val.prefix)).item()
                  for ids in heldout_batches(val, config.eval_batches, config.batch_size)]  # fmt: skip
        return float(np.mean(losses))

    out = {"ppl_fp32": math.exp(loss())}
    for granularity in ("tensor", "token"):
        with W8A8(model, activations=granularity):
            out[f"ppl_w8a8_{granularity}"] = math.exp(loss())
    model.train()
    return out


def _train_subset(tokens: np.ndarray, config: TrainConfig, body: int, world: int) -> np.ndarray:
    """``config.unique_tokens // body`` whole windows of the training split (all of it when None), spread evenly over
    it by ``place`` so that every source is in the subset in proportion to its size (up to 0.2.1: the split's first
    tokens, its first sources only); checked to hold at least one step's batch of windows (every process's) and no
    more than the split."""
    n = config.unique_tokens
    if n is None:
        return tokens
    if n > len(tokens):
        raise SinklabInputError(
            f"--unique-tokens {n:,} is larger than the corpus's training split ({len(tokens):,} tokens)"
        )
    least = config.batch_size * world * body
    if n < least:
        raise SinklabInputError(
            f"--unique-tokens {n:,} is less than one batch: {config.batch_size * world} windows of {body} tokens "
            f"need {least:,}"
        )
    windows = tokens[: len(tokens) // body * body].reshape(-1, body)  # [W, body] the split's windows
    return windows[place(n // body, len(windows))].ravel()


def metric_ids(config: TrainConfig, placement: Placement = "spread") -> torch.Tensor:
    """The held-out sequences of T=64 every evaluation measures Sink_1 on ([metric_seqs, 64], prefix included):
    what a checkpoint is scanned on to compare with the history row of its step. ``placement="first"`` gives the
    split's first ones instead, what sinklab up to 0.2.1 measured (``benchmarks/sink_probe.py`` compares them)."""
    config = config.resolved()
    corpus = _load_data(config)
    prefix = _prefix(config, corpus, corpus.vocab_size + int(config.sink_token))
    return _metric_sequences(config, corpus, prefix, placement)


def metric_offsets(config: TrainConfig, placement: Placement = "spread") -> np.ndarray:
    """[metric_seqs] where each of ``metric_ids``'s sequences starts in the held-out token stream (after the
    prefix): with ``train_corpus.source_spans`` it says which source each probe sequence comes from."""
    config = config.resolved()
    corpus = _load_data(config)
    prefix = _prefix(config, corpus, corpus.vocab_size + int(config.sink_token))
    return _metric_starts(config, corpus, METRIC_LEN - len(prefix), placement)


def _metric_sequences(config: TrainConfig, corpus, prefix: list[int], placement: Placement = "spread") -> torch.Tensor:
    """[metric_seqs, 64]: ``prefix`` and then the held-out tokens at ``_metric_starts``."""
    body = METRIC_LEN - len(prefix)
    starts = _metric_starts(config, corpus, body, placement)
    tokens = np.concatenate([np.asarray(corpus.val[s : s + body]) for s in starts])
    return Batches(tokens, body, prefix, config.seed).take(np.arange(len(starts)))


def _metric_starts(config: TrainConfig, corpus, body: int, placement: Placement) -> np.ndarray:
    """Offsets of the ``metric_seqs`` probe sequences of ``body`` tokens in the held-out stream: windows of it
    (``stream``) or the starts of held-out documents of at least ``body`` tokens (``documents``; documents end with
    EOS), placed over the split by ``place``."""
    if config.metric_windows == "stream":
        windows = len(corpus.val) // body
        if windows < 1:
            raise SinklabInputError(f"held-out split has {len(corpus.val)} tokens; need at least {METRIC_LEN}")
        return place(config.metric_seqs, windows, placement) * body
    if corpus.eos_token_id is None:
        raise SinklabInputError("--metric-windows documents needs a corpus whose documents end with EOS")
    tokens = np.asarray(corpus.val)
    ends = np.flatnonzero(tokens == corpus.eos_token_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    starts = starts[ends - starts >= body]
    if len(starts) < config.metric_seqs:
        raise SinklabInputError(
            f"--metric-windows documents: the held-out split has {len(starts)} documents of at least {body} "
            f"tokens, {config.metric_seqs} are measured; use --metric-windows stream or a larger corpus"
        )
    return starts[place(config.metric_seqs, len(starts), placement)]


def emergence(history: list[dict], thresholds: tuple[float, ...] = (0.05, 0.10)) -> dict[str, int | None]:
    """The first evaluated step whose Sink_1 reaches each threshold ({"sink_rate_0.05": step or None, ...})."""
    rows = sorted(history, key=lambda row: row["step"])
    return {
        f"sink_rate_{t:.2f}": next((row["step"] for row in rows if row["sink_rate"] >= t), None) for t in thresholds
    }


def save_checkpoint(model: nn.Module, tokenizer, directory: str | Path) -> Path:
    """``save_pretrained`` the model (safetensors) and its tokenizer into ``directory`` all at once
    (``staged_output``), so that ``sinklab.load(directory)`` and ``sinklab scan --model directory`` read it back."""
    with staged_output(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(directory)


# -- training ------------------------------------------------------------------------------------------------------
def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _lr(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(config.steps - config.warmup, 1)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(model: nn.Module, config: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    """AdamW; weight decay on the matrices of linear and embedding layers only (not norms, sink logits, biases)."""
    decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear | nn.Embedding)}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) in decay], "weight_decay": config.weight_decay},
        {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


@dataclass
class LoopResult:
    """What ``training_loop`` saw: one history row per evaluation (rank 0), the last step's loss (averaged over
    ranks) and its parts, the seconds spent in steps, the ``sinklab.ops.attention`` dispatches of the steps, and
    the number of steps taken (fewer than asked when the deadline stopped the loop)."""

    history: list[dict]
    train_loss: float
    train_parts: dict[str, float]
    train_time: float
    attention_calls: dict[str, int]
    steps: int


def training_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    batch: Callable[[int], torch.Tensor],
    loss: Callable[[nn.Module, torch.Tensor], torch.Tensor | tuple[torch.Tensor, dict]],
    lr: Callable[[int], float],
    evaluate: Callable[[int], dict],
    eval_every: int,
    grad_clip: float,
    tokens_per_step: int,
    description: str,
    info: Callable[[dict], str] = lambda row: "",
    rank: int = 0,
    world: int = 1,
    eval_steps: Collection[int] = (),
    on_row: Callable[[dict], None] = lambda row: None,
    deadline: float | None = None,
) -> LoopResult:
    """The optimisation loop ``sinklab train`` and ``sinklab adapt`` share.

    For step = 0 .. steps-1: set every group's learning rate to ``lr(step)`` times the group's ``lr_scale`` (1 by
    default), take ``batch(step)`` (this rank's token ids), ``loss(model, ids)`` under bf16 autocast on CUDA (a
    tensor, or ``(tensor, parts)`` with named scalar parts logged as ``train_<name>``), backward, clip the gradient
    norm of the optimised parameters to ``grad_clip``, step. ``model`` may be wrapped in DDP (torchrun: gradients
    are averaged by DDP, the reported loss by an all-reduce). On rank 0 at step 0, every ``eval_every`` steps and
    after the last step (and at every step of ``eval_steps``), ``evaluate(step)`` adds its metrics to a history row
    {step, tokens, train_loss, ...}; ``info(row)`` is shown beside the progress bar and ``on_row(row)`` sees it as
    soon as it exists. With a ``deadline`` (a ``time.perf_counter()`` value), the first step boundary after it
    (at least one step in; on every rank at once under torchrun) is evaluated and ends the loop.
    """
    from sinklab.progress import Progress

    device = next(model.parameters()).device
    params = [p for group in optimizer.param_groups for p in group["params"]]
    history: list[dict] = []
    train_loss, parts = float("nan"), {}
    train_time = 0.0
    dispatched = Counter()  # what the training steps' attention ran (evaluations run fp32 and may fall back)
    with Progress(disable=rank != 0) as progress:
        bar = progress.add_task(description, total=steps, info="")
        for step in range(steps + 1):
            stop = step > 0 and _past(deadline, world, device)
            if step % eval_every == 0 or step == steps or step in eval_steps or stop:
                if rank == 0:
                    row = {"step": step, "tokens": step * tokens_per_step, "train_loss": train_loss}
                    row.update({f"train_{k}": v for k, v in parts.items()})
                    row.update(evaluate(step))
                    history.append(row)
                    on_row(row)
                    progress.update(bar, info=info(row))
                if step == steps or stop:
                    break
            tick, before = time.perf_counter(), attention_calls()
            for group in optimizer.param_groups:
                group["lr"] = lr(step) * group.get("lr_scale", 1.0)
            ids = batch(step).to(device)
            with _autocast(device):
                value = loss(model, ids)
            value, named = value if isinstance(value, tuple) else (value, {})
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            reported = torch.stack(
                [value.detach().float(), *(torch.as_tensor(v).float().to(device) for v in named.values())]
            )
            if world > 1:
                torch.distributed.all_reduce(reported, op=torch.distributed.ReduceOp.AVG)
            train_loss, *rest = reported.tolist()
            parts = dict(zip(named, rest, strict=True))
            train_time += time.perf_counter() - tick
            dispatched += attention_calls() - before
            progress.update(bar, advance=1)
    return LoopResult(history, train_loss, parts, train_time, dict(dispatched), step)


def _past(deadline: float | None, world: int, device: torch.device) -> bool:
    """Whether ``deadline`` has passed (never without one); under torchrun, whether it has on any rank."""
    if deadline is None:
        return False
    past = time.perf_counter() >= deadline
    if world > 1:
        flag = torch.tensor(float(past), device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        past = bool(flag.item())
    return past


def train(config: TrainConfig) -> TrainResult:
    """Train one configuration; on rank 0, write ``config.out/train.json`` and plots when ``out`` is set."""
    from sinklab.models import resolve_device
    from sinklab.provenance import digest, run_provenance

    called = time.perf_counter()
    config = config.resolved()
    rank, world, _ = _distributed()
    device = resolve_device(config.device)  # default: cuda:LOCAL_RANK if available, else cpu
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # NCCL needs each process on its own GPU before the group starts
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    corpus = _load_data(config)
    tokenizer = corpus.load_tokenizer()
    vocab_size = corpus.vocab_size + int(config.sink_token)
    if config.sink_token:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|sink|>"]})
    prefix = _prefix(config, corpus, vocab_size)
    body = config.context - len(prefix)
    train_tokens = _train_subset(corpus.train, config, body, world)
    train_data = Batches(train_tokens, body, prefix, config.seed)
    needed = config.steps * config.batch_size * world
    if needed > train_data.windows * config.max_epochs:
        have = "the corpus has" if config.unique_tokens is None else "--unique-tokens gives"
        raise SinklabInputError(
            f"corpus too small: {config.steps} steps x {config.batch_size * world} sequences of {body} tokens need "
            f"{needed * body:,} tokens, {have} {len(train_tokens):,} ({needed / train_data.windows:.2f} epochs, "
            f"max_epochs={config.max_epochs:g}); give fewer --steps, a larger --corpus or a larger --max-epochs"
        )
    val = Batches(corpus.val, body, prefix, config.seed)
    if val.windows < 1:
        raise SinklabInputError(f"held-out split has {len(corpus.val)} tokens; need at least {config.context}")
    metric = _metric_sequences(config, corpus, prefix)
    checkpoints: list[dict] = []
    partial = None if config.out is None or rank != 0 else Path(config.out) / "history.jsonl"

    def write_row(row: dict) -> None:  # a run cut short (a device lease that ends) keeps its curve so far
        if partial is None:
            return
        partial.parent.mkdir(parents=True, exist_ok=True)  # at step 0's evaluation: the model was built, no bad input
        with partial.open("w" if row["step"] == 0 else "a") as f:
            f.write(json.dumps(row) + "\n")

    def keep_checkpoint(step: int) -> None:
        path = save_checkpoint(raw, tokenizer, Path(config.out) / "checkpoints" / f"step-{step}")
        checkpoints.append({"step": step, "path": str(path)})

    def evaluate_step(step: int) -> dict:
        row = evaluate(raw, tokenizer, val, metric, config)
        if step in config.checkpoint_steps:
            keep_checkpoint(step)
        return row

    model = build_model(config, vocab_size).to(device)
    raw = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)  # shares raw's parameters: the optimiser and evaluations see the same tensors
    optimizer = _optimizer(raw, config, fused=device.type == "cuda")
    params = sum(p.numel() for p in raw.parameters())
    started = time.perf_counter()
    loop = training_loop(
        model,
        optimizer,
        steps=config.steps,
        batch=lambda step: train_data.step(step, config.batch_size, rank, world),
        loss=lambda net, ids: _loss(net, ids, len(prefix)),
        lr=lambda step: _lr(step, config),
        evaluate=evaluate_step,
        eval_every=config.eval_every,
        eval_steps=frozenset(config.checkpoint_steps),
        grad_clip=config.grad_clip,
        tokens_per_step=config.batch_size * world * body,
        description=f"train {config.name}",
        info=lambda row: f"val {row['val_loss']:.3f} sink {row['sink_rate']:.1%}",
        rank=rank,
        world=world,
        on_row=write_row,
        deadline=None if config.time_limit is None else called + config.time_limit,
    )
    history, train_loss, train_time, dispatched = loop.history, loop.train_loss, loop.train_time, loop.attention_calls
    stopped = None
    if loop.steps < config.steps:  # the time limit: recorded as the run of the steps taken (constant lr)
        stopped = {"planned_steps": config.steps, "time_limit_s": config.time_limit, "step": loop.steps}
        saved = tuple(s for s in config.checkpoint_steps if s <= loop.steps)
        if config.checkpoint_steps and loop.steps not in saved:  # the model it stopped at is kept too
            if rank == 0:
                keep_checkpoint(loop.steps)
            saved += (loop.steps,)
        config = replace(config, steps=loop.steps, checkpoint_steps=saved, time_limit=None)
        needed = config.steps * config.batch_size * world
    final = dict(history[-1]) if rank == 0 else {"train_loss": train_loss}  # the loss is averaged over ranks
    if rank == 0 and config.quant_eval:
        final.update(quantized_perplexity(raw, val, config))
    tokens_per_second = config.steps * config.batch_size * world * config.context / max(train_time, 1e-9)
    final["wall_seconds"] = time.perf_counter() - started
    final["unique_tokens"] = len(train_tokens)
    final["epochs"] = needed / train_data.windows
    final["emergence"] = emergence(history)
    if stopped is not None:
        final["stopped_early"] = stopped
    if config.checkpoint_steps:
        final["checkpoints"] = checkpoints
    texts = {"corpus": config.corpus or "embedded byte corpus", "train_tokens_sha256": digest(train_tokens)}
    provenance = run_provenance(raw, texts=texts, bos=config.bos, seed=config.seed)
    result = TrainResult(config, history, final, params, tokens_per_second, dispatched, raw, provenance)
    if rank == 0 and config.out is not None:
        save(result, config.out)
    if world > 1:
        torch.distributed.barrier()
    return result


# -- output --------------------------------------------------------------------------------------------------------
def save(result: TrainResult, out: str | Path) -> Path:
    """Write ``train.json`` and ``curves.png`` into ``out`` all at once (``sinklab.report.files.staged_output``)."""
    out = Path(out)
    record = result.to_dict()
    with staged_output(out) as tmp:
        (tmp / "train.json").write_text(json.dumps(record, indent=1))
        from sinklab.report.train import training_curves

        training_curves([record], tmp / "curves.png")
    return out
