"""Image geometry the codec can take: the padding rule, the latent grids, and the limits built on them.

The one home of every size the codec derives from an image's: the padded size, how the
padding splits between the sides, the y and z grids the networks produce, and what a
header's z grid says about the image. Shapes are (height, width) throughout; only the
``.tcm`` header stores width before height, and only its byte layout knows that.

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
from dataclasses import dataclass

from tcm_serve.errors import ImageTooLargeError

#: Each padded side is a multiple of this (window attention at 1/32 scale needs whole windows).
ALIGN = 128
#: ...and at least this (the reference's SWAtten fallback breaks on a padded side of 128).
MIN_PADDED = 256
#: Width and height are 16-bit fields in the ``.tcm`` header.
MAX_SIDE = 0xFFFF
#: y is at 1/16 of the padded resolution (4 x stride-2 in g_a).
Y_STRIDE = 16
#: z is at 1/64 of the padded resolution (2 more stride-2 in h_a).
Z_STRIDE = 64

#: Tiled transforms (tcm_serve.codec.tiling): default core size and halo, pixels. Chosen by
#: measurement (docs/codec.md, "Tiling"); ``tile`` 0 turns tiling off.
DEFAULT_TILE = 1024
DEFAULT_HALO = 128
NO_TILING = 0

#: (left, right, top, bottom) of a tensor that is not padded.
NO_PAD: tuple[int, int, int, int] = (0, 0, 0, 0)


def padded_size(n: int) -> int:
    """The side an image side of ``n`` pixels is padded to."""
    if n < 1:
        raise ValueError(f"image side must be >= 1, got {n}")
    return max(MIN_PADDED, -(-n // ALIGN) * ALIGN)


def is_coded_side(n: int) -> bool:
    """Whether ``n`` is a padded side :func:`padded_size` produces, hence one the networks
    run on (window attention fails on other sizes)."""
    return n % ALIGN == 0 and n >= MIN_PADDED


def tile_problem(tile: int) -> str | None:
    """Why ``tile`` is not a usable core size for tiled transforms, or None. A core is a
    padded size (so a window, a core plus halos, is one the networks run on); 0 is off."""
    if tile == NO_TILING:
        return None
    if tile < MIN_PADDED or tile % ALIGN:
        return f"tile must be 0 (off) or a multiple of {ALIGN} pixels of at least {MIN_PADDED}, got {tile}"
    return None


def split_padding(total: int) -> tuple[int, int]:
    """(before, after) halves of ``total`` padding, floor/rest, as the reference splits it:
    the split is part of the bitstream (the image's place in the padded tensor)."""
    return total // 2, total - total // 2


@dataclass(frozen=True)
class Geometry:
    """An image of ``height`` x ``width`` pixels in a tensor padded by ``pad``.

    Built from an image by the padding rule (:meth:`for_image`), from a header's z grid
    and padding (:meth:`from_z`), or directly, e.g. ``Geometry(h, w)`` for a tensor that
    already has its padded size. Every padded size, padding and latent grid the codec
    uses comes from here.
    """

    height: int
    width: int
    pad: tuple[int, int, int, int] = NO_PAD  # (left, right, top, bottom) zero padding

    @classmethod
    def for_image(cls, height: int, width: int) -> Geometry:
        """The padding rule: each side up to :func:`padded_size`, split by :func:`split_padding`."""
        left, right = split_padding(padded_size(width) - width)
        top, bottom = split_padding(padded_size(height) - height)
        return cls(height, width, (left, right, top, bottom))

    @classmethod
    def from_z(cls, z_shape: tuple[int, int], pad: tuple[int, int, int, int] = NO_PAD) -> Geometry:
        """The image a z grid of ``z_shape`` (zH, zW) holds after ``pad`` is cropped off
        (a header's view; without ``pad``, the padded tensor itself)."""
        zh, zw = z_shape
        left, right, top, bottom = pad
        return cls(Z_STRIDE * zh - top - bottom, Z_STRIDE * zw - left - right, pad)

    @property
    def padded_height(self) -> int:
        return self.height + self.pad[2] + self.pad[3]

    @property
    def padded_width(self) -> int:
        return self.width + self.pad[0] + self.pad[1]

    @property
    def padded_shape(self) -> tuple[int, int]:
        """(height, width) of the padded tensor the transforms run on."""
        return self.padded_height, self.padded_width

    @property
    def y_shape(self) -> tuple[int, int]:
        """(yH, yW): the latent grid g_a produces from the padded tensor."""
        return self.padded_height // Y_STRIDE, self.padded_width // Y_STRIDE

    @property
    def z_shape(self) -> tuple[int, int]:
        """(zH, zW): the hyper-latent grid h_a produces (what a header records)."""
        return self.padded_height // Z_STRIDE, self.padded_width // Z_STRIDE

    @property
    def is_coded(self) -> bool:
        """Whether the padded size is one this codec produces and its networks run on."""
        return is_coded_side(self.padded_height) and is_coded_side(self.padded_width)


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


def check_coded_size(geometry: Geometry, max_pixels: int, what: str) -> None:
    """Raise :class:`ImageTooLargeError` unless this geometry is within ``max_pixels``.

    ``what`` is "image" (the encoder's image guard) or "blob" (the decoder's): both call
    this, so whatever compresses under a limit decodes under it.
    """
    width, height = geometry.width, geometry.height
    subject = f"blob decodes to a {width}x{height} image" if what == "blob" else f"{what} is {width}x{height}"
    n = width * height
    if n > max_pixels:
        raise ImageTooLargeError(f"{subject} ({n:,} pixels), over the limit of {max_pixels:,} pixels")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ImageTooLargeError(f"{subject}: a .tcm image's sides are at most {MAX_SIDE} pixels")
    padded, limit = geometry.padded_width * geometry.padded_height, padded_pixel_limit(max_pixels)
    if padded > limit:
        raise ImageTooLargeError(
            f"{subject}, which the model pads to {geometry.padded_width}x{geometry.padded_height} "
            f"({padded:,} pixels), over the {limit:,} allowed with a limit of {max_pixels:,} pixels "
            "(a strip this thin is mostly padding: split it into shorter pieces)"
        )


def check_image_size(height: int, width: int, max_pixels: int) -> None:
    """The encoder's check: the image and the padded tensor the model will see."""
    check_coded_size(Geometry.for_image(height, width), max_pixels, "image")
