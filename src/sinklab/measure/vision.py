"""Scans of image encoders: [CLS] and register sinks, high-norm patch tokens, and sink maps over the image.

Vision Transformers park attention on a few tokens as language models do: the [CLS] token, the learned registers
where a model has them, and otherwise a few background patches whose residual norm is far above the rest (Darcet et
al. 2024, "Vision Transformers Need Registers": in DINOv2 ViT-g about 2 % of the patch tokens have norm > 150, they
hold global information, and registers take their role). ``scan_images`` runs the model over images inside one
``Observer`` (the attention sites and O(T) statistics of the text scan, no T x T matrix) and reports, with N images,
T tokens, A^{l,h} the attention of layer l, head h:

    prefix_mass[l, h, p] = 1/N sum_images 1/T sum_i A_{i,p}                  share of attention on prefix token p
    patch_peak[l, h]     = 1/N sum_images max_{patch j} 1/T sum_i A_{i,j}     the strongest patch sink
    map[image, l, r, c]  = 1/H sum_h 1/T sum_i A_{i, patch (r, c)}            the sink map drawn over the image

and each token's residual norm ||x_t||_2 after every block and at the model's output. A patch token is high-norm when
||x_t|| > ``high_norm`` (Darcet et al.'s 150) or, scale-free, ||x_t|| > ``norm_ratio`` x the median patch norm of
the same image and layer. The text scan's metrics come with it: alpha_1 is the [CLS] mass where [CLS] comes first
(SigLIP has none: its first token is a patch), sinks are labelled [CLS], [REGk] or ``patch row,col``.
"""

from __future__ import annotations

import inspect
import math

import torch

from sinklab.errors import SinklabInputError, check_fraction
from sinklab.hf import ModelView
from sinklab.hf.arch import VisionLayout, layer_types
from sinklab.measure import metrics
from sinklab.measure.engine import Observer
from sinklab.measure.result import Accumulator, ScanResult, VisionScan
from sinklab.models import input_device
from sinklab.progress import Progress
from sinklab.provenance import image_record, run_provenance

HIGH_NORM = 150.0  # Darcet et al. 2024: "high-norm" tokens have norm > 150 (DINOv2 ViT-g)
NORM_RATIO = 3.0  # the scale-free rule: norm > 3 x the median patch norm of that image and layer
MAX_MAPS = 8  # images whose per-layer maps and token norms are kept and drawn


def high_norm_patches(norms: torch.Tensor, high_norm: float, norm_ratio: float):
    """Darcet et al. 2024's high-norm patch tokens of patch norms [..., P]: ``(norm > high_norm [..., P],
    norm > norm_ratio * median [..., P], median [...])``, the median over the patches of each image and layer."""
    median = norms.median(dim=-1).values
    return norms > high_norm, norms > norm_ratio * median[..., None], median


