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
moves an image between the two sides, and every machine draws the same split (names are
hashed in Unicode NFC, so a file system that stores them decomposed draws it too). Both
sides walk a dataset the same way (:func:`sources_under`, :func:`image_files`).

No torch here: ``tcm``'s argument parsers and the evaluation import this module.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageError
from ..imageio import IMAGE_SUFFIXES

#: Photos whose short side exceeds this are downscaled by an integer factor (--max-side).
MAX_SIDE = 1024
#: One photo in HOLDOUT_MODULUS is held out.
HOLDOUT_MODULUS = 10
#: The rule as recorded in a training record (a run resumed under another rule is refused):
#: the first 8 bytes of the SHA-256 of the file name (NFC, file-system bytes), big-endian.
HOLDOUT_RULE = f"sha256(NFC file name)[:8] as big-endian integer % {HOLDOUT_MODULUS} == 0"
#: What a training record made before the hold-out existed stands for: every photo trained on.
NO_HOLDOUT = "none"


def image_files(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder`` (sorted: the order is part of reproducibility)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def sources_under(root: Path) -> list[Path]:
    """The source folders of a dataset root: its sub-folders holding images (linked ones
    too), or the root itself when the images lie directly in it."""
    subs = sorted(d for d in root.iterdir() if d.is_dir() and image_files(d))
    return subs or [root]


def dataset_files(root: Path) -> list[Path]:
    """Every image file of the dataset at ``root``, source folder by source folder: what
    training chooses from and what the hold-out is drawn from."""
    return [f for folder in sources_under(root) for f in image_files(folder)]


def is_held_out(path: Path) -> bool:
    """True when the photo at ``path`` belongs to the hold-out (decided by its name only)."""
    name = os.fsencode(unicodedata.normalize("NFC", path.name))  # any name, one spelling
    return int.from_bytes(hashlib.sha256(name).digest()[:8], "big") % HOLDOUT_MODULUS == 0


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
    """One photo as training sees it: (H, W, 3) uint8, oriented and downscaled. A file that
    does not decode (or that Pillow refuses as a decompression bomb) is an
    :class:`~tcm_serve.errors.ImageError` naming it."""
    try:
        with Image.open(path) as src:
            im = ImageOps.exif_transpose(src).convert("RGB")
            f = downscale_factor(im.width, im.height, max_side)
            if f > 1:
                im = im.resize((im.width // f, im.height // f), Image.Resampling.LANCZOS)
            return np.asarray(im).copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: cannot use this photo: {exc}") from None
