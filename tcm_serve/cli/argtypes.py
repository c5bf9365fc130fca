"""argparse types and options shared by the ``tcm`` subcommands (one wording for one mistake).

Options whose default comes from a ``TCM_*`` variable default to ``None`` here and are
resolved through :func:`tcm_serve.config.load_codec_settings` when a command runs, so
that the environment is read in one place and a bad value is a one-line error.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..codec.container import BACKEND_KINDS, BITSTREAMS, DEFAULT_BACKEND, DEFAULT_BITSTREAM, quality_problem
from ..codec.effort import EFFORT_STEPS, MAX_EFFORT, MAX_EFFORT_PIXELS, effort_problem
from ..codec.geometry import DEFAULT_TILE, tile_problem

if TYPE_CHECKING:
    from ..store import ModelStore

STORE_HELP = "model store directory (default: $TCM_MODEL_STORE, else the bundled model_store/)"


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


def _checked_int(text: str, what: str, problem: Callable[[int], str | None]) -> int:
    """``text`` as an integer that ``problem`` finds nothing wrong with, else a usage error
    naming ``what``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
    reason = problem(value)
    if reason:
        raise argparse.ArgumentTypeError(reason)
    return value


def quality(text: str) -> int:
    """A quality level (``-q``): an integer in the format's range."""
    return _checked_int(text, "quality", quality_problem)


def tile_size(text: str) -> int:
    """A tile size (``--tile``): pixels, a multiple of 128 of at least 256, or 0 (off)."""
    return _checked_int(text, "tile", tile_problem)


def effort_level(text: str) -> int:
    """An encoder effort level (``--effort``): an integer from 0 to MAX_EFFORT."""
    return _checked_int(text, "effort", effort_problem)


def add_effort_option(p: argparse.ArgumentParser) -> None:
    """``--effort N``: encode time for size and quality, the decoder unchanged."""
    p.add_argument(
        "--effort",
        type=effort_level,
        default=0,
        help=f"encoder effort, 0 to {MAX_EFFORT}: optimise each image's latents for "
        f"{', '.join(map(str, EFFORT_STEPS[1:]))} steps (about a second each per Kodak image with the "
        "bundled models on 2 cores) for fewer bits at better quality; every decoder decodes the result, "
        f"images up to {MAX_EFFORT_PIXELS:,} padded pixels (default: 0)",
    )


def add_tile_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--tile PIXELS`` (default: the ``tile`` setting)."""
    p.add_argument(
        "--tile",
        type=tile_size,
        help=f"run {what} in tiles of this many pixels per side, so memory grows far slower with the "
        "image; a multiple of 128, at least 256; 0 codes every image whole; any blob decodes with any tile size "
        f"(default: $TCM_TILE, else {DEFAULT_TILE})",
    )


def add_store_option(p: argparse.ArgumentParser) -> None:
    """``--store DIR`` (default: the ``model_store`` setting, else the bundled store)."""
    p.add_argument("--store", help=STORE_HELP)


def add_backend_option(p: argparse.ArgumentParser) -> None:
    """``--backend torch|onnx`` (default: the ``backend`` setting)."""
    p.add_argument(
        "--backend",
        choices=BACKEND_KINDS,
        help="run the networks with PyTorch (exact reference arithmetic) or ONNX Runtime (faster; graphs are "
        "exported on first use, see tcm export-onnx); a blob decodes with the backend that encoded it "
        "(default: $TCM_BACKEND, else torch)",
    )


def add_bitstream_option(p: argparse.ArgumentParser) -> None:
    """``--bitstream portable|exact`` (default: the ``bitstream`` setting)."""
    p.add_argument(
        "--bitstream",
        choices=BITSTREAMS,
        help="portable: decodes on any machine, thread count and backend (format version 2); exact: the reference "
        "codec's strings byte for byte, decodable only where the entropy parameters are reproduced bit for bit "
        f"(format version 1, for conformance work) (default: $TCM_BITSTREAM, else {DEFAULT_BITSTREAM})",
    )


@dataclass(frozen=True)
class CodecChoice:
    """Where a local command finds its models and how it runs the codec: its options, else
    the ``TCM_*`` settings."""

    store: str | None
    backend: str
    bitstream: str
    onnx_dir: str | None
    tile: int = DEFAULT_TILE


#: The fields of :class:`tcm_serve.config.CodecSettings` (a test keeps the two equal). When
#: none of their ``TCM_*`` variables is set, which is the common case, the commands take the
#: defaults without importing pydantic: 0.3 s of every command's start-up otherwise.
CODEC_FIELDS = ("model_store", "backend", "bitstream", "onnx_dir", "tile")


def _codec_env_set() -> bool:
    """Whether the environment sets any codec setting (names are case-insensitive, as
    pydantic-settings reads them)."""
    names = {name.upper() for name in os.environ}
    return any(f"TCM_{field.upper()}" in names for field in CODEC_FIELDS)


def codec_settings() -> CodecChoice:
    """The codec settings the environment gives: ``TCM_*`` through
    :func:`tcm_serve.config.load_codec_settings` (validated, one-line ConfigError), or the
    defaults when none is set."""
    if not _codec_env_set():
        return CodecChoice(store=None, backend=DEFAULT_BACKEND, bitstream=DEFAULT_BITSTREAM, onnx_dir=None)
    from ..config import load_codec_settings

    env = load_codec_settings()
    return CodecChoice(
        store=env.model_store, backend=env.backend, bitstream=env.bitstream, onnx_dir=env.onnx_dir, tile=env.tile
    )


def codec_choice(args: argparse.Namespace) -> CodecChoice:
    """``--store`` / ``--backend`` / ``--bitstream`` / ``--tile`` where given, else the environment's."""
    env = codec_settings()
    return CodecChoice(
        store=getattr(args, "store", None) or env.store,
        backend=getattr(args, "backend", None) or env.backend,
        bitstream=getattr(args, "bitstream", None) or env.bitstream,
        onnx_dir=env.onnx_dir,
        tile=env.tile if getattr(args, "tile", None) is None else args.tile,
    )


def open_store(choice: CodecChoice) -> ModelStore:
    """The store a :func:`codec_choice` names (``--store``, else ``TCM_MODEL_STORE``), else
    the bundled one."""
    from ..store import ModelStore, resolve_store

    return ModelStore(resolve_store(choice.store))


def add_device_option(p: argparse.ArgumentParser, what: str = "") -> None:
    """``--device auto|cpu|cuda|cuda:N`` for the commands that run models themselves."""
    p.add_argument("--device", default="auto", help=f"{what}auto, cpu, cuda or cuda:N (default: auto)")