class _VisionAccumulator:
    """Sums the image-specific statistics of each forward pass (nothing T x T)."""

    def __init__(self, L: int, H: int, layout: VisionLayout, grid, high_norm: float, norm_ratio: float, max_maps: int):
        self.L, self.P, self.grid = L, len(layout.prefix), grid
        self.high_norm, self.norm_ratio, self.max_maps = high_norm, norm_ratio, max_maps
        self.prefix_mass = torch.zeros(L, H, self.P, dtype=torch.float64)
        self.patch_peak = torch.zeros(L, H, dtype=torch.float64)
        self.median = torch.zeros(L + 1, dtype=torch.float64)
        self.max = torch.zeros(L + 1, dtype=torch.float64)
        self.prefix_norm = torch.zeros(L + 1, self.P, dtype=torch.float64)
        self.above_threshold = torch.zeros(L + 1, dtype=torch.long)
        self.above_ratio = torch.zeros(L + 1, dtype=torch.long)
        self.tokens: list[dict] = []
        self.maps: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []

    def add(self, obs: Observer, norms: dict[int, torch.Tensor], output: torch.Tensor, start: int) -> None:
        """One batch: the observed attention statistics, block-output norms {layer: [B, T]}, the model output."""
        # per layer to the host first: a model split by a device_map keeps each layer's statistics on its device
        mass = torch.stack([metrics.mean_received(obs.attention[i]).cpu() for i in range(self.L)]).double()
        self.prefix_mass += mass[..., : self.P].sum(1)  # [L, B, H, T] -> [L, H, P]
        self.patch_peak += mass[..., self.P :].amax(-1).sum(1)
        norm = torch.stack([*(norms[i].cpu() for i in range(self.L)), output.detach().float().norm(dim=-1).cpu()])
        patch = norm[..., self.P :].double()  # [L + 1, B, patches]
        above, ratio, median = high_norm_patches(patch, self.high_norm, self.norm_ratio)
        self.median += median.sum(1)
        self.max = torch.maximum(self.max, patch.amax((1, 2)))
        self.prefix_norm += norm[..., : self.P].double().sum(1)
        self.above_threshold += above.sum((1, 2))
        self.above_ratio += ratio.sum((1, 2))
        cols = self.grid[1]
        for b, j in (above[-1] | ratio[-1]).nonzero().tolist():
            value = float(patch[-1, b, j])
            self.tokens.append(
                {
                    "image": start + b,
                    "row": j // cols,
                    "col": j % cols,
                    "norm": round(value, 3),
                    "ratio_to_median": round(value / max(float(median[-1, b]), 1e-12), 2),
                    "above_threshold": bool(above[-1, b, j]),
                    "above_ratio": bool(ratio[-1, b, j]),
                }
            )
        keep = max(0, self.max_maps - start)
        if keep:
            self.maps.append(mass[:, :keep, :, self.P :].mean(2).float().transpose(0, 1).unflatten(-1, self.grid))
            self.norms.append(norm[:, :keep].transpose(0, 1))


def _pixels(images, processor, layout: VisionLayout):
    """(items or None, pixel values [N, C, H, W], how they were made) of ``images``: pixel values as given, or images
    read and preprocessed (``sinklab.data.images``)."""
    from sinklab.data.images import pixel_values, read_images

    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != layout.num_channels:
            raise SinklabInputError(
                f"pixel values must be [N, {layout.num_channels}, H, W], got shape {list(images.shape)}"
            )
        return None, images.float(), "pixel values given"
    items = read_images(images, layout.num_channels)
    return (items, *pixel_values(items, processor, layout))


def _size_kwargs(base_model, layout: VisionLayout, size: tuple[int, int]) -> dict:
    """Inputs of another size than the configured one need interpolated position embeddings: asked for where the
    forward takes ``interpolate_pos_encoding`` (ViT, DeiT, CLIP, SigLIP); DINOv2 always interpolates."""
    takes = "interpolate_pos_encoding" in inspect.signature(base_model.forward).parameters
    return {"interpolate_pos_encoding": True} if takes and size != layout.image_size else {}


