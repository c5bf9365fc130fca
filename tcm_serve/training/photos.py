"""The photos of a training set: which ones training may use, and how each is prepared.

**Preparation.** A photo is decoded with its EXIF orientation applied and, when its short
side exceeds ``MAX_SIDE``, downscaled by an integer factor (the big wallpapers carry JPEG
artefacts and repeat themselves at full size; downscaling fixes both). The trainer and the
hold-out evaluation both prepare photos here, so the evaluation scores what the model was
trained to code.

**Hold-out.** Kodak is the field's benchmark, but the bundled models' validation curve and
schedule were watched on four of its images, so it is not an untouched test set for them.
A fixed tenth of a training set is set aside: ``tcm train`` skips it and
``tcm eval --holdout`` scores exactly it. Membership is decided by the file's *name* alone
(a hash, not a position in a listing), so adding, removing or moving other files never
moves an image between the two sides, and every machine draws the same split.

No torch here: ``tcm``'s argument parsers and the evaluation import this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..imageio import IMAGE_SUFFIXES

#: Photos whose short side exceeds this are downscaled by an integer factor (--max-side).
MAX_SIDE = 1024
#: One photo in HOLDOUT_MODULUS is held out.
HOLDOUT_MODULUS = 10
#: The rule as recorded in a training record (a run resumed under another rule is refused).
HOLDOUT_RULE = f"sha256(file name) % {HOLDOUT_MODULUS} == 0"
#: What a training record made before the hold-out existed stands for: every photo trained on.
NO_HOLDOUT = "none"


def image_files(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder`` (sorted: the order is part of reproducibility)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_held_out(path: Path) -> bool:
    """True when the photo at ``path`` belongs to the hold-out (decided by its name only)."""
    digest = hashlib.sha256(path.name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HOLDOUT_MODULUS == 0


def held_out(files: Iterable[Path]) -> list[Path]:
    """The held-out members of ``files``, in their given order."""
    return [f for f in files if is_held_out(f)]


def trainable(files: Iterable[Path]) -> list[Path]:
    """The members of ``files`` that training may use, in their given order."""
    return [f for f in files if not is_held_out(f)]


def downscale_factor(width: int, height: int, max_side: int) -> int:
    """Integer factor bringing the short side to at most ``max_side``."""
    short = min(width, height)
    return max(1, -(-short // max_side)) if short > max_side else 1


def prepare_photo(path: Path, max_side: int = MAX_SIDE) -> np.ndarray:
    """One photo as training sees it: (H, W, 3) uint8, oriented and downscaled."""
    with Image.open(path) as src:
        im = ImageOps.exif_transpose(src).convert("RGB")
        f = downscale_factor(im.width, im.height, max_side)
        if f > 1:
            im = im.resize((im.width // f, im.height // f), Image.Resampling.LANCZOS)
        return np.asarray(im).copy()
