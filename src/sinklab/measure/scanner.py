"""`sinklab.scan`: where a model's sinks are, how strong, and where its massive activations sit.

Runs the model over token sequences inside one ``Observer`` and reduces each forward pass at once, so memory stays
O(T) per layer whatever the length: per (layer, head) the first-token mass alpha_1 and the attention entropy; per
key position the sink evidence (mean received mass above ``sink_threshold`` in some head); per layer the residual
stream's largest activations.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from sinklab.data import BosMode, read_texts, token_sequences
from sinklab.errors import SinklabInputError, check_fraction
from sinklab.hf import ModelView
from sinklab.hf.arch import layer_types, vision_layout
from sinklab.measure.engine import Observer, skipped_layers
from sinklab.measure.result import Accumulator, ScanResult
from sinklab.models import check_model, check_token_ids, input_device
from sinklab.progress import Progress
from sinklab.provenance import describe_texts, run_provenance

PATTERN_WINDOW = 64


def is_causal(model) -> bool:
    """Decoder-only (causal) models; encoders such as BERT attend both ways."""
    return bool(getattr(model.config, "is_decoder", False)) or "ForCausalLM" in type(model).__name__


def as_sequences(tokenizer, texts_or_ids, max_tokens, num_texts, bos) -> list[list[int]]:
    """Token sequences from strings (DESIGN.md's splitting rule), token-id lists, a tensor, or None (the corpus)."""
    if isinstance(texts_or_ids, torch.Tensor):
        texts_or_ids = texts_or_ids.tolist() if texts_or_ids.dim() == 2 else [texts_or_ids.tolist()]
    if isinstance(texts_or_ids, str):  # a string is a text; a Path is a file
        texts_or_ids = [texts_or_ids]
    if texts_or_ids is None or isinstance(texts_or_ids, Path):
        texts_or_ids = read_texts(None if texts_or_ids is None else [texts_or_ids])
    items = list(texts_or_ids)
    if not items:
        raise SinklabInputError("no texts given; pass strings, token id lists, or None for the embedded corpus")
    if all(isinstance(x, str) for x in items):
        return token_sequences(tokenizer, items, max_tokens, num_texts, bos)
    if all(isinstance(x, Sequence) and all(isinstance(t, int) for t in x) for x in items):
        seqs = [list(x) for x in items if len(x) > 0]
        if not seqs:
            raise SinklabInputError("all token sequences are empty")
        if num_texts is not None and len(seqs) > num_texts:  # never measure fewer sequences than given, quietly
            raise SinklabInputError(
                f"{len(seqs)} token sequences given but num_texts={num_texts} (the default, 4, is for texts): pass "
                "num_texts=None to measure all of them, or only the sequences to measure"
            )
        return seqs
    raise SinklabInputError("texts_or_ids must be strings or lists of token ids, not a mix")


def check_length(model, length: int, allow_beyond_positions: bool) -> None:
    """Refuse sequences longer than the model's positions (unless asked to measure past them)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and length > limit and not allow_beyond_positions:
        raise SinklabInputError(
            f"sequences of {length} tokens exceed the model's {limit} positions; use --max-tokens <= {limit}"
        )


def padded_batches(seqs: list[list[int]], batch_size: int, pad_id: int, left_pad: bool):
    for start in range(0, len(seqs), batch_size):
        group = seqs[start : start + batch_size]
        width = max(map(len, group))
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, seq in enumerate(group):
            sl = slice(width - len(seq), width) if left_pad else slice(0, len(seq))
            ids[row, sl] = torch.tensor(seq)
            mask[row, sl] = 1
        yield start, ids, mask


def _forward_kwargs(base_model) -> dict:
    params = inspect.signature(base_model.forward).parameters
    return {"use_cache": False} if "use_cache" in params else {}


@torch.no_grad()
def scan(
    model,
    tokenizer,
    texts_or_ids=None,
    eps: float = 0.3,
    *,
    max_tokens: int = 512,
    num_texts: int | None = 4,
    bos: BosMode = "auto",
    batch_size: int = 1,
    sink_threshold: float | None = None,
    min_queries: int | None = None,
    keep_pattern: int = PATTERN_WINDOW,
    model_name: str | None = None,
    allow_beyond_positions: bool = False,
    progress: bool = True,
    images=None,
    **image_options,
) -> ScanResult:
    """Measure attention sinks and massive activations of ``model`` on texts or token ids.

    ``texts_or_ids``: strings (split by DESIGN.md's rule into ``max_tokens``-token sequences, at most
    ``num_texts``), token-id lists or a [N, T] tensor (all measured: more than ``num_texts`` of them is refused, so
    pass ``num_texts=None``), or None for the embedded corpus. ``eps`` is Gu et al.'s
    threshold for Sink_1^eps; ``sink_threshold`` (default eps) is the mean received mass that makes any key a sink,
    counted only where at least ``min_queries`` (default min(32, T/4)) queries can see it.

    An image encoder (or ``images`` given) is scanned on images instead: ``scan(model, processor, images=...)`` is
    ``sinklab.measure.vision.scan_images`` (``image_options``: its ``high_norm``, ``norm_ratio``, ``max_maps``).
    """
    if images is not None or image_options or vision_layout(model) is not None:
        from sinklab.measure.vision import scan_images

        if texts_or_ids is not None:
            raise SinklabInputError("an image scan takes images=, not texts; give one or the other")
        return scan_images(
            model, tokenizer, images, eps, batch_size=batch_size, sink_threshold=sink_threshold,
            min_queries=min_queries, model_name=model_name, progress=progress, **image_options,
        )  # fmt: skip
    check_fraction("eps", eps)
    if batch_size < 1:
        raise SinklabInputError(f"batch size must be >= 1, got {batch_size}")
    if sink_threshold is not None:
        check_fraction("sink_threshold", sink_threshold)
    check_model(model, tokenizer)
    seqs = as_sequences(tokenizer, texts_or_ids, max_tokens, num_texts, bos)
    check_token_ids(model, seqs)
    longest = max(map(len, seqs))
    check_length(model, longest, allow_beyond_positions)
    view = ModelView(model)
    config = view.config
    num_layers = view.num_layers
    num_heads = view.require_attention()[0].num_heads
    hidden = config.hidden_size
    sink_threshold = eps if sink_threshold is None else sink_threshold
    min_queries = min_queries or max(1, min(32, longest // 4))
    acc = Accumulator(num_layers, num_heads, hidden, eps, sink_threshold, min_queries)
    device = input_device(model)  # the embedding's device: a split model's first parameter may live elsewhere
    base = model.base_model
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    causal = is_causal(model)
    decode = token_decoder(tokenizer)
    pattern = None
    num_batches = math.ceil(len(seqs) / batch_size)
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"scan {model_name or type(model).__name__}", total=num_batches * num_layers)
        advance = [lambda hidden, ctx: bar.advance(task)]
        hooks = {f"layers.{i}.resid_post": advance for i in range(num_layers)}
        with Observer(model, keep_pattern=keep_pattern, hooks=hooks) as obs:
            for start, ids, mask in padded_batches(seqs, batch_size, pad_id, left_pad=causal):
                obs.clear()
                obs.keep_pattern = keep_pattern if start == 0 else 0
                kwargs = _forward_kwargs(base)
                if causal:  # left padding must not shift the real tokens' positions
                    kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp_min(0).to(device)
                base(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
                acc.add(obs, ids, mask, decode)
                if start == 0 and keep_pattern:  # [L, H, w, w], NaN for blocks without softmax attention
                    maps = {layer: stats.pattern[0].float().cpu() for layer, stats in obs.attention.items()}
                    blank = torch.full_like(next(iter(maps.values())), float("nan"))
                    pattern = torch.stack([maps.get(layer, blank) for layer in range(num_layers)])
    first_ids = seqs[0][: pattern.shape[-1]] if pattern is not None else []
    return ScanResult(
        model=model_name or getattr(config, "_name_or_path", "") or type(model).__name__,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=view.attention[0].num_kv_heads,
        sequence_length=longest,
        eps=eps,
        sink_threshold=sink_threshold,
        layer_types=layer_types(config),
        skipped_layers=skipped_layers(model),
        pattern=pattern,
        pattern_tokens=[decode(t) for t in first_ids],
        **acc.results(),
        provenance=run_provenance(model, sequences=seqs, texts=describe_texts(texts_or_ids), bos=bos),
    )


def token_decoder(tokenizer):
    """A cached id -> text decoder for reports."""
    cache: dict[int, str] = {}

    def decode(token_id: int) -> str:
        if token_id not in cache:
            cache[token_id] = tokenizer.decode([token_id])
        return cache[token_id]

    return decode
