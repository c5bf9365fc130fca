"""Distortion metrics on 8-bit images: PSNR (numpy) and MS-SSIM (``pytorch_msssim``).

Both take ``uint8`` arrays of shape ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` (what
:mod:`tcm_serve.imageio` returns) and compare the *decoded 8-bit* image with the original,
as a user would see it, not the codec's internal float output.

PSNR is over all samples of all channels together (RGB PSNR, peak 255).

MS-SSIM is not computed here: it is ``pytorch_msssim.ms_ssim`` (Wang, Simoncelli and Bovik
2003; 11-tap Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, five scales weighted
0.0448 ... 0.1333), the implementation CompressAI's and TCM's evaluation scripts call, run
the way they run it: float32 tensors holding the 0-255 pixel values, ``data_range=255``.
Using the field's package rather than our own copy of the formula keeps our numbers
comparable with published ones by construction, not by a test of the day.

Five scales need both sides of at least 161 pixels (the window must fit the smallest
scale); :func:`ms_ssim` refuses smaller images rather than invent a value.
"""

from __future__ import annotations

import math

import numpy as np
import pytorch_msssim
import torch

from ..codec.backends import torch_threads

#: Smallest side MS-SSIM accepts: the 11-tap window must still fit after four halvings
#: (pytorch_msssim asserts a side over (11 - 1) * 2**4 = 160).
MS_SSIM_MIN_SIDE = 161


def _as_hwc(a: np.ndarray) -> np.ndarray:
    """(H, W[, C]) -> (H, W, C), same dtype (no copy)."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {a.shape}")
    return a


def _check_pair(ref: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_hwc(ref), _as_hwc(test)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape} (H, W, C)")
    return x, y


def mse(ref: np.ndarray, test: np.ndarray) -> float:
    x, y = _check_pair(ref, test)
    return float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))


def psnr(ref: np.ndarray, test: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB over all channels; ``inf`` for identical images."""
    err = mse(ref, test)
    return math.inf if err == 0 else 10.0 * math.log10(peak * peak / err)


def _plane(a: np.ndarray, c: int) -> torch.Tensor:
    """Channel ``c`` of an (H, W, C) image as a (1, 1, H, W) float32 tensor of 0-255 values."""
    return torch.from_numpy(np.ascontiguousarray(a[:, :, c], dtype=np.float32))[None, None]


def ms_ssim(ref: np.ndarray, test: np.ndarray, data_range: float = 255.0) -> float:
    """Multi-scale SSIM in [0, 1] (1 for identical images), channel mean, by ``pytorch_msssim``.

    The package's value for an (N, C, H, W) batch is the mean over channels of per-channel
    MS-SSIMs (its filters are per channel, ``groups=C``), so handing it one channel at a
    time and averaging here gives the same number while the working set is one channel's
    float32 planes instead of all three: about a third of the peak memory on RGB.

    It runs on one torch thread: its small separable filters gain little from more, and
    on cores that are busy (a service's workers, a training run) a pool of OpenMP threads
    waiting on each other made it 30x slower (a Kodak image: 0.10 s on one thread, 3.2 s on
    two on a 2-core machine running another job). One thread also makes the value
    independent of the machine's core count.
    """
    x, y = _check_pair(ref, test)
    h, w = x.shape[:2]
    if min(h, w) < MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs both sides of at least {MS_SSIM_MIN_SIDE} pixels, got {w}x{h}")
    with torch.no_grad(), torch_threads(1):
        values = [
            float(pytorch_msssim.ms_ssim(_plane(x, c), _plane(y, c), data_range=data_range)) for c in range(x.shape[2])
        ]
    return float(np.mean(values))
