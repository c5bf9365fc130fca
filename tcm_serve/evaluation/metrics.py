"""Distortion metrics on 8-bit images: PSNR and MS-SSIM (numpy only).

Both take ``uint8`` arrays of shape ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` (what
:mod:`tcm_serve.imageio` returns) and compare the *decoded 8-bit* image with the original,
as a user would see it, not the codec's internal float output.

PSNR is over all samples of all channels together (RGB PSNR, peak 255).

MS-SSIM follows Wang, Simoncelli and Bovik (2003) with the parameters every learned-
compression paper uses through ``pytorch_msssim`` (the implementation CompressAI's and
TCM's evaluation scripts call), so our numbers are comparable with published ones:

* Gaussian window 11 taps, sigma 1.5, applied separably without padding ("valid");
* K1 = 0.01, K2 = 0.03, data range 255;
* 5 scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333): contrast-structure
  terms at scales 1-4, the full SSIM at scale 5, each clipped at 0 before the power;
* between scales a 2x2 average pool; along a side of odd length the pool is padded with one
  zero in front that counts in the average (``avg_pool2d(padding=1)``'s behaviour, kept
  so odd sizes match the reference implementation too);
* computed per channel, then the channel mean.

Five scales need both sides of at least 161 pixels (the window must fit the smallest
scale); :func:`ms_ssim` refuses smaller images rather than invent a value.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: Weights of the five scales (Wang et al. 2003, Table/eq. 7 fit).
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03
#: Smallest side MS-SSIM accepts: the window must still fit after four halvings.
MS_SSIM_MIN_SIDE = (WINDOW_SIZE - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1


def _as_chw(a: np.ndarray) -> np.ndarray:
    """(H, W[, C]) uint8 -> (C, H, W) float64."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {a.shape}")
    return np.moveaxis(a.astype(np.float64), -1, 0)


def _check_pair(ref: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_chw(ref), _as_chw(test)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape} (C, H, W)")
    return x, y


def mse(ref: np.ndarray, test: np.ndarray) -> float:
    x, y = _check_pair(ref, test)
    return float(np.mean((x - y) ** 2))


def psnr(ref: np.ndarray, test: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB over all channels; ``inf`` for identical images."""
    err = mse(ref, test)
    return math.inf if err == 0 else 10.0 * math.log10(peak * peak / err)


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps centred on the middle tap."""
    t = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(t**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(a: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Separable correlation of the last two axes with ``win``, no padding.

    Each pass is a matrix product of the strided window view with the taps (a BLAS call,
    several times faster than shifted adds on a Kodak image)."""
    rows = sliding_window_view(a, win.size, axis=-2) @ win
    return sliding_window_view(rows, win.size, axis=-1) @ win


def _ssim_cs(x: np.ndarray, y: np.ndarray, win: np.ndarray, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean SSIM and mean contrast-structure term of (C, H, W) images."""
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    stats = _filter_valid(np.stack([x, y, x * x, y * y, x * y]), win)  # one pass for all five
    mu_x, mu_y, xx, yy, xy = stats
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov = xy - mu_x * mu_y
    cs_map = (2.0 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1) * cs_map
    return ssim_map.mean(axis=(-2, -1)), cs_map.mean(axis=(-2, -1))


def _halve(a: np.ndarray) -> np.ndarray:
    """2x2 average pool of (C, H, W); an odd side gets one leading zero first (see module doc)."""
    if a.shape[-2] % 2:
        a = np.concatenate([np.zeros_like(a[..., :1, :]), a], axis=-2)
    if a.shape[-1] % 2:
        a = np.concatenate([np.zeros_like(a[..., :, :1]), a], axis=-1)
    c, h, w = a.shape
    return a.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def ssim(ref: np.ndarray, test: np.ndarray, data_range: float = 255.0) -> float:
    """Single-scale SSIM (same window and constants), channel mean."""
    x, y = _check_pair(ref, test)
    if min(x.shape[-2:]) < WINDOW_SIZE:
        raise ValueError(f"SSIM needs both sides of at least {WINDOW_SIZE} pixels, got {x.shape[-1]}x{x.shape[-2]}")
    s, _ = _ssim_cs(x, y, gaussian_window(), data_range)
    return float(s.mean())


def ms_ssim(ref: np.ndarray, test: np.ndarray, data_range: float = 255.0) -> float:
    """Multi-scale SSIM in [0, 1] (1 for identical images), channel mean."""
    x, y = _check_pair(ref, test)
    if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
        raise ValueError(
            f"MS-SSIM needs both sides of at least {MS_SSIM_MIN_SIDE} pixels, got {x.shape[-1]}x{x.shape[-2]}"
        )
    win = gaussian_window()
    weights = np.asarray(MS_SSIM_WEIGHTS)
    terms = []
    for level in range(len(weights)):
        s, cs = _ssim_cs(x, y, win, data_range)
        if level < len(weights) - 1:
            terms.append(np.maximum(cs, 0.0))
            x, y = _halve(x), _halve(y)
        else:
            terms.append(np.maximum(s, 0.0))
    per_channel = np.prod(np.stack(terms) ** weights[:, None], axis=0)
    return float(per_channel.mean())
