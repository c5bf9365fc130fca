"""Pixel <-> tensor conversions, and zero padding by a :class:`~tcm_serve.codec.geometry.Geometry`'s pad.

Window attention needs every transformer stage to split into whole windows (8x8 at 1/2,
1/4, 1/8 and 1/16 of the image, 4x4 at 1/32), so the reference evaluation pads each side
up to a multiple of 128, split floor/rest between left/right and top/bottom, with zeros.
The reference crashes when a padded side is exactly 128 (SWAtten's small-input fallback
cannot split an 8-wide y), so we pad to at least 256: for every image the reference can
code (both sides > 128) the rule, and therefore the bitstream, is identical. The rule's
sizes live in :mod:`tcm_serve.codec.geometry` (no torch there); this module applies them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pixels_to_tensor", "to_unit", "padded_batch", "pad", "crop", "tensor_to_pixels"]


def pixels_to_tensor(pixels: np.ndarray) -> Tensor:
    """(H, W, 1|3) uint8 -> (3, H, W) float32 in [0, 1]; grayscale is replicated to RGB
    because the model is trained on colour images only."""
    _check_pixels(pixels)
    t = to_unit(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1))
    return t.expand(3, -1, -1).contiguous() if t.shape[0] == 1 else t


def to_unit(x: Tensor) -> Tensor:
    """uint8 values -> float32 in [0, 1] (``v / 255``): the networks' input."""
    return x.to(torch.float32).div_(255.0)


def padded_batch(images: list[np.ndarray], padding: list[tuple[int, int, int, int]]) -> Tensor:
    """Images of one padded size -> (B, 3, H, W) **uint8**, each zero-padded by its padding
    (grayscale replicated to RGB). :func:`to_unit` of it equals :func:`pixels_to_tensor` then
    :func:`pad`; the engine converts it window by window (codec/tiling.py), so a 48 MP photo
    is held as 144 MB of bytes instead of 576 MB of floats."""
    left, right, top, bottom = padding[0]
    h, w = images[0].shape[:2]
    x = torch.zeros((len(images), 3, h + top + bottom, w + left + right), dtype=torch.uint8)
    for b, (px, (left, _, top, _)) in enumerate(zip(images, padding)):
        _check_pixels(px)
        h, w = px.shape[:2]
        x[b, :, top : top + h, left : left + w] = torch.from_numpy(np.ascontiguousarray(px)).permute(2, 0, 1)
    return x


def _check_pixels(pixels: np.ndarray) -> None:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"expected (H, W, 1|3) uint8 pixels, got {pixels.shape} {pixels.dtype}")


def pad(x: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
    """Zero-pad a (..., H, W) tensor by (left, right, top, bottom)."""
    return F.pad(x, padding, mode="constant", value=0.0)


def crop(x: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
    """Cut (left, right, top, bottom) off a (..., H, W) tensor: the inverse of :func:`pad`."""
    left, right, top, bottom = padding
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


#: Rows converted at a time by :func:`tensor_to_pixels`, so that its float temporaries stay
#: small next to a large photo.
PIXEL_BAND_ROWS = 256


def tensor_to_pixels(x: Tensor, mode: str) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, C) uint8 with round-half-to-even, as the reference's
    ``decoded.png``. Grayscale takes the mean of the three decoded channels. Converted in
    bands of :data:`PIXEL_BAND_ROWS` rows (element-wise, so banding changes no value)."""
    if mode not in ("L", "RGB"):
        raise ValueError(f"unknown colour mode {mode!r}")
    h, w = x.shape[-2:]
    out = np.empty((h, w, 1 if mode == "L" else 3), np.uint8)
    for top in range(0, h, PIXEL_BAND_ROWS):
        # A copy (to() or clamp()): the in-place steps below never touch the caller's tensor.
        band = x[:, top : top + PIXEL_BAND_ROWS].detach().to("cpu", torch.float32).clamp(0, 1)
        if mode == "L":
            band = band.mean(dim=0, keepdim=True)
        out[top : top + band.shape[1]] = band.mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).numpy()
    return out
