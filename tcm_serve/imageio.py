"""Decoding untrusted image bytes into pixel arrays, and writing PNGs, with guards.

Everything the service reads from users goes through :func:`decode_image` (or
:func:`read_image` for a path). It returns a :class:`DecodedImage` holding a C-contiguous,
writable ``uint8`` array of shape ``(H, W, 1)`` (grayscale, mode ``"L"``) or ``(H, W, 3)``
(mode ``"RGB"``), or raises one of

* :class:`~tcm_serve.errors.UnsupportedImageFormatError` -- the bytes are recognisably some
  other image/document format (GIF, ICO, PDF, HEIF, ...): not on :data:`ALLOWED_FORMATS`;
* :class:`~tcm_serve.errors.ImageTooLargeError` -- over ``max_bytes`` or ``max_pixels``;
* :class:`~tcm_serve.errors.ImageError` -- everything else: empty, unrecognised, corrupt or
  truncated data, an alpha channel / transparency without ``drop_alpha=True``, or a pixel
  type with no defined 8-bit mapping (float, 32-bit/signed integer).

No Pillow, OS or numpy exception escapes :func:`decode_image` / :func:`read_image`:
anything unexpected while decoding becomes an :class:`ImageError` (chained, for debugging).

Order of checks (cheap and safe first; no pixel data is decoded before the size is known)
1. empty input, then ``max_bytes``;
2. container format sniffed from the magic bytes; only the matching Pillow plugin is then
   allowed to parse the header (``Image.open(..., formats=[fmt])``), so no other plugin
   ever sees untrusted bytes;
3. PNG only: the IHDR chunk is parsed by hand, so an image claiming e.g. 100000x100000 is
   refused before Pillow is involved, and the chunk structure is walked: every chunk must
   lie inside the data, critical chunks (IHDR, PLTE, IDAT, IEND) must have correct CRCs and
   IEND must be present. (Pillow happily decodes a PNG cut anywhere after its last IDAT
   chunk; we call that truncated.) Other formats are truncated when pixel data is missing,
   as Pillow reports it; e.g. a BMP missing only its last row's padding bytes decodes.
4. ``width * height`` from the header against ``max_pixels`` -- EXIF orientations 5-8 swap
   width and height, which leaves the product unchanged, so this check is exact;
5. pixels decoded (first frame only), transparency policy, mode conversion, orientation.

Decisions worth knowing
* Pillow's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, a process-wide global)
  is left untouched. Its ``DecompressionBombError`` -- and its ``DecompressionBombWarning``
  where warnings are turned into errors -- are reported as ``ImageTooLargeError``. So the
  effective limit is ``min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS)`` (about 179 MP with
  Pillow's default); a caller who passes a larger ``max_pixels`` must raise Pillow's global
  too. Between ``Image.MAX_IMAGE_PIXELS`` and twice that, Pillow only emits a warning.
* Truncation relies on ``ImageFile.LOAD_TRUNCATED_IMAGES`` being False (Pillow's default),
  which this module never changes. If other code in the process sets it True, truncated
  JPEG/BMP/TIFF/WebP files may decode partially; PNG is still checked structurally (3.).
* Transparency: an alpha channel (RGBA, LA, PA, RGBa, La), palette transparency, and PNG
  ``tRNS`` colour-key transparency on L/RGB images all count as alpha and are refused unless
  ``drop_alpha=True``, which discards it: the stored colour values are kept (premultiplied
  RGBa/La are un-premultiplied first), nothing is composited onto a background.
* Modes: ``1``/``L`` -> grayscale; ``P`` -> RGB (even if the palette is gray); ``RGBX``,
  ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` -> RGB with Pillow's built-in conversions. There is no
  colour management: embedded ICC profiles are ignored (pixel values are used as stored).
* 16-bit grayscale (``I;16*``, or ``I`` from a 16-bit PNG / unsigned 16-bit TIFF) is scaled,
  not clipped: ``round(v * 255 / 65535)`` (exact integer arithmetic; v/257 never ties).
  Pillow does not expose 16-bit RGB(A) samples: it reduces them to 8 bits itself by keeping
  the high byte (``v >> 8``), which can differ from the rounded value by one level.
* ``F`` (32-bit float) has no range convention (0..1? 0..255? HDR?), so there is no
  principled 8-bit scaling: refused. Likewise 32-bit and signed integer images.
* Multi-frame files (animated WebP, multi-page TIFF, JPEG MPO): the first frame/page only.
  An MPO (multi-picture JPEG, as written by many cameras) is reported as ``"JPEG"``.
* EXIF orientation (JPEG, PNG eXIf, WebP, TIFF tag) is applied, with the same 8-case table
  as ``ImageOps.exif_transpose``. Unreadable EXIF metadata is ignored (orientation 1):
  the pixels are fine, only metadata is damaged.
* The returned array is writable (so ``torch.from_numpy`` does not warn), and the
  dataclass compares by identity (``eq=False``): arrays have no single truth value.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from tcm_serve.codec.geometry import check_image_size
from tcm_serve.errors import ImageError, ImageTooLargeError, UnsupportedImageFormatError
from tcm_serve.files import atomic_write

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "DecodedImage",
    "IMAGE_SUFFIXES",
    "decode_image",
    "read_image",
    "encode_png",
    "write_png",
]

ALLOWED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "BMP", "TIFF"})
#: File-name suffixes of those formats: what a folder walk (CLI inputs, datasets) picks up.
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})

#: 40 megapixels. Covers 8K UHD (7680x4320 = 33.2 MP) and most camera sensors, keeps one
#: decoded image at <= 120 MB as uint8 RGB (480 MB as the float32 tensor the model sees,
#: before the much larger activations), and sits below Pillow's own decompression-bomb
#: warning threshold (~89.5 MP), so with the default Pillow never has to intervene.
DEFAULT_MAX_PIXELS = 40_000_000

_ALLOWED_LIST = ", ".join(sorted(ALLOWED_FORMATS))
_ALLOWED_OR = ", ".join(sorted(ALLOWED_FORMATS)[:-1]) + " or " + sorted(ALLOWED_FORMATS)[-1]

# ------------------------------------------------------------------------------------
# Result type


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """Decoded pixels: ``uint8``, shape ``(H, W, C)``, ``C == 1`` (mode ``"L"``) or 3
    (mode ``"RGB"``), C-contiguous. ``source_format`` is the container, e.g. ``"PNG"``."""

    pixels: np.ndarray
    mode: str
    source_format: str

    def __post_init__(self) -> None:
        p = self.pixels
        if not isinstance(p, np.ndarray) or p.dtype != np.uint8 or p.ndim != 3:
            raise ValueError("DecodedImage.pixels must be a uint8 array of shape (H, W, C)")
        expected = {"L": 1, "RGB": 3}.get(self.mode)
        if expected is None or p.shape[2] != expected:
            raise ValueError(f"mode {self.mode!r} does not match pixels of shape {p.shape}")
        if p.shape[0] < 1 or p.shape[1] < 1 or not p.flags.c_contiguous:
            raise ValueError("DecodedImage.pixels must be non-empty and C-contiguous")

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])


# ------------------------------------------------------------------------------------
# Format sniffing

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_PREFIXES = (
    b"II*\x00",
    b"MM\x00*",  # classic TIFF
    b"II+\x00",
    b"MM\x00+",  # BigTIFF
    b"MM*\x00",
    b"II\x00*",  # odd byte orders Pillow also accepts
)


def _is_webp(d: bytes) -> bool:
    return d[:4] == b"RIFF" and d[8:12] == b"WEBP"


_ALLOWED_SIGNATURES: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("PNG", lambda d: d.startswith(_PNG_SIGNATURE)),
    ("JPEG", lambda d: d.startswith(b"\xff\xd8\xff")),
    ("WEBP", _is_webp),
    ("BMP", lambda d: d.startswith(b"BM")),
    ("TIFF", lambda d: d[:4] in _TIFF_PREFIXES),
)

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}


def _other_format(d: bytes) -> str | None:
    """Name of a recognisable format that is *not* allowed, or None."""
    if d[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if d[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    if d[:4] == b"\x00\x00\x02\x00":
        return "CUR"
    if d[:5] == b"%PDF-":
        return "PDF"
    if d[:4] == b"%!PS" or d[:4] == b"\xc5\xd0\xd3\xc6":
        return "PostScript/EPS"
    if d[:4] == b"8BPS":
        return "PSD"
    if d[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or d[:4] == b"\xff\x4f\xff\x51":
        return "JPEG 2000"
    if d[:2] == b"\xff\x0a" or d[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "JPEG XL"
    if d[4:8] == b"ftyp":
        brand = d[8:12]
        if brand in _AVIF_BRANDS:
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIF"
    if d[:4] == b"qoif":
        return "QOI"
    if d[:8] in (b"\x8aMNG\r\n\x1a\n", b"\x8bJNG\r\n\x1a\n"):
        return "MNG/JNG"
    if len(d) >= 3 and d[:1] == b"P" and d[1:2] in b"1234567" and d[2:3] in b" \t\r\n":
        return "PNM"
    if d[:4] == b"icns":
        return "ICNS"
    if d[:4] == b"DDS ":
        return "DDS"
    if d[:10] == b"#?RADIANCE" or d[:6] == b"#?RGBE":
        return "Radiance HDR"
    if d[:4] == b"v/1\x01":
        return "OpenEXR"
    if d[:9] == b"SIMPLE  =":
        return "FITS"
    if d[:8] == b"farbfeld":
        return "farbfeld"
    if d[:4] == b"RIFF":
        return "RIFF (not WebP)"
    head = d[:256].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) or b"<svg" in head:
        return "SVG/XML"
    return None


def _sniff_format(data: bytes) -> str:
    for name, matches in _ALLOWED_SIGNATURES:
        if matches(data):
            return name
    other = _other_format(data)
    if other is not None:
        raise UnsupportedImageFormatError(f"unsupported image format {other}; supported formats: {_ALLOWED_LIST}")
    raise ImageError(f"unrecognized image data (not a {_ALLOWED_OR} file)")


# ------------------------------------------------------------------------------------
# Limits


def _check_pixel_limit(width: int, height: int, max_pixels: int) -> None:
    """Width x height against ``max_pixels``, plus what the codec needs of the shape (sides
    of at most 65535, a padded area bounded with the limit: :mod:`tcm_serve.codec.geometry`)."""
    if width < 1 or height < 1:
        raise ImageError(f"image has an invalid size {width}x{height}")
    check_image_size(height, width, max_pixels)


# ------------------------------------------------------------------------------------
# PNG structure (before Pillow sees the data)

_PNG_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}


def _check_png(data: bytes, max_pixels: int) -> None:
    n = len(data)
    view = memoryview(data)
    if n < 8 + 8 + 13 + 4:
        raise ImageError("truncated PNG: the IHDR header is incomplete")
    length, ctype = struct.unpack(">I4s", data[8:16])
    if ctype != b"IHDR" or length != 13:
        raise ImageError("malformed PNG: the first chunk is not a valid IHDR header")
    (crc,) = struct.unpack(">I", data[29:33])
    if zlib.crc32(view[12:29]) != crc:
        raise ImageError("corrupt PNG: bad checksum in the IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    _check_pixel_limit(width, height, max_pixels)

    pos = 8
    while True:
        if pos + 12 > n:
            raise ImageError("truncated PNG: the data ends before the IEND chunk")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if length > 0x7FFFFFFF or not (ctype.isascii() and ctype.isalpha()):
            raise ImageError(f"malformed PNG: invalid chunk header at byte {pos}")
        name = ctype.decode("ascii")
        end = pos + 8 + length
        if end + 4 > n:
            raise ImageError(f"truncated PNG: the data ends inside the {name} chunk")
        if ctype in _PNG_CRITICAL:
            (crc,) = struct.unpack(">I", data[end : end + 4])
            if zlib.crc32(view[pos + 4 : end]) != crc:
                raise ImageError(f"corrupt PNG: bad checksum in the {name} chunk at byte {pos}")
        if ctype == b"IEND":
            return
        pos = end + 4


# ------------------------------------------------------------------------------------
# Decoding

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_TO_RGB_MODES = {"RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_I16_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}

# EXIF orientation -> numpy operation on an (H, W, C) array; matches ImageOps.exif_transpose
# (2: FLIP_LEFT_RIGHT, 3: ROTATE_180, 4: FLIP_TOP_BOTTOM, 5: TRANSPOSE, 6: ROTATE_270,
# 7: TRANSVERSE, 8: ROTATE_90).
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}

_ADDRESS_RE = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "invalid or truncated header"
    text = _ADDRESS_RE.sub("", str(exc))
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _transparency_kind(img: Image.Image) -> str | None:
    """Describe the image's transparency, or None if it has none."""
    if img.mode in _ALPHA_MODES:
        return f"an alpha channel ({img.mode})"
    if "transparency" in img.info:
        return "palette transparency" if img.mode == "P" else "a transparent colour key (tRNS)"
    if img.mode == "P":
        palette = getattr(img, "palette", None)
        if palette is not None and str(getattr(palette, "mode", "")).endswith("A"):
            return "palette transparency"
    return None


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - damaged metadata: ignore it, the pixels are fine
        return 1
    return value if isinstance(value, int) and value in _ORIENT else 1


