"""Bounded scratch memory for the inference copies of the networks: banded convolutions and
window attention in groups of windows.

Convolutions. PyTorch runs float64 convolutions on the CPU (the portable entropy path,
:mod:`tcm_serve.codec.portable`) by unfolding the input into a matrix of ``C_in * k * k``
rows and one column per output pixel (im2col), then one matrix product. For the slice
networks' first convolution that matrix is 20-40 KiB per latent position: 4-8 GiB for a
48-megapixel photo, more than everything else the codec holds. Computing the output a band
of rows at a time, each band from its input rows plus the kernel's reach above and below,
gives the same sums (each output value is the same dot product of the same numbers) with a
matrix the size of one band.

Window attention. Its similarity and softmax buffers hold ``heads x 64`` values per position
each (8 KiB per latent position for the official models in float64); windows are independent,
so computing them a group at a time (``WMSA.max_windows``) gives the same result.

The float64 inference copy of the entropy networks (the portable path) gets both
(:func:`bound_scratch`); the float32 transforms get grouped attention only
(:func:`group_attention`); the float32 entropy networks, whose last bits exact (version 1)
blobs depend on, and training keep the plain modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import WMSA, SwinLayer

M = TypeVar("M", bound=nn.Module)

#: Largest scratch buffer (an unfolded band, a group's similarities) one step may need, bytes.
DEFAULT_SCRATCH_BYTES = 64 * 2**20


class BandedConv2d(nn.Module):
    """A stride-1, zero-padded ``nn.Conv2d`` run over bands of output rows whose unfolded
    input stays under ``max_bytes``. Shares the wrapped convolution's parameters."""

    def __init__(self, conv: nn.Conv2d, max_bytes: int = DEFAULT_SCRATCH_BYTES) -> None:
        super().__init__()
        if not can_band(conv):
            raise ValueError(f"cannot band {conv}: only stride 1, dilation 1, groups 1, zero 'same' padding")
        self.conv = conv
        self.max_bytes = max_bytes

    def band_rows(self, x: Tensor) -> int:
        """Output rows per band for input ``x``."""
        kh, kw = self.conv.kernel_size
        row_bytes = self.conv.in_channels * kh * kw * x.shape[-1] * x.element_size() * x.shape[0]
        return max(1, self.max_bytes // max(row_bytes, 1))

    def forward(self, x: Tensor) -> Tensor:
        height = x.shape[-2]
        rows = self.band_rows(x)
        if rows >= height:
            return self.conv(x)
        kh, kw = self.conv.kernel_size
        ph, pw = (kh - 1) // 2, (kw - 1) // 2  # the conv's own padding (can_band)
        weight, bias = self.conv.weight, self.conv.bias
        out = x.new_empty((x.shape[0], self.conv.out_channels, height, x.shape[-1]))
        for top in range(0, height, rows):
            bottom = min(top + rows, height)
            lo, hi = max(top - ph, 0), min(bottom + ph, height)
            band = F.pad(x[:, :, lo:hi], (0, 0, lo - (top - ph), (bottom + ph) - hi))
            out[:, :, top:bottom] = F.conv2d(band, weight, bias, padding=(0, pw))
        return out


def can_band(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` keeps the spatial size with zero padding (what banding assumes)."""
    kh, kw = conv.kernel_size
    return (
        conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and conv.padding == ((kh - 1) // 2, (kw - 1) // 2)
        and kh % 2 == 1
        and kw % 2 == 1
    )


def bound_scratch(module: M, max_bytes: int = DEFAULT_SCRATCH_BYTES) -> M:
    """Band ``module``'s convolutions and group its window attention so that no scratch buffer
    exceeds ``max_bytes`` (the float64 entropy copy). Returns ``module``, changed in place."""
    band_convolutions(module, max_bytes)
    return group_attention(module, max_bytes)


def group_attention(module: M, max_bytes: int = DEFAULT_SCRATCH_BYTES) -> M:
    """Make every window attention of ``module`` compute at most as many windows at a time as
    keep its similarity buffer under ``max_bytes`` (per image of a batch). The same result
    (each window's products and softmax are computed alone either way; bit for bit on this
    CPU in float32 and float64, tests/test_tiling.py), so it is also applied to the float32
    transforms ``g_a`` and ``g_s``, whose attention buffers are the largest part of a tile's
    memory (16 heads x 64 values per position at half resolution for the official models);
    never to the float32 entropy networks, whose last bits exact (version 1) blobs depend on.
    Inference only; training and ONNX export compute all windows at once. Returns ``module``,
    changed in place."""
    for m in module.modules():
        if isinstance(m, WMSA):
            itemsize = m.relative_position_params.element_size()
            m.max_windows = max(1, max_bytes // (m.n_heads * m.window_size**4 * itemsize))
    return module


def band_convolutions(module: M, max_bytes: int = DEFAULT_SCRATCH_BYTES) -> M:
    """Replace, in place, every bandable convolution wider than 1x1 in ``module`` by a
    :class:`BandedConv2d` (1x1 convolutions need no unfolding). Returns ``module``; banding it
    again changes nothing."""
    for name, child in list(module.named_children()):
        if isinstance(child, BandedConv2d):
            continue
        if isinstance(child, nn.Conv2d) and child.kernel_size != (1, 1) and can_band(child):
            setattr(module, name, BandedConv2d(child, max_bytes))
        else:
            band_convolutions(child, max_bytes)
    return module


@contextmanager
def banded_transformers(module: nn.Module, max_bytes: int = DEFAULT_SCRATCH_BYTES) -> Iterator[None]:
    """Inside the block, every transformer layer of ``module`` runs in bands of rows whose
    MLP hidden layer stays under ``max_bytes`` (:attr:`SwinLayer.band_bytes`). Unlike grouped
    attention this may change the last bits (matrix products over fewer rows), so it is for
    the tiled transforms, which differ from whole ones near the tiles' borders anyway, never
    for an image coded whole. Not reentrant across threads: the engine's device work is
    serialised."""
    layers = [m for m in module.modules() if isinstance(m, SwinLayer)]
    for m in layers:
        m.band_bytes = max_bytes
    try:
        yield
    finally:
        for m in layers:
            m.band_bytes = 0
