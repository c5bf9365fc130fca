"""Classic codecs at the byte budget of a ``.tcm`` blob: the comparison people ask for.

For each codec, a bisection over its quality setting finds the file whose size is closest
to the budget (``POST /compare`` and the web page show them side by side). JPEG's own
quality is an integer, and one step changes the size by 5-10 % at the rates learned codecs
work at, so JPEG is searched on a real-valued quality: the libjpeg (IJG) scaling of its
standard quantisation tables, evaluated at a fractional quality and passed to Pillow as
explicit tables. WebP takes a fractional quality itself; AVIF's is an integer.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, JpegImagePlugin

from .baselines import CODECS, PillowCodec, to_pil, unavailable_reason

#: The codecs compared by default, in display order.
DEFAULT_CODECS = ("jpeg420", "webp", "avif")
#: Bisection steps: enough to land within ~1 % of the budget where the codec can.
SEARCH_STEPS = 14
#: A file this close below the budget ends the search.
CLOSE_ENOUGH = 0.005
#: How far from the budget still counts as "the same size".
TOLERANCE = 0.03


@dataclass(frozen=True)
class EqualSize:
    """One codec's file at the budget."""

    name: str
    label: str
    quality: float
    data: bytes
    pixels: np.ndarray  # decoded, (H, W, 1|3) uint8
    target: int

    @property
    def reachable(self) -> bool:
        """Within :data:`TOLERANCE` of the budget (a codec cannot go below its smallest file,
        and AVIF's integer quality can step over the window)."""
        return abs(len(self.data) - self.target) <= TOLERANCE * self.target


@cache
def _ijg_base_tables() -> tuple[tuple[int, ...], ...]:
    """The standard JPEG luminance and chrominance tables (IJG quality 50 = scale 100 %),
    as Pillow itself writes and reads them (so their order is Pillow's)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="JPEG", quality=50)
    with Image.open(buf) as im:
        assert isinstance(im, JpegImagePlugin.JpegImageFile)
        tables = im.quantization
    return tuple(tuple(tables[k]) for k in sorted(tables))


def jpeg_tables(quality: float) -> list[list[int]]:
    """libjpeg's quality scaling (5000/q below 50, 200 - 2q above) at a real-valued quality."""
    q = min(max(float(quality), 1.0), 100.0)
    scale = 5000.0 / q if q < 50 else 200.0 - 2.0 * q
    return [[int(min(max((b * scale + 50) // 100, 1), 255)) for b in table] for table in _ijg_base_tables()]


def encode(codec: PillowCodec, pixels: np.ndarray, quality: float) -> bytes:
    """``codec`` at a (possibly fractional) ``quality``."""
    buf = io.BytesIO()
    if codec.format == "JPEG":
        to_pil(pixels).save(buf, format="JPEG", qtables=jpeg_tables(quality), **codec.options)
    elif codec.format == "WEBP":
        to_pil(pixels).save(buf, format="WEBP", quality=float(quality), **codec.options)
    else:
        to_pil(pixels).save(buf, format=codec.format, quality=int(round(quality)), **codec.options)
    return buf.getvalue()


def _search(codec: PillowCodec, pixels: np.ndarray, target: int, check_time: Callable[[], None]) -> tuple[float, bytes]:
    """(quality, file): the largest file within :data:`TOLERANCE` at or below ``target``
    (never a bigger budget than the .tcm had), else the one closest to it; sizes grow with
    quality. Stops early once a file is within :data:`CLOSE_ENOUGH` below the target."""
    lo, hi = (float(v) for v in codec.quality_range)
    lo = max(lo, 1.0) if codec.format == "JPEG" else lo
    integer = codec.format not in ("JPEG", "WEBP")
    tried: dict[float, bytes] = {}

    def at(q: float) -> int:
        check_time()
        if q not in tried:
            tried[q] = encode(codec, pixels, q)
        return len(tried[q])

    if at(lo) < target < at(hi):
        for _ in range(SEARCH_STEPS):
            mid = round((lo + hi) / 2) if integer else (lo + hi) / 2
            if mid in (lo, hi):
                break
            size = at(mid)
            if (1 - CLOSE_ENOUGH) * target <= size <= target:
                break
            if size <= target:
                lo = mid
            else:
                hi = mid
    under = [q for q in tried if (1 - TOLERANCE) * target <= len(tried[q]) <= target]
    if under:
        best = max(under, key=lambda q: len(tried[q]))
    else:
        best = min(tried, key=lambda q: (abs(len(tried[q]) - target), q))
    return best, tried[best]


def at_equal_size(
    pixels: np.ndarray,
    target: int,
    names: Sequence[str] = DEFAULT_CODECS,
    check_time: Callable[[], None] = lambda: None,
) -> tuple[list[EqualSize], dict[str, str]]:
    """Each available codec's file closest to ``target`` bytes, decoded; and why the others
    are unavailable. ``check_time`` runs before every encode (it raises to stop the search,
    e.g. past a request's deadline)."""
    channels = pixels.shape[2] if pixels.ndim == 3 else 1
    out: list[EqualSize] = []
    unavailable: dict[str, str] = {}
    for name in names:
        reason = unavailable_reason(name)
        if reason is not None:
            unavailable[name] = reason
            continue
        codec = CODECS[name]
        quality, data = _search(codec, pixels, target, check_time)
        out.append(EqualSize(name, codec.label, quality, data, codec.decode(data, channels), target))
    return out, unavailable
