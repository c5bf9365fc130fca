"""Training crops: images decoded once into memory, cropped by a seeded generator.

Decoding a JPEG costs more than a training step's data needs, so every image is decoded
(EXIF orientation applied, large ones downscaled) once at start-up and kept as uint8.
Crops are drawn by a ``torch.Generator`` whose state is saved in the checkpoint, so a
resumed run sees exactly the crops an uninterrupted one would have seen.

Sampling picks a source folder uniformly, then an image in it, so a folder of 200 small
photos does not drown a folder of 40 large ones (the training README asks to mix sources).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
#: Smallest crop: the shifted-window blocks need latents of at least 2 windows per side.
MIN_CROP = 256


@dataclass(frozen=True)
class Source:
    """One folder of training images, decoded."""

    name: str
    images: tuple[torch.Tensor, ...]  # each (3, H, W) uint8, both sides >= crop


def _downscale_factor(width: int, height: int, max_side: int) -> int:
    """Integer factor bringing the short side to at most ``max_side`` (big wallpapers
    carry JPEG artefacts and repeat themselves at full size; downscaling fixes both)."""
    short = min(width, height)
    return max(1, -(-short // max_side)) if short > max_side else 1


def load_image(path: Path, crop: int, max_side: int) -> torch.Tensor | None:
    """Decode one photo as (3, H, W) uint8; None when it is smaller than a crop."""
    with Image.open(path) as src:
        im = ImageOps.exif_transpose(src).convert("RGB")
        f = _downscale_factor(im.width, im.height, max_side)
        if f > 1:
            im = im.resize((im.width // f, im.height // f), Image.Resampling.LANCZOS)
        if min(im.width, im.height) < crop:
            return None
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).contiguous()


def image_files(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder`` (sorted: the order is part of reproducibility)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def sources_under(root: Path) -> list[Path]:
    """The source folders of a dataset root: its sub-folders holding images, or the root
    itself when the images lie directly in it."""
    subs = sorted(d for d in root.iterdir() if d.is_dir() and image_files(d))
    return subs or [root]


def load_sources(roots: Sequence[str | os.PathLike[str]], crop: int, max_side: int = 1024) -> list[Source]:
    """Decode every usable image under ``roots``; refuse Kodak and empty datasets."""
    if crop < MIN_CROP:
        raise ConfigError(
            f"crop must be at least {MIN_CROP} (smaller crops break the shifted-window blocks), got {crop}"
        )
    sources: list[Source] = []
    for raw in roots:
        root = Path(raw)
        if not root.is_dir():
            raise ConfigError(f"training data folder not found: {root}")
        if "kodak" in root.resolve().as_posix().lower():
            raise ConfigError(f"refusing to train on {root}: Kodak is the test set")
        for folder in sources_under(root):
            images = tuple(t for t in (load_image(p, crop, max_side) for p in image_files(folder)) if t is not None)
            if images:
                sources.append(Source(folder.name, images))
    if not sources:
        raise ConfigError(f"no training image of at least {crop}x{crop} under {', '.join(map(str, roots))}")
    return sources


def random_batch(sources: list[Source], batch_size: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    """(B, 3, crop, crop) float in [0, 1]: source, image, position and flip from ``gen``."""
    out = torch.empty(batch_size, 3, crop, crop)
    for b in range(batch_size):
        src = sources[int(torch.randint(len(sources), (1,), generator=gen))]
        img = src.images[int(torch.randint(len(src.images), (1,), generator=gen))]
        _, h, w = img.shape
        top = int(torch.randint(h - crop + 1, (1,), generator=gen))
        left = int(torch.randint(w - crop + 1, (1,), generator=gen))
        patch = img[:, top : top + crop, left : left + crop]
        if bool(torch.randint(2, (1,), generator=gen)):
            patch = patch.flip(-1)
        out[b] = patch.float() / 255.0
    return out
