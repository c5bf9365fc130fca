"""What ``POST /compare`` answers: the ``.tcm`` result and the classic codecs at its size.

Everything a person needs to judge the codec by eye and by number, in one JSON document:
the blob (base64, for download), every image as a lossless PNG (base64; the decoded output
of each codec, so the browser shows exactly what each codec gives back, whatever formats it
can display itself), and per codec its size, bpp, compression ratio, PSNR and MS-SSIM
against the original. Runs on an image-I/O thread; the equal-size search checks the request
deadline between encodes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codec.pipeline import Compressed, Decompressed
from ..evaluation.equal_size import at_equal_size
from ..evaluation.metrics import MS_SSIM_MIN_SIDE, ms_ssim, psnr
from ..imageio import DecodedImage, encode_png

_NUMBER = {"type": "number"}
_MAYBE_NUMBER = {"type": ["number", "null"]}
_CODEC_FIELDS = {
    "bytes": {"type": "integer"},
    "bpp": _NUMBER,
    "ratio": _NUMBER,
    "psnr": _NUMBER,
    "ms_ssim": _MAYBE_NUMBER,
    "png_base64": {"type": "string"},
}
#: OpenAPI schema of the answer (docs/service.md describes the fields).
COMPARE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["quality", "effort", "width", "height", "mode", "original_png_base64", "tcm", "codecs", "unavailable"],
    "properties": {
        "quality": {"type": "integer"},
        "effort": {"type": "integer"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "mode": {"type": "string", "enum": ["L", "RGB"]},
        "original_png_base64": {"type": "string"},
        "tcm": {
            "type": "object",
            "required": [*_CODEC_FIELDS, "blob_base64", "format_version", "compress_seconds", "decompress_seconds"],
            "properties": {
                **_CODEC_FIELDS,
                "blob_base64": {"type": "string"},
                "format_version": {"type": "integer"},
                "compress_seconds": _NUMBER,
                "decompress_seconds": _NUMBER,
            },
        },
        "codecs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "label", "quality", "reachable", *_CODEC_FIELDS],
                "properties": {
                    "name": {"type": "string"},
                    "label": {"type": "string"},
                    "quality": _NUMBER,
                    "reachable": {"type": "boolean"},
                    **_CODEC_FIELDS,
                },
            },
        },
        "unavailable": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scores(original: np.ndarray, decoded: np.ndarray, size: int, check_time: Callable[[], None]) -> dict[str, Any]:
    """Size, bpp, ratio (raw 8-bit size / file size), PSNR and MS-SSIM (None for images too
    small for its five scales) of one decoded result."""
    check_time()
    decoded = decoded.reshape(original.shape)
    h, w = original.shape[:2]
    small = min(h, w) < MS_SSIM_MIN_SIDE
    return {
        "bytes": size,
        "bpp": 8.0 * size / (h * w),
        "ratio": original.size / size,
        "psnr": min(psnr(original, decoded), 999.0),  # identical images: a finite number for JSON
        "ms_ssim": None if small else ms_ssim(original, decoded),
        "png_base64": _b64(encode_png(decoded)),
    }


@dataclass(frozen=True)
class CodedResult:
    """What the service made of one image: the input, the blob, its decoding, and timings."""

    image: DecodedImage
    quality: int
    effort: int
    compressed: Compressed
    decoded: Decompressed
    compress_seconds: float
    decompress_seconds: float


def comparison_report(result: CodedResult, check_time: Callable[[], None]) -> dict[str, Any]:
    """The answer of ``POST /compare`` (schema: :data:`COMPARE_SCHEMA`); ``check_time``
    raises once the request's deadline has passed."""
    original = result.image.pixels
    budget = len(result.compressed.blob)
    classics, unavailable = at_equal_size(original, budget, check_time=check_time)
    return {
        "quality": result.quality,
        "effort": result.effort,
        "width": result.image.width,
        "height": result.image.height,
        "mode": result.image.mode,
        "original_png_base64": _b64(encode_png(original)),
        "tcm": {
            **_scores(original, result.decoded.pixels, budget, check_time),
            "blob_base64": _b64(result.compressed.blob),
            "format_version": result.compressed.header.version,
            "compress_seconds": result.compress_seconds,
            "decompress_seconds": result.decompress_seconds,
        },
        "codecs": [
            {
                "name": c.name,
                "label": c.label,
                "quality": c.quality,
                "reachable": c.reachable,
                **_scores(original, c.pixels, len(c.data), check_time),
            }
            for c in classics
        ],
        "unavailable": unavailable,
    }


def comparison_json(result: CodedResult, check_time: Callable[[], None]) -> bytes:
    """:func:`comparison_report` as JSON bytes, made on the calling (worker) thread: a large
    photo's answer is tens of MB, which must not be serialised on the event loop."""
    report = comparison_report(result, check_time)
    check_time()
    return json.dumps(report, separators=(",", ":")).encode()
