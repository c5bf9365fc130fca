"""Bjontegaard delta rate and delta PSNR with piecewise cubic (PCHIP) interpolation.

BD-rate answers "how many more (or fewer) bits does the test codec spend than the anchor
at the same quality, on average over the quality range both reach?" (Bjontegaard,
VCEG-M33, 2001; the PCHIP variant replaced the original cubic polynomial fit in later
VCEG/JVET practice because a polynomial through noisy points can oscillate):

1. each curve becomes ``log10(rate)`` as a function of PSNR, interpolated through its
   points by a shape-preserving piecewise cubic Hermite interpolant (PCHIP,
   Fritsch-Carlson slopes with the three-point end conditions, as in ``scipy``'s
   ``PchipInterpolator`` and MATLAB's ``pchip``);
2. both interpolants are integrated over the PSNR interval the two curves share;
3. the difference of the means, ``d``, gives ``BD-rate = (10**d - 1) * 100 %``.

Negative is better for the test codec: -20 % means 20 % fewer bits for the same PSNR.
BD-PSNR swaps the axes (PSNR as a function of log-rate, mean difference in dB).

Each cubic piece is integrated exactly with Simpson's rule on the piece (exact for
polynomials up to degree 3), so no sampling error enters. numpy only: scipy would be a
large dependency for one interpolant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class BDError(ValueError):
    """The curves do not allow a BD computation (too few points, no overlap, bad rates)."""


def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivatives at the knots of the monotone (Fritsch-Carlson) cubic Hermite interpolant.

    ``x`` strictly increasing, at least two points. Interior slopes are the weighted
    harmonic mean of the neighbouring secants (0 at a local extremum, so no overshoot);
    the end slopes use the one-sided three-point formula, clipped to keep the shape.
    """
    h = np.diff(x)
    delta = np.diff(y) / h
    n = x.size
    d = np.zeros(n)
    if n == 2:
        d[:] = delta[0]
        return d
    for k in range(1, n - 1):
        a, b = delta[k - 1], delta[k]
        if a * b > 0:
            w1 = 2.0 * h[k] + h[k - 1]
            w2 = h[k] + 2.0 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / a + w2 / b)
    d[0] = _end_slope(h[0], h[1], delta[0], delta[1])
    d[-1] = _end_slope(h[-1], h[-2], delta[-1], delta[-2])
    return d


def _end_slope(h0: float, h1: float, m0: float, m1: float) -> float:
    d = ((2.0 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > abs(3.0 * m0):
        return 3.0 * m0
    return float(d)


def pchip_eval(x: np.ndarray, y: np.ndarray, d: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Value of the cubic Hermite interpolant with knot slopes ``d`` at ``t`` (inside [x0, xn])."""
    t = np.asarray(t, dtype=np.float64)
    k = np.clip(np.searchsorted(x, t, side="right") - 1, 0, x.size - 2)
    h = x[k + 1] - x[k]
    s = (t - x[k]) / h
    h00 = (1 + 2 * s) * (1 - s) ** 2
    h10 = s * (1 - s) ** 2
    h01 = s * s * (3 - 2 * s)
    h11 = s * s * (s - 1)
    return h00 * y[k] + h10 * h * d[k] + h01 * y[k + 1] + h11 * h * d[k + 1]


def pchip_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Exact integral over [lo, hi] (within the knots) of the PCHIP through (x, y)."""
    d = pchip_slopes(x, y)
    cuts = np.concatenate([[lo], x[(x > lo) & (x < hi)], [hi]])
    a, b = cuts[:-1], cuts[1:]
    fa, fm, fb = (pchip_eval(x, y, d, t) for t in (a, (a + b) / 2.0, b))
    return float(np.sum((b - a) / 6.0 * (fa + 4.0 * fm + fb)))


@dataclass(frozen=True)
class BDResult:
    """One comparison: BD-rate (%) and BD-PSNR (dB) of ``test`` against ``anchor``."""

    bd_rate: float  # percent; negative: the test codec needs fewer bits
    bd_psnr: float  # dB; positive: the test codec is better at equal rate
    psnr_range: tuple[float, float]  # PSNR interval the rate integral covers


def _curve(rate: Sequence[float], psnr: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite points with positive rate, sorted by PSNR; among equal PSNRs the lowest rate."""
    r = np.asarray(rate, dtype=np.float64)
    p = np.asarray(psnr, dtype=np.float64)
    if r.shape != p.shape or r.ndim != 1:
        raise BDError(f"{what}: rate and PSNR lists differ in length")
    keep = np.isfinite(r) & np.isfinite(p) & (r > 0)
    r, p = r[keep], p[keep]
    order = np.lexsort((r, p))
    r, p = r[order], p[order]
    first = np.concatenate([[True], np.diff(p) > 0])
    r, p = r[first], p[first]
    if r.size < 2:
        raise BDError(f"{what}: needs at least two points with distinct PSNR and positive rate")
    return np.log10(r), p


def bd_rate(
    anchor_rate: Sequence[float],
    anchor_psnr: Sequence[float],
    test_rate: Sequence[float],
    test_psnr: Sequence[float],
    psnr_range: tuple[float, float] | None = None,
) -> BDResult:
    """BD-rate and BD-PSNR of ``test`` against ``anchor`` (rates in any common unit, e.g. bpp).

    ``psnr_range`` narrows the integration interval (the overlap of the curves is the
    default and the widest allowed). Raises :class:`BDError` when the curves share no
    PSNR (or rate) interval.
    """
    la, pa = _curve(anchor_rate, anchor_psnr, "anchor")
    lt, pt = _curve(test_rate, test_psnr, "test")
    lo, hi = max(pa[0], pt[0]), min(pa[-1], pt[-1])
    if psnr_range is not None:
        lo, hi = max(lo, psnr_range[0]), min(hi, psnr_range[1])
    if not hi > lo:
        raise BDError(
            f"the curves share no PSNR interval (anchor {pa[0]:.2f}-{pa[-1]:.2f} dB, test {pt[0]:.2f}-{pt[-1]:.2f} dB"
            + (f", requested {psnr_range[0]:g}-{psnr_range[1]:g} dB)" if psnr_range else ")")
        )
    diff = (pchip_integral(pt, lt, lo, hi) - pchip_integral(pa, la, lo, hi)) / (hi - lo)
    return BDResult(float((10.0**diff - 1.0) * 100.0), _bd_psnr(la, pa, lt, pt), (float(lo), float(hi)))


def _bd_psnr(la: np.ndarray, pa: np.ndarray, lt: np.ndarray, pt: np.ndarray) -> float:
    """Mean PSNR gain over the shared log-rate interval (NaN when there is none)."""

    def by_rate(lr: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(lr, kind="stable")
        lr, p = lr[order], p[order]
        first = np.concatenate([[True], np.diff(lr) > 0])
        return lr[first], p[first]

    ra, qa = by_rate(la, pa)
    rt, qt = by_rate(lt, pt)
    lo, hi = max(ra[0], rt[0]), min(ra[-1], rt[-1])
    if ra.size < 2 or rt.size < 2 or not hi > lo:
        return float("nan")
    return float((pchip_integral(rt, qt, lo, hi) - pchip_integral(ra, qa, lo, hi)) / (hi - lo))
