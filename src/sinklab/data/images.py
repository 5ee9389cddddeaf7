"""Images in, pixel values out, for scans of image encoders.

The embedded images are matplotlib's sample photographs and drawings (``matplotlib.cbook.get_sample_data``), which
every machine with sinklab has. Users give image files or directories (every image file inside, sorted), or PIL
images. Pixel values come from the model's own transformers image processor when there is one; otherwise from a
plain rule built from the config: resize to ``image_size`` (bicubic), scale to [0, 1], normalize with mean = std =
0.5 per channel (the ViT and SigLIP processors' defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sinklab.errors import SinklabInputError
from sinklab.hf.arch import VisionLayout

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
EMBEDDED_IMAGES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
PLAIN_MEAN = PLAIN_STD = 0.5


@dataclass
class ImageItem:
    """One image to scan: its name, the file it came from (None for an in-memory image) and its pixels."""

    name: str
    path: Path | None
    image: object  # PIL.Image.Image in RGB (or L for one-channel models)


def embedded_image_paths() -> list[Path]:
    """matplotlib's sample images, the default of every image scan."""
    from matplotlib import cbook

    return [Path(cbook.get_sample_data(name, asfileobj=False)) for name in EMBEDDED_IMAGES]


def image_files(paths: list[str | Path]) -> list[Path]:
    """Image files of ``paths``: a file as it is (it must have an image suffix), a directory's image files (sorted,
    recursive). Refuses a missing path, a non-image file and a directory without images."""
    accepted = ", ".join(IMAGE_SUFFIXES)
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SinklabInputError(f"directory {path} holds no image files (accepted: {accepted})")
            files += found
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise SinklabInputError(f"{path} is not an image file; accepted: {accepted}, or a directory of them")
            files.append(path)
        else:
            raise SinklabInputError(f"image path {path} does not exist; give image files or directories ({accepted})")
    return files


def _open(path: Path, mode: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (UnidentifiedImageError, OSError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise SinklabInputError(
            f"{path} is not a readable image ({reason}); accepted: {', '.join(IMAGE_SUFFIXES)}"
        ) from None


def read_images(images=None, channels: int = 3) -> list[ImageItem]:
    """``images``: None (the embedded images), a path, or a list of paths, PIL images and ``ImageItem``s ->
    ``ImageItem``s with RGB pixels (grey for one-channel models)."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    if images is None:
        images = embedded_image_paths()
    if isinstance(images, str | Path | Image.Image):
        images = [images]
    items = list(images)
    if not items:
        raise SinklabInputError("no images given; pass image files, directories, PIL images, or None for the embedded")
    out = []
    for i, x in enumerate(items):
        if isinstance(x, ImageItem):  # read before (the CLI reads images before it loads the model)
            out.append(ImageItem(x.name, x.path, x.image.convert(mode)))
        elif isinstance(x, Image.Image):
            out.append(ImageItem(f"image {i}", None, x.convert(mode)))
        elif isinstance(x, str | Path):
            out += [ImageItem(p.name, p, _open(p, mode)) for p in image_files([x])]
        else:
            raise SinklabInputError(
                f"images must be paths or PIL images, got {type(x).__name__}; pass pixel values as a tensor instead"
            )
    return out


def pixel_values(items: list[ImageItem], processor, layout: VisionLayout) -> tuple[torch.Tensor, str]:
    """[N, C, H, W] float32 pixel values of ``items`` and how they were made: the model's image ``processor``, or
    without one the plain rule of this module's docstring at the config's ``image_size``."""
    images = [item.image for item in items]
    if processor is not None:
        if not callable(processor) or not hasattr(processor, "image_mean"):
            raise SinklabInputError(
                f"processor must be the model's transformers image processor or None, got {type(processor).__name__}"
            )
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].float()
        return pixels, f"image processor {type(processor).__name__}"
    from PIL import Image

    height, width = layout.image_size
    arrays = [
        np.asarray(im.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0 for im in images
    ]
    pixels = torch.from_numpy(np.stack(arrays)).reshape(len(images), height, width, -1).permute(0, 3, 1, 2)
    pixels = (pixels - PLAIN_MEAN) / PLAIN_STD
    return pixels.contiguous(), f"resize to {height}x{width} (bicubic), /255, mean {PLAIN_MEAN} std {PLAIN_STD}"
