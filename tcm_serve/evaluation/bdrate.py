"""Bjontegaard delta rate and delta PSNR, computed by the ``bjontegaard`` package.

BD-rate answers "how many more (or fewer) bits does the test codec spend than the anchor
at the same quality, on average over the quality range both reach?" (Bjontegaard,
VCEG-M33, 2001): each curve becomes ``log10(rate)`` as a function of PSNR, both are
interpolated and integrated over the PSNR interval they share, and the difference of the
means, ``d``, gives ``BD-rate = (10**d - 1) * 100 %``. Negative is better for the test
codec: -20 % means 20 % fewer bits for the same PSNR. BD-PSNR swaps the axes (PSNR as a
function of log-rate, mean difference in dB).

The interpolation and the integrals are the ``bjontegaard`` package's (FAU's reference
implementation, on scipy's interpolants), so that our figures are the ones anyone gets
with the tool the field uses rather than those of a private re-implementation. Two of its
methods are offered:

* ``pchip`` (default): piecewise cubic Hermite, the interpolant of the JCT-VC/JVET common
  test conditions' spreadsheet, and what ``tcm eval`` has always reported;
* ``akima``: Akima's spline, which the package's authors found more accurate and stable.

What stays here is what the package leaves to its caller: cleaning a curve (finite points
with positive rate, sorted, one point per PSNR: scipy's interpolants need strictly
increasing abscissae), refusing what cannot be computed with a :class:`BDError` that says
why (the package warns and returns NaN), and ``psnr_range`` (the package integrates over
the whole overlap; a narrower interval integrates the package's own interpolants over it).

``bjontegaard`` imports matplotlib, so it is imported only when a BD value is computed, and
it comes with the ``eval`` extra (``pip install 'tcm-serve[eval]'``), not with the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

#: Interpolation methods ``tcm eval --bd-method`` offers (names as the package spells them).
BD_METHODS = ("pchip", "akima")
DEFAULT_BD_METHOD = "pchip"
INSTALL_HINT = "pip install 'tcm-serve[eval]'"


class BDError(ValueError):
    """The curves do not allow a BD computation (too few points, no overlap, bad rates)."""


class BDPackageMissing(ImportError):
    """The ``bjontegaard`` package is not installed."""


def package() -> ModuleType:
    """The ``bjontegaard`` module, imported on first use; :class:`BDPackageMissing` when absent."""
    try:
        import bjontegaard
    except ImportError:
        raise BDPackageMissing(
            f"BD-rates are computed with the bjontegaard package, which is not installed: {INSTALL_HINT}"
        ) from None
    return bjontegaard


@dataclass(frozen=True)
class BDResult:
    """One comparison: BD-rate (%) and BD-PSNR (dB) of ``test`` against ``anchor``."""

    bd_rate: float  # percent; negative: the test codec needs fewer bits
    bd_psnr: float  # dB; positive: the test codec is better at equal rate (NaN: no shared rates)
    psnr_range: tuple[float, float]  # PSNR interval the rate integral covers
    method: str = DEFAULT_BD_METHOD


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
    return r, p


def _by_rate(r: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same points sorted by rate, one per rate (BD-PSNR interpolates over log-rate)."""
    order = np.argsort(r, kind="stable")
    r, p = r[order], p[order]
    first = np.concatenate([[True], np.diff(r) > 0])
    return r[first], p[first]


def bd_rate(
    anchor_rate: Sequence[float],
    anchor_psnr: Sequence[float],
    test_rate: Sequence[float],
    test_psnr: Sequence[float],
    psnr_range: tuple[float, float] | None = None,
    method: str = DEFAULT_BD_METHOD,
) -> BDResult:
    """BD-rate and BD-PSNR of ``test`` against ``anchor`` (rates in any common unit, e.g. bpp).

    ``psnr_range`` narrows the integration interval (the overlap of the curves is the
    default and the widest allowed); ``method`` is one of :data:`BD_METHODS`. Raises
    :class:`BDError` when the curves share no PSNR interval or a curve has too few points,
    :class:`BDPackageMissing` without the ``bjontegaard`` package.
    """
    if method not in BD_METHODS:
        raise BDError(f"unknown BD interpolation method {method!r} (known: {', '.join(BD_METHODS)})")
    ra, pa = _curve(anchor_rate, anchor_psnr, "anchor")
    rt, pt = _curve(test_rate, test_psnr, "test")
    lo, hi = max(pa[0], pt[0]), min(pa[-1], pt[-1])
    if psnr_range is not None:
        lo, hi = max(lo, psnr_range[0]), min(hi, psnr_range[1])
    if not hi > lo:
        raise BDError(
            f"the curves share no PSNR interval (anchor {pa[0]:.2f}-{pa[-1]:.2f} dB, test {pt[0]:.2f}-{pt[-1]:.2f} dB"
            + (f", requested {psnr_range[0]:g}-{psnr_range[1]:g} dB)" if psnr_range else ")")
        )
    bd = package()
    # Curves sampled at different PSNRs and counts are the norm here (a codec's sweep is its
    # own), and overlap is checked above: no point-count rule, no overlap warning.
    options: dict[str, Any] = {"method": method, "require_matching_points": False, "min_overlap": 0}
    if psnr_range is None:
        rate = float(bd.bd_rate(ra, pa, rt, pt, **options))
    else:
        _, f_anchor, f_test = bd.bd_rate(ra, pa, rt, pt, interpolators=True, **options)
        d = (f_test.integrate(lo, hi) - f_anchor.integrate(lo, hi)) / (hi - lo)
        rate = float((10.0**d - 1.0) * 100.0)
    return BDResult(rate, _bd_psnr(bd, ra, pa, rt, pt, options), (float(lo), float(hi)), method)


def _bd_psnr(bd: ModuleType, ra: np.ndarray, pa: np.ndarray, rt: np.ndarray, pt: np.ndarray, options) -> float:
    """Mean PSNR gain over the shared log-rate interval (NaN when there is none)."""
    ra, pa = _by_rate(ra, pa)
    rt, pt = _by_rate(rt, pt)
    if ra.size < 2 or rt.size < 2 or not min(ra[-1], rt[-1]) > max(ra[0], rt[0]):
        return float("nan")
    return float(bd.bd_psnr(ra, pa, rt, pt, **options))
