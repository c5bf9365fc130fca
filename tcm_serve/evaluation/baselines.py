"""Classic codecs through Pillow: JPEG 4:2:0, JPEG 4:4:4, WebP and AVIF.

Each codec encodes an 8-bit image at one quality setting to bytes and decodes them back;
the rate is the size of those bytes (the whole file a user would store: headers included,
no metadata added). Settings are Pillow's defaults apart from ``quality`` and, for JPEG,
``subsampling``: baseline Huffman tables without ``optimize`` (as CompressAI's Pillow
baselines use), WebP lossy ``method=4``, AVIF ``speed=6`` 4:2:0 through whichever AV1
encoder Pillow's libavif was built with. A different setting is a different codec:
state it next to any number.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
from PIL import Image, features


@dataclass(frozen=True)
class PillowCodec:
    """One Pillow format with fixed options; ``quality`` is the swept parameter."""

    name: str
    label: str
    format: str
    feature: str  # Pillow feature name that must be present to encode/decode
    qualities: tuple[int, ...]  # the default sweep
    quality_range: tuple[int, int]
    options: dict[str, Any] = field(default_factory=dict)

    def encode(self, pixels: np.ndarray, quality: int) -> bytes:
        """Encode (H, W, 1|3) uint8 pixels at ``quality``."""
        buf = io.BytesIO()
        to_pil(pixels).save(buf, format=self.format, quality=int(quality), **self.options)
        return buf.getvalue()

    def decode(self, data: bytes, channels: int) -> np.ndarray:
        """Decode to (H, W, channels) uint8 (the original's channel count)."""
        with Image.open(io.BytesIO(data), formats=[self.format]) as src:
            out = np.asarray(src.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        return out[:, :, None] if out.ndim == 2 else out


def to_pil(pixels: np.ndarray) -> Image.Image:
    """(H, W, 1|3) uint8 pixels as a Pillow image (L or RGB)."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(pixels[:, :, 0]), "L")
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


# Dense where learned codecs at low rates sit (~22-28 dB): BD-rate interpolates the anchor
# between its points, and JPEG q5 and q10 are 2.8 dB apart on Kodak (a sweep in steps of 5
# put BD-rate about 1 point off). The low WebP/AVIF settings reach down to ~25 dB so that
# a low-rate curve overlaps them at all.
_JPEG_SWEEP = (*range(4, 21), 25, 30, 40, 50, 60, 70, 80, 90, 95)
_WEBP_SWEEP = (0, 2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)
_AVIF_SWEEP = (0, 3, 6, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90)

#: Every baseline by name, in report order.
CODECS: dict[str, PillowCodec] = {
    c.name: c
    for c in (
        PillowCodec("jpeg420", "JPEG 4:2:0", "JPEG", "jpg", _JPEG_SWEEP, (1, 100), {"subsampling": "4:2:0"}),
        PillowCodec("jpeg444", "JPEG 4:4:4", "JPEG", "jpg", _JPEG_SWEEP, (1, 100), {"subsampling": "4:4:4"}),
        PillowCodec("webp", "WebP", "WEBP", "webp", _WEBP_SWEEP, (0, 100)),
        PillowCodec("avif", "AVIF", "AVIF", "avif", _AVIF_SWEEP, (0, 100)),
    )
}


@cache
def unavailable_reason(name: str) -> str | None:
    """Why this Pillow cannot run the codec (None when it can): checked by a real round trip."""
    codec = CODECS[name]
    import PIL

    if not features.check(codec.feature):
        hint = " (Pillow >= 11.2 wheels include AVIF)" if codec.feature == "avif" else ""
        return f"{codec.label} is not supported by this Pillow {PIL.__version__}{hint}"
    try:
        probe = np.zeros((16, 16, 3), dtype=np.uint8)
        codec.decode(codec.encode(probe, codec.qualities[0]), 3)
    except Exception as exc:  # noqa: BLE001 - a plugin present but without a working encoder
        return f"{codec.label} round trip fails in this Pillow {PIL.__version__}: {exc}"
    return None


def library_versions() -> dict[str, str | None]:
    """Versions of Pillow and the codec libraries it links (they decide the numbers)."""
    import PIL

    out: dict[str, str | None] = {"pillow": PIL.__version__}
    for feat in ("jpg", "libjpeg_turbo", "webp", "avif"):
        try:
            out[feat] = features.version(feat)
        except ValueError:  # unknown feature in an old Pillow
            out[feat] = None
    return out


def check_qualities(codec: PillowCodec, qualities: Sequence[int]) -> None:
    lo, hi = codec.quality_range
    bad = [q for q in qualities if not lo <= q <= hi]
    if bad:
        raise ValueError(f"{codec.name} quality must be in {lo}..{hi}, got {bad[0]}")