@torch.no_grad()
def scan_images(
    model,
    processor=None,
    images=None,
    eps: float = 0.3,
    *,
    batch_size: int = 8,
    sink_threshold: float | None = None,
    min_queries: int | None = None,
    high_norm: float = HIGH_NORM,
    norm_ratio: float = NORM_RATIO,
    max_maps: int = MAX_MAPS,
    model_name: str | None = None,
    progress: bool = True,
) -> ScanResult:
    """Measure [CLS] and register sinks, patch sinks and high-norm patch tokens of an image encoder (formulas in the
    module docstring); ``result.vision`` holds the image-specific part, the rest is the text scan's.

    ``images``: None (matplotlib's sample images), a path, a list of paths and PIL images, or pixel values
    [N, C, H, W]; ``processor``: the model's transformers image processor, or None for the plain resize/normalize of
    ``sinklab.data.images``. ``eps``: Gu et al.'s threshold for Sink_1^eps; ``high_norm`` and ``norm_ratio``: the
    two high-norm rules; ``max_maps``: how many images keep per-layer maps and token norms.
    """
    view = ModelView(model)
    layout = view.vision
    if layout is None:
        raise SinklabInputError(
            f"{type(model).__name__} is not an image encoder; images are scanned with ViT, DeiT, DINOv2 (with or "
            "without registers), CLIP or SigLIP vision towers"
        )
    check_fraction("eps", eps)
    if sink_threshold is not None:
        check_fraction("sink_threshold", sink_threshold)
    if batch_size < 1 or max_maps < 0 or not high_norm > 0 or not norm_ratio > 1:
        raise SinklabInputError(
            f"need batch_size >= 1, max_maps >= 0, high_norm > 0 and norm_ratio > 1, got {batch_size}, {max_maps}, "
            f"{high_norm} and {norm_ratio}"
        )
    items, pixels, preprocessing = _pixels(images, processor, layout)
    grid = layout.grid(*pixels.shape[-2:])
    labels = layout.labels(grid)
    T = len(labels)
    L, H = view.num_layers, view.require_attention()[0].num_heads
    sink_threshold = eps if sink_threshold is None else sink_threshold
    acc = Accumulator(L, H, view.config.hidden_size, eps, sink_threshold, min_queries or max(1, min(32, T // 4)))
    part = _VisionAccumulator(L, H, layout, grid, high_norm, norm_ratio, max_maps)
    param = next(model.parameters())
    norms: dict[int, torch.Tensor] = {}

    def keep_norm(layer: int):
        def hook(hidden: torch.Tensor, call) -> None:
            norms[layer] = hidden.detach().float().norm(dim=-1)  # [B, T]

        return hook

    kwargs = _size_kwargs(model.base_model, layout, tuple(pixels.shape[-2:]))
    num_batches = math.ceil(pixels.shape[0] / batch_size)
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"scan {model_name or type(model).__name__}", total=num_batches * L)
        hooks = {f"layers.{i}.resid_post": [keep_norm(i), lambda hidden, call: bar.advance(task)] for i in range(L)}
        with Observer(model, hooks=hooks) as obs:
            for start in range(0, pixels.shape[0], batch_size):
                obs.clear()
                batch = pixels[start : start + batch_size].to(input_device(model), param.dtype)
                output = model.base_model(pixel_values=batch, **kwargs).last_hidden_state
                if output.shape[1] != T:
                    raise SinklabInputError(
                        f"{type(model).__name__} gave {output.shape[1]} tokens for a {grid[0]}x{grid[1]} patch grid "
                        f"after {len(layout.prefix)} prefix tokens; sinklab reads [CLS]/registers, then patches"
                    )
                ids = torch.arange(T).expand(batch.shape[0], T)
                acc.add(obs, ids, torch.ones_like(ids), labels.__getitem__)
                part.add(obs, norms, output, start)
    n = acc.sequences
    vision = VisionScan(
        images=[{"name": it.name, "width": it.image.width, "height": it.image.height} for it in items]
        if items is not None
        else [{"name": f"image {i}", "width": pixels.shape[-1], "height": pixels.shape[-2]} for i in range(n)],
        input_size=tuple(pixels.shape[-2:]),
        grid=grid,
        labels=labels,
        prefix_mass=part.prefix_mass / n,
        patch_peak=part.patch_peak / n,
        high_norm=high_norm,
        norm_ratio=norm_ratio,
        patch_norm_median=part.median / n,
        patch_norm_max=part.max,
        prefix_norm=part.prefix_norm / n,
        above_threshold=part.above_threshold,
        above_ratio=part.above_ratio,
        high_norm_tokens=part.tokens,
        maps=torch.cat(part.maps) if part.maps else torch.zeros(0, L, *grid),
        token_norm=torch.cat(part.norms) if part.norms else torch.zeros(0, L + 1, T),
        pixels=pixels[:max_maps].clone(),
    )
    return ScanResult(
        model=model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        num_layers=L,
        num_heads=H,
        num_kv_heads=view.attention[0].num_kv_heads,
        sequence_length=T,
        eps=eps,
        sink_threshold=sink_threshold,
        layer_types=layer_types(model.config),
        **acc.results(),
        provenance=run_provenance(model, images=image_record(items, pixels, preprocessing)),
        vision=vision,
    )
