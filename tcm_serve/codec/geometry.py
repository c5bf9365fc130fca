"""Image geometry the codec can take: the padding rule's sizes and the limits built on them.

No torch, no numpy: the image guard (:mod:`tcm_serve.imageio`) and the container checks use
it before any pixel is decoded.

Why a second limit beside ``max_pixels`` (width x height): the transforms run on the
*padded* image (each side up to a multiple of 128, at least 256), and memory and time grow
with that. For ordinary shapes padding adds a few percent, but a thin image is almost all
padding: 40,000,000 x 1 pixels is within a 40 MP limit and pads to 40,000,000 x 256, a
10-gigapixel tensor. So the padded area is bounded too, by what an image of ``max_pixels``
pixels with sides no longer than a square's pads to at worst (:func:`padded_pixel_limit`):
every reasonably shaped image under ``max_pixels`` passes, extreme strips do not.
"""
from __future__ import annotations

import math

from tcm_serve.errors import ImageTooLargeError

#: Each padded side is a multiple of this (window attention at 1/32 scale needs whole windows).
ALIGN = 128
#: ...and at least this (the reference's SWAtten fallback breaks on a padded side of 128).
MIN_PADDED = 256
#: Width and height are 16-bit fields in the ``.tcm`` header.
MAX_SIDE = 0xFFFF


def padded_size(n: int) -> int:
    """The side an image side of ``n`` pixels is padded to."""
    if n < 1:
        raise ValueError(f"image side must be >= 1, got {n}")
    return max(MIN_PADDED, -(-n // ALIGN) * ALIGN)


def padded_pixel_limit(max_pixels: int) -> int:
    """Largest padded area allowed alongside a ``max_pixels`` limit on width x height.

    ``max_pixels + 2 * ALIGN * ceil(sqrt(max_pixels)) + MIN_PADDED**2``: a side pads by
    less than ``ALIGN`` once it exceeds ``MIN_PADDED``, so an image of ``max_pixels`` pixels
    whose sides sum to at most a square's ``2 * sqrt(max_pixels)`` pads to less than this;
    the last term covers small images, which pad up to 256 x 256.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    return max_pixels + 2 * ALIGN * math.isqrt(max_pixels - 1) + 2 * ALIGN + MIN_PADDED**2


def check_coded_size(width: int, height: int, padded_width: int, padded_height: int, max_pixels: int, what: str) -> None:
    """Raise :class:`ImageTooLargeError` unless this geometry is within ``max_pixels``.

    ``what`` is "image" (the encoder's image guard) or "blob" (the decoder's): both call
    this, so whatever compresses under a limit decodes under it.
    """
    subject = f"blob decodes to a {width}x{height} image" if what == "blob" else f"{what} is {width}x{height}"
    n = width * height
    if n > max_pixels:
        raise ImageTooLargeError(f"{subject} ({n:,} pixels), over the limit of {max_pixels:,} pixels")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ImageTooLargeError(f"{subject}: a .tcm image's sides are at most {MAX_SIDE} pixels")
    padded, limit = padded_width * padded_height, padded_pixel_limit(max_pixels)
    if padded > limit:
        raise ImageTooLargeError(
            f"{subject}, which the model pads to {padded_width}x{padded_height} "
            f"({padded:,} pixels), over the {limit:,} allowed with a limit of {max_pixels:,} pixels "
            "(a strip this thin is mostly padding: split it into shorter pieces)"
        )


def check_image_size(width: int, height: int, max_pixels: int) -> None:
    """The encoder's check: the image and the padded tensor the model will see."""
    check_coded_size(width, height, padded_size(width), padded_size(height), max_pixels, "image")
