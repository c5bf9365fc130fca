"""argparse value types shared by the ``tcm`` subcommands (one wording for one mistake)."""
from __future__ import annotations

import argparse
import math


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if v < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
    return v


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, sizes, steps)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (an interval where 0 switches the feature off)."""
    return _int_at_least(text, 0, "an integer >= 0")


def _finite(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return v


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, rates): NaN and inf are refused, not passed on."""
    v = _finite(text, "a positive number")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v:g}")
    return v


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (where 0 switches the feature off)."""
    v = _finite(text, "a number >= 0")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {v:g}")
    return v


def rd_lambda(text: str) -> float:
    """A rate-distortion lambda: finite, in (0, 10) (the official levels use 0.0018..0.05)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"lambda must be a number, got {text!r}") from None
    if not 0 < v < 10:  # also refuses nan (every comparison is false) and inf
        raise argparse.ArgumentTypeError(f"lambda must be in (0, 10), got {text}")
    return v
