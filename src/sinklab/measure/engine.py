"""The one observation mechanism: a registered attention function plus residual-stream hooks.

``Observer(model)`` is a context manager. On entry it registers ``sinklab_observe`` with transformers'
``AttentionInterface`` and its mask entry with ``AttentionMaskInterface`` (transformers' own 2D padding-mask rule,
as used by flash attention; causality and sliding windows come from the attention module and its kwargs), points
the model at it, and hooks every layer's residual output. On exit everything is restored. Inside, every attention
call sees post-RoPE q, k, v and computes its output and statistics in query chunks (``sinklab.ops.colsum``), so no
T x T matrix ever exists for the whole sequence.

Stable hook names (TransformerLens style), each a list of callables in ``Observer.hooks``:

    layers.{i}.attn.qkv    fn(q, k, v, ctx) -> (q, k, v) | None   before attention (interventions)
    layers.{i}.attn.chunk  fn(probs, ctx)                         each [B, H, R, K] probability block
    layers.{i}.attn.stats  fn(stats, ctx)                         the AttentionStats of each call (e.g. H2O scores)
    layers.{i}.attn.out    fn(out, ctx) -> out | None             [B, H, T, D] before the output projection
    layers.{i}.attn_block  fn(out, ctx) -> out | None             output of the whole attention module
    layers.{i}.mlp_in      fn(hidden, ctx) -> hidden | None       [B, T, d] input of the MLP module
    layers.{i}.mlp         fn(out, ctx) -> out | None             output of the MLP module
    layers.{i}.resid_post  fn(hidden, ctx) -> hidden | None       [B, T, d] output of the layer

``ctx`` is an ``AttentionContext`` (layer index, key padding, causality, window, rows and keys of a chunk).
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sinklab.measure.variants import row_weights
from sinklab.ops.colsum import AttentionStats, chunked

ATTENTION_NAME = "sinklab_observe"
TOP_K = 8


@dataclass
class AttentionContext:
    """What a hook knows about the attention call it sees."""

    layer: int
    causal: bool
    window: int | None
    key_padding: torch.Tensor | None  # [B, S] bool, True = real token; None = no padding
    rows: tuple[int, int] | None = None  # query rows of a chunk
    keys: tuple[int, int] | None = None  # key range of a chunk


@dataclass
class ResidualStats:
    """Residual-stream magnitudes of one layer's output (Sun et al. 2024, "Massive Activations in LLMs").

    max_abs, median_abs [B]: largest and median |x| over valid tokens and dims; kurtosis [B]: E[(x-mu)^4]/sigma^4
    over the same values (Bondarenko et al. 2023: outliers make it large; 3 for a Gaussian); top_value/top_pos/
    top_dim [B, k]: the k largest |x| (signed value, token position, hidden dim); dim_max [B, d]: max |x| per dim.
    """

    max_abs: torch.Tensor
    median_abs: torch.Tensor
    kurtosis: torch.Tensor
    top_value: torch.Tensor
    top_pos: torch.Tensor
    top_dim: torch.Tensor
    dim_max: torch.Tensor


def _lower_median(values: torch.Tensor) -> torch.Tensor:
    """torch.median's convention (the lower of the two middle values), by selection instead of a sort."""
    flat = values.reshape(-1)
    return flat.kthvalue((flat.numel() + 1) // 2).values


def _kurtosis(values: torch.Tensor) -> torch.Tensor:
    centred = values.double().reshape(-1)
    centred = centred - centred.mean()
    return (centred.pow(4).mean() / centred.pow(2).mean().pow(2).clamp_min(1e-300)).float()


def residual_stats(hidden: torch.Tensor, valid: torch.Tensor | None, k: int = TOP_K) -> ResidualStats:
    """Massive-activation statistics of hidden states [B, T, d]; padded tokens ([B, T] False) never count."""
    x = hidden.detach().float()
    B, T, d = x.shape
    mag = x.abs()
    if valid is not None:
        mag = mag.masked_fill(~valid[:, :, None], -1.0)  # below every real magnitude: never a top entry
    values = [x[b] if valid is None else x[b][valid[b]] for b in range(B)]
    median = torch.stack([_lower_median(v.abs()) for v in values])
    kurtosis = torch.stack([_kurtosis(v) for v in values])
    top_mag, top_idx = mag.reshape(B, T * d).topk(min(k, T * d), dim=1)
    top_value = x.reshape(B, T * d).gather(1, top_idx)
    return ResidualStats(
        max_abs=top_mag[:, 0],
        median_abs=median,
        kurtosis=kurtosis,
        top_value=top_value,
        top_pos=top_idx // d,
        top_dim=top_idx % d,
        dim_max=mag.clamp_min(0.0).amax(dim=1),
    )


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks (decoder ``layers`` or BERT's ``encoder.layer``)."""
    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and name.split(".")[-1] in ("layers", "layer", "h"):
            return module
    raise ValueError(f"cannot find the {n} transformer blocks of {type(model).__name__}")


def _block_parts(layer: nn.Module) -> dict[str, nn.Module]:
    """The attention and MLP submodules of a block, where the architecture names them plainly."""
    parts = {}
    for attr in ("self_attn", "attention", "attn"):
        if isinstance(getattr(layer, attr, None), nn.Module):
            parts["attn_block"] = getattr(layer, attr)
            break
    if isinstance(getattr(layer, "mlp", None), nn.Module):
        parts["mlp"] = layer.mlp
    return parts


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None elsewhere."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory(device: torch.device) -> None:
    """Hand freed CPU heap memory back to the OS (glibc only).

    glibc raises its mmap threshold to the size of the largest block freed so far, so the chunked score blocks and
    the per-layer temporaries end up in the heap, which fragments: without this, scanning 4k tokens with
    smollm2-135m peaked at 2.55 GB against 1.13 GB for a plain forward; trimming after each layer gives 1.28 GB
    for about 15 % more time.
    """
    trim = _malloc_trim()
    if device.type == "cpu" and trim is not None:
        trim(0)


def _first_tensor(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def _observed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface entry: exact softmax attention in query chunks, recording statistics on the observer."""
    observer: Observer = module._sinklab_observer
    return observer._attend(module, query, key, value, attention_mask, scaling, kwargs)


class Observer:
    """Record attention statistics and residual magnitudes of every layer while the model runs.

    >>> with Observer(model, keep_pattern=64) as obs:
    ...     model(input_ids)
    >>> obs.attention[3].colsum      # [B, H, S] mass each key received in layer 3
    >>> obs.residual[3].max_abs      # [B] largest |hidden| after layer 3

    Records hold the last forward pass; call ``clear()`` between passes if you keep the observer open.
    ``release_memory`` hands freed CPU heap memory back after each layer (see ``release_freed_memory``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        keep_pattern: int = 0,
        residual: bool = True,
        rows_per_chunk: int | None = None,
        hooks: dict[str, list[Callable]] | None = None,
        release_memory: bool = True,
    ):
        self.model = model
        self.keep_pattern = keep_pattern
        self.record_residual = residual
        self.release_memory = release_memory
        self.rows_per_chunk = rows_per_chunk
        self.hooks: dict[str, list[Callable]] = defaultdict(list, hooks or {})
        self.attention: dict[int, AttentionStats] = {}
        self.residual: dict[int, ResidualStats] = {}
        self._handles: list = []
        self._previous_impl: str | None = None
        self._padding: torch.Tensor | None = None
        self._attn_modules: list[nn.Module] = []

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def __enter__(self) -> Observer:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

        AttentionInterface.register(ATTENTION_NAME, _observed_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, flash_attention_mask)
        self._previous_impl = self.model.config._attn_implementation
        self.model.set_attn_implementation(ATTENTION_NAME)
        layers = find_layers(self.model)
        for i, layer in enumerate(layers):
            self._handles.append(layer.register_forward_hook(self._layer_hook(i)))
            for part, module in _block_parts(layer).items():
                self._handles.append(module.register_forward_hook(self._part_hook(i, part)))
                if part == "mlp":
                    self._handles.append(module.register_forward_pre_hook(self._input_hook(i, part), with_kwargs=True))
        for i, layer in enumerate(layers):
            for module in layer.modules():
                if "Attention" in type(module).__name__:
                    module._sinklab_observer = self
                    module._sinklab_layer = i
                    self._attn_modules.append(module)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._attn_modules:
            del module._sinklab_observer, module._sinklab_layer
        self._attn_modules.clear()
        self.model.set_attn_implementation(self._previous_impl)

    def clear(self) -> None:
        self.attention.clear()
        self.residual.clear()
        self._padding = None

    # -- hooks -----------------------------------------------------------------------------------------------------
    def _run(self, name: str, value, *args):
        for fn in self.hooks.get(name, ()):
            new = fn(value, *args)
            if new is not None:
                value = new
        return value

    def _layer_hook(self, layer: int):
        def hook(module, args, output):
            hidden = _first_tensor(output)
            ctx = AttentionContext(layer, True, None, self._padding)
            new = self._run(f"layers.{layer}.resid_post", hidden, ctx)
            if self.record_residual:
                valid = None
                if self._padding is not None:
                    valid = self._padding[:, -hidden.shape[1] :]
                self.residual[layer] = residual_stats(new, valid)
            if self.release_memory:
                release_freed_memory(hidden.device)
            return _replace_first(output, new) if new is not hidden else None

        return hook

    def _part_hook(self, layer: int, part: str):
        name = f"layers.{layer}.{part}"

        def hook(module, args, output):
            if not self.hooks.get(name):
                return None
            ctx = AttentionContext(layer, True, None, self._padding)
            tensor = _first_tensor(output)
            new = self._run(name, tensor, ctx)
            return _replace_first(output, new) if new is not tensor else None

        return hook

    def _input_hook(self, layer: int, part: str):
        name = f"layers.{layer}.{part}_in"

        def hook(module, args, kwargs):
            if not self.hooks.get(name):
                return None
            ctx = AttentionContext(layer, True, None, self._padding)
            tensor = args[0] if args else kwargs["hidden_states"]
            new = self._run(name, tensor, ctx)
            if new is tensor:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        return hook

    # -- attention -------------------------------------------------------------------------------------------------
    def _attend(self, module, query, key, value, attention_mask, scaling, kwargs):
        layer = module._sinklab_layer
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", True) if causal is None else causal
        window = kwargs.get("sliding_window") or None
        padding = attention_mask.bool() if attention_mask is not None else None  # [B, S] (flash-style 2D mask)
        if padding is not None and padding.shape[-1] != key.shape[2]:
            padding = padding[:, -key.shape[2] :]
        if layer == 0:
            self._padding = padding
        scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        ctx = AttentionContext(layer, bool(causal), window, padding)
        qkv_hooks = self.hooks.get(f"layers.{layer}.attn.qkv")
        if qkv_hooks:
            query, key, value = self._run(f"layers.{layer}.attn.qkv", (query, key, value), ctx)
        chunk_name = f"layers.{layer}.attn.chunk"
        weights = None
        if getattr(module, "_sinklab", None) is not None:  # patched by sinklab.remove.patch: its variant's weights
            from sinklab.remove.patch import module_variant

            weights = row_weights(*module_variant(module), scale, key.shape[2])
        out, stats = chunked.attention_stats(
            query,
            key,
            value,
            scale=scale,
            causal=bool(causal),
            window=window,
            key_padding=padding,
            keep_pattern=self.keep_pattern,
            rows_per_chunk=self.rows_per_chunk,
            on_chunk=(lambda p, rows, keys: self._run(chunk_name, p, ctx_with(ctx, rows, keys)))
            if self.hooks.get(chunk_name)
            else None,
            weights=weights,
        )
        self.attention[layer] = stats
        self._run(f"layers.{layer}.attn.stats", stats, ctx)
        out = self._run(f"layers.{layer}.attn.out", out, ctx).transpose(1, 2)  # [B, T, H, D]
        if getattr(module, "_sinklab", None) is not None:
            from sinklab.remove.patch import finish_output

            out = finish_output(module, out)
        return out.contiguous(), None


def ctx_with(ctx: AttentionContext, rows: tuple[int, int], keys: tuple[int, int]) -> AttentionContext:
    return AttentionContext(ctx.layer, ctx.causal, ctx.window, ctx.key_padding, rows, keys)