def _sixteen_bit_gray(img: Image.Image, fmt: str) -> np.ndarray:
    """uint8 (H, W) from 16-bit grayscale, scaled round(v * 255 / 65535)."""
    if img.mode == "I":
        # "I" is 32-bit signed in Pillow; accept it only where the file says 16-bit unsigned.
        bits, signed = 32, True
        if fmt == "PNG":  # PNG samples are at most 16-bit, unsigned
            bits, signed = 16, False
        elif fmt == "TIFF":
            tags = getattr(img, "tag_v2", {})
            bps = tags.get(258, 32)
            bits = int(bps[0] if isinstance(bps, tuple) else bps)
            sf = tags.get(339, 1)
            signed = int(sf[0] if isinstance(sf, tuple) else sf) != 1
        if bits != 16 or signed:
            kind = "signed" if signed else "unsigned"
            raise ImageError(
                f"image has {bits}-bit {kind} integer samples (mode I), which are not "
                "supported; convert it to 8- or 16-bit unsigned first"
            )
    a = np.asarray(img)
    if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
        raise ImageError("16-bit image has sample values outside 0..65535")
    a = a.astype(np.uint32)
    return ((a * 2 + 257) // 514).astype(np.uint8)  # == round(v / 257), never a tie


def _to_array(img: Image.Image, fmt: str, drop_alpha: bool) -> tuple[np.ndarray, str]:
    """Apply the transparency policy and convert to (uint8 (H, W[, 3]) array, mode)."""
    kind = _transparency_kind(img)
    if kind is not None and not drop_alpha:
        raise ImageError(f"image has {kind}; pass drop_alpha=True (CLI: --drop-alpha) to discard it")
    # Colour-key / palette transparency is metadata: forget it (drop_alpha=True, or there is
    # none) so that Pillow's conversions neither use nor warn about it.
    img.info.pop("transparency", None)
    mode = img.mode
    if mode in ("1", "L"):
        return np.asarray(img.convert("L") if mode == "1" else img), "L"
    if mode in ("LA", "La"):
        la = img.convert("LA") if mode == "La" else img  # un-premultiply first
        return np.asarray(la.getchannel("L")), "L"
    if mode == "RGB":
        return np.asarray(img), "RGB"
    if mode in ("RGBA", "RGBa"):
        return np.asarray(img.convert("RGB")), "RGB"  # RGBa -> RGB un-premultiplies
    if mode == "PA":
        return np.asarray(img.convert("RGBA").convert("RGB")), "RGB"
    if mode == "P":  # a palette's own alpha (RGBA palette) is ignored by this conversion
        return np.asarray(img.convert("RGB")), "RGB"
    if mode in _TO_RGB_MODES:
        return np.asarray(img.convert("RGB")), "RGB"
    if mode in _I16_MODES or mode == "I":
        return _sixteen_bit_gray(img, fmt), "L"
    if mode == "F":
        raise ImageError(
            "image has 32-bit floating-point samples (mode F), which have no defined "
            "8-bit scaling; convert it to an 8-bit image first"
        )
    raise ImageError(f"unsupported pixel mode {mode} in {fmt} image")


def _decode(data: bytes, fmt: str, max_pixels: int, drop_alpha: bool) -> DecodedImage:
    if fmt not in Image.OPEN:
        Image.init()
        if fmt not in Image.OPEN:  # e.g. Pillow built without libwebp
            raise UnsupportedImageFormatError(
                f"{fmt} decoding is not available in this installation (Pillow built without it)"
            )
    with Image.open(io.BytesIO(data), formats=[fmt]) as img:
        actual = "JPEG" if img.format == "MPO" else img.format
        if actual != fmt:  # cannot happen with formats=[fmt]; belt and braces
            raise UnsupportedImageFormatError(
                f"unsupported image format {img.format}; supported formats: {_ALLOWED_LIST}"
            )
        width, height = img.size
        _check_pixel_limit(width, height, max_pixels)
        img.load()  # the first frame / page only
        orientation = _orientation(img)
        array, mode = _to_array(img, fmt, drop_alpha)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[:2] != (height, width) or array.dtype != np.uint8:
        raise ImageError(f"decoded {fmt} pixels do not match the header size {width}x{height}")
    if orientation != 1:
        array = _ORIENT[orientation](array)
    array = np.require(array, dtype=np.uint8, requirements=["C", "W", "A"])
    return DecodedImage(pixels=array, mode=mode, source_format=fmt)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
    drop_alpha: bool = False,
) -> DecodedImage:
    """Decode untrusted image bytes (PNG, JPEG, WebP, BMP or TIFF) to 8-bit L or RGB.

    Raises ImageError (or its subclasses UnsupportedImageFormatError, ImageTooLargeError)
    for anything wrong with the data; ValueError/TypeError only for bad arguments.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"image data must be bytes, not {type(data).__name__}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise ValueError(f"max_bytes must be a positive integer or None, got {max_bytes!r}")
    data = bytes(data)
    if not data:
        raise ImageError("empty image data")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLargeError(f"image data is {len(data):,} bytes, over the limit of {max_bytes:,} bytes")
    fmt = "image"
    try:
        fmt = _sniff_format(data)
        if fmt == "PNG":
            _check_png(data, max_pixels)
        return _decode(data, fmt, max_pixels, drop_alpha)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{fmt} image exceeds Pillow's decompression-bomb limit: {_describe(exc)}") from exc
    except MemoryError:
        raise ImageTooLargeError(f"not enough memory to decode this {fmt} image") from None
    except Exception as exc:
        raise ImageError(f"cannot decode {fmt} image (corrupt or truncated data): {_describe(exc)}") from exc


def read_image(
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
    drop_alpha: bool = False,
) -> DecodedImage:
    """Read and decode an image file; errors name the path. With ``max_bytes``, at most
    ``max_bytes + 1`` bytes are ever read (works for pipes and devices too)."""
    name = os.fsdecode(os.fspath(path))
    try:
        with open(path, "rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"cannot read image file {name}: {exc.strerror or exc}") from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLargeError(f"{name}: image file is over the limit of {max_bytes:,} bytes")
    try:
        return decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes, drop_alpha=drop_alpha)
    except ImageError as exc:
        raise type(exc)(f"{name}: {exc}") from exc


# ------------------------------------------------------------------------------------
# Encoding


def _as_png_input(pixels: np.ndarray) -> tuple[np.ndarray, str]:
    if not isinstance(pixels, np.ndarray):
        raise ValueError(f"pixels must be a numpy array, not {type(pixels).__name__}")
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    shape = pixels.shape
    if pixels.ndim == 2:
        mode = "L"
    elif pixels.ndim == 3 and shape[2] == 1:
        mode, pixels = "L", pixels[:, :, 0]
    elif pixels.ndim == 3 and shape[2] == 3:
        mode = "RGB"
    else:
        raise ValueError(f"pixels must have shape (H, W), (H, W, 1) or (H, W, 3), got {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"pixels must be at least 1x1, got shape {shape}")
    return np.ascontiguousarray(pixels), mode


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 (H, W) / (H, W, 1) -> 8-bit grayscale PNG; (H, W, 3) -> 8-bit RGB PNG."""
    arr, mode = _as_png_input(pixels)
    img = Image.frombytes(mode, (arr.shape[1], arr.shape[0]), arr.tobytes())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """Atomically write ``pixels`` as a PNG: encode first, write a temp file in the target
    directory, fsync, then ``os.replace``. A reader sees the old file or the complete new
    one, never half a file; the temp file is removed on any failure. An existing file keeps
    its permission bits, a new one gets 0o666 minus the umask. If ``path`` is a symlink, the
    link itself is replaced. I/O failures raise ImageError naming the path (ValueError for
    bad pixels, before anything touches the disk)."""
    data = encode_png(pixels)
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise ImageError(f"cannot write PNG file {os.fsdecode(os.fspath(path))}: {exc.strerror or exc}") from exc
