"""The one observation method: ``Observer`` records attention statistics and residual magnitudes of every layer.

``Observer(model)`` (or ``Observe(...)(model)``) attaches to the model's attention sites (``sinklab.hf``): it asks
every site for statistics (column sums, counts, entropy, the learned sink slot's mass, and the first ``keep_pattern``
x ``keep_pattern`` weights for plots), which every attention implementation returns without a T x T matrix (the
fused Triton kernels on CUDA, the chunked pass on the CPU), and hooks each block's residual output. Patched models
are observed through their own variant's weights, because the site computes the variant. Extra ``hooks`` use the
sites' stable names (``layers.{i}.attn.qkv``, ``attn.logits``, ``attn.weights``, ``attn.stats``, ``attn.out``,
``attn_block``, ``mlp_in``, ``mlp``, ``resid_post``; see ``sinklab.hf.site``).

Everything observed also lands in ``Observer.record`` (``sinklab.hf.Record``): ``rec["attn.colsum", 3]``,
``rec.stack("attn.alpha1")`` ([L, B, H] first-token mass), ``rec["resid.max_abs", 3]``.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import nn

from sinklab.hf import AttentionCall, ModelSites, ModelView, Record
from sinklab.hf.arch import layer_types
from sinklab.method import Method
from sinklab.ops.stats import AttentionStats, StatsRequest

TOP_K = 8
AttentionContext = AttentionCall  # what a hook sees (the name earlier releases used)


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


HISTOGRAM_CHUNK = 1 << 24  # float32 counts are exact integers up to 2^24


def _histogram(values: torch.Tensor, bins: int, where: torch.Tensor | None = None) -> torch.Tensor:
    """Exact int64 counts of small non-negative ints (those where ``where``): CUDA's weighted bincount keeps its
    counters on chip (the unweighted one, with global atomics, took 4 ms for 6.7e7 values on an H200, float64 weights
    0.6 ms for 1.7e7), in chunks small enough for float32 counts to stay exact."""
    total = torch.zeros(bins, dtype=torch.long, device=values.device)
    for i in range(0, values.numel(), HISTOGRAM_CHUNK):
        part = values[i : i + HISTOGRAM_CHUNK]
        weight = torch.ones(part.shape, device=part.device) if where is None else where[i : i + HISTOGRAM_CHUNK].float()
        total += torch.bincount(part, weights=weight, minlength=bins).long()
    return total


def _byte_histogram(bits: torch.Tensor, high: torch.Tensor | None = None) -> torch.Tensor:
    """Counts of the high magnitude byte of half-precision bit patterns ``bits`` (int16 [N]) -> [128], or of the
    low byte among those whose high byte is ``high`` (0-d tensor) -> [256]. On CUDA the Triton kernels of
    ``ops._triton.histogram`` (no host synchronization, unlike ``torch.bincount``); elsewhere ``torch.bincount``."""
    if bits.is_cuda:
        try:
            from sinklab.ops._triton.histogram import byte_histogram
        except ImportError:
            pass
        else:
            return byte_histogram(bits, high)
    magnitude = bits & 0x7FFF
    if high is None:
        return _histogram(magnitude >> 8, 128)
    return _histogram(magnitude & 0xFF, 256, (magnitude >> 8) == high)


def _lower_median(values: torch.Tensor) -> torch.Tensor:
    """torch.median's convention (the lower of the two middle values) of non-negative values, exactly, by counting
    instead of sorting: non-negative floats are ordered as their bit patterns. Half precision: a histogram of the
    high byte of its 15 magnitude bits, then one of the low byte inside the bin that holds the median, all on the
    device (no host synchronization). float32: a histogram of the top 16 bits, then a selection among the few
    values of the bin that holds the median (a selection over 10^8 CUDA values, or 10^6 CPU ones, costs more than
    a layer's attention)."""
    flat = values.reshape(-1)
    k = (flat.numel() + 1) // 2
    if flat.dtype in (torch.bfloat16, torch.float16):
        bits = flat.view(torch.int16)
        below = _byte_histogram(bits).cumsum(0)  # [128] values whose high byte is <= the bin
        b = (below < k).sum()  # the bin holding the k-th smallest (searchsorted, left)
        before = below.gather(0, (b - 1).clamp_min(0).reshape(1))[0]  # gather: a 0-d index would read b back
        rank = k - torch.where(b > 0, before, 0)  # its rank inside bin b
        c = (_byte_histogram(bits, b).cumsum(0) < rank).sum()
        return ((b << 8) | c).to(torch.int16).view(flat.dtype).float()
    if flat.dtype == torch.float32:
        top = (flat.view(torch.int32) & 0x7FFFFFFF) >> 15  # [N] the top 16 magnitude bits
        below = torch.bincount(top, minlength=1 << 16).cumsum(0)
        b = int(torch.searchsorted(below, k))
        before = int(below[b - 1]) if b > 0 else 0
        return flat[top == b].kthvalue(k - before).values
    return flat.kthvalue(k).values.float()


def _kurtosis(values: torch.Tensor) -> torch.Tensor:
    """E[(x - mu)^4] / sigma^4 over every entry of the values, with float64 sums over float32 passes (no float64
    copy: of a 64k-token hidden state it would be 1 GB)."""
    x = values.float()
    n = x.numel()
    centred = x - (x.sum(dtype=torch.float64) / n).float()
    square = centred.square_()
    m2 = square.sum(dtype=torch.float64) / n
    m4 = square.square_().sum(dtype=torch.float64) / n
    return (m4 / m2.square().clamp_min(1e-300)).float()


def residual_stats(hidden: torch.Tensor, valid: torch.Tensor | None, k: int = TOP_K) -> ResidualStats:
    """Massive-activation statistics of hidden states [B, T, d]; padded tokens ([B, T] False) never count.
    Works in the hidden state's dtype (|x|, top-k and the median are exact in it) with one |x| copy."""
    x = hidden.detach()
    B, T, d = x.shape
    mag = x.abs()
    if valid is not None:
        mag = mag.masked_fill(~valid[:, :, None], -1.0)  # below every real magnitude: never a top entry
    median, kurtosis = [], []
    for b in range(B):
        real = x[b] if valid is None else x[b][valid[b]]
        median.append(_lower_median(mag[b] if valid is None else mag[b][valid[b]]))
        kurtosis.append(_kurtosis(real))
    # the k largest entries lie in the k tokens with the largest maxima: select among those k x d entries only
    k = min(k, T * d)
    tokens = mag.amax(dim=2).topk(min(k, T), dim=1).indices.sort(dim=1).values  # [B, k'] in position order
    candidates = mag.gather(1, tokens[:, :, None].expand(-1, -1, d)).reshape(B, -1)  # [B, k' * d]
    top_mag, pick = candidates.topk(k, dim=1)
    top_idx = tokens.gather(1, pick // d) * d + pick % d  # flat index pos * d + dim
    top_value = x.reshape(B, T * d).gather(1, top_idx).float()
    return ResidualStats(
        max_abs=top_mag[:, 0].float(),
        median_abs=torch.stack(median),
        kurtosis=torch.stack(kurtosis),
        top_value=top_value,
        top_pos=top_idx // d,
        top_dim=top_idx % d,
        dim_max=mag.amax(dim=1).clamp_min(0.0).float(),
    )


def skipped_layers(model: nn.Module) -> list[dict]:
    """The blocks without a softmax attention site, which the Observer (and so scan and explain) measures no attention
    in: a hybrid's linear-attention layers. One {layer, type} per block, type from the config's ``layer_types``."""
    view = ModelView(model)
    sites = {a.layer for a in view.attention}
    types = layer_types(model.config)
    return [{"layer": i, "type": types[i]} for i in range(view.num_layers) if i not in sites]


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks (``sinklab.hf.ModelView(model).blocks``)."""
    return ModelView(model).blocks


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


class Observer(Method):
    """Record attention statistics and residual magnitudes of every layer while the model runs.

    >>> with Observer(model, keep_pattern=64) as obs:
    ...     model(input_ids)
    >>> obs.attention[3].colsum      # [B, H, S] mass each key received in layer 3
    >>> obs.residual[3].max_abs      # [B] largest |hidden| after layer 3
    >>> obs.record.stack("attn.alpha1")

    ``Observer(model)`` is used with ``with``; ``Observer()`` is the unbound method, ``with Observer()(model):``.
    Records hold the last forward pass; call ``clear()`` between passes if you keep the observer open.
    ``release_memory`` hands freed CPU heap memory back after each layer (see ``release_freed_memory``).
    """

    kind = "measure"
    name = "observe"

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        keep_pattern: int = 0,
        residual: bool = True,
        hooks: dict[str, list[Callable]] | None = None,
        release_memory: bool = True,
        names=None,
    ):
        self.__dict__["_bound"] = model
        self.keep_pattern = keep_pattern
        self.record_residual = residual
        self.release_memory = release_memory
        self.hooks = {name: list(fns) for name, fns in (hooks or {}).items()}
        self.record = Record(names)
        self.attention: dict[int, AttentionStats] = {}
        self.residual: dict[int, ResidualStats] = {}

    def install(self, model_sites: ModelSites) -> None:
        for name, fns in self.hooks.items():
            model_sites.check_hook_name(name)
            for fn in fns:
                model_sites.add(self, name, fn)
        model_sites.ask(self, lambda: StatsRequest(pattern=self.keep_pattern))  # scan changes keep_pattern
        for site in model_sites.attention:
            model_sites.add(self, f"{site.name}.stats", self._keep_stats)
        for i in range(model_sites.view.num_layers):
            model_sites.add(self, f"layers.{i}.resid_post", self._keep_residual(i))

    def clear(self) -> None:
        self.attention.clear()
        self.residual.clear()
        self.record.clear()

    def _keep_stats(self, stats: AttentionStats, call: AttentionCall) -> None:
        layer = call.layer
        self.attention[layer] = stats
        for f in fields(stats):
            self.record.put(f"attn.{f.name}", layer, getattr(stats, f.name))
        if stats.colsum is not None:
            self.record.put("attn.alpha1", layer, stats.colsum[:, :, 0] / stats.count[:, None, 0].clamp_min(1))

    def _keep_residual(self, layer: int):
        def hook(hidden: torch.Tensor, call: AttentionCall) -> None:
            if self.record_residual:
                padding = call.key_padding
                valid = None if padding is None else padding[:, -hidden.shape[1] :].to(hidden.device)
                stats = residual_stats(hidden, valid)
                self.residual[layer] = stats
                for f in fields(stats):
                    self.record.put(f"resid.{f.name}", layer, getattr(stats, f.name))
            if self.release_memory:
                release_freed_memory(hidden.device)

        return hook
