"""Training crops: images decoded once into memory, cropped by a seeded generator.

Decoding a JPEG costs more than a training step's data needs, so every image is decoded
(EXIF orientation applied, large ones downscaled) once at start-up and kept as uint8.
Crops are drawn by a ``torch.Generator`` whose state is saved in the checkpoint, so a
resumed run sees exactly the crops an uninterrupted one would have seen.

Sampling picks a source folder uniformly, then an image in it, so a folder of 200 small
photos does not drown a folder of 40 large ones (the training README asks to mix sources).
The hold-out (``photos.py``) is skipped here, the one place training images are chosen.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from .photos import MAX_SIDE, image_files, prepare_photo, sources_under, trainable

#: Smallest crop: the shifted-window blocks need latents of at least 2 windows per side.
MIN_CROP = 256


@dataclass(frozen=True)
class Source:
    """One folder of training images, decoded."""

    name: str
    images: tuple[torch.Tensor, ...]  # each (3, H, W) uint8, both sides >= crop


def load_image(path: Path, crop: int, max_side: int) -> torch.Tensor | None:
    """Decode one photo as (3, H, W) uint8; None when it is smaller than a crop."""
    pixels = prepare_photo(path, max_side)
    if min(pixels.shape[:2]) < crop:
        return None
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def load_sources(roots: Sequence[str | os.PathLike[str]], crop: int, max_side: int = MAX_SIDE) -> list[Source]:
    """Decode every usable image under ``roots`` outside the hold-out; refuse Kodak and
    empty datasets."""
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
            files = trainable(image_files(folder))
            images = tuple(t for t in (load_image(p, crop, max_side) for p in files) if t is not None)
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
