"""The ``.tcm`` container: one compressed image as bytes (no torch, no numpy at import).

Two versions share one layout up to byte 52 (all integers little-endian; the normative
description is ``docs/format.md``). Version 2 (portable: the entropy parameters are
computed in float64 and close calls are sent as hints, :mod:`tcm_serve.codec.portable`) adds
``hints_len`` and a hints section; version 1 (exact: byte-identical to the reference codec,
decodable only where its entropy parameters are reproduced bit for bit) has neither::

    offset size type  field
         0    4 bytes magic            b"\\x89TCM"
         4    1 u8    version          1 or 2
         5    1 u8    flags            reserved, must be 0
         6    1 u8    quality          1..255
         7    1 u8    mode             1 = "L", 2 = "RGB"
         8    2 u16   width            1..65535
        10    2 u16   height           1..65535
        12    2 u16   zH               padded height / 64
        14    2 u16   zW               padded width / 64
        16    1 u8    pad_left
        17    1 u8    pad_right
        18    1 u8    pad_top
        19    1 u8    pad_bottom
        20    1 u8    backend          v1: 1..4, index+1 into BACKENDS;
                                       v2: 1, index+1 into PORTABLE_METHODS
        21    3 bytes reserved         must be zero
        24    8 bytes config_hash
        32    8 bytes weights_hash
        40    4 u32   symbols_crc32
        44    4 u32   z_len            length of z_string
        48    4 u32   y_len            length of y_string
        52    4 u32   hints_len        (v2 only) length of hints, >= 1
     52|56 z_len      z_string
         . y_len      y_string
         . hints_len  hints            (v2 only) see tcm_serve.codec.hints
         .    4 u32   crc32            zlib.crc32 of every preceding byte

:func:`unpack` raises only :class:`~tcm_serve.errors.FormatError` (or its subclass
:class:`~tcm_serve.errors.UnsupportedVersionError`) for bad input; :func:`pack` validates its
argument with :meth:`TcmFile.validate`, which raises :class:`ValueError` because an invalid
``TcmFile`` in memory is a programmer error, not bad input.

Unpack check order (see ``docs/format.md`` "Validation"):

1. magic (with hints for PNG/JPEG/... and text-mode or base64 mangling);
2. version (before anything else: another version may have another header size);
3. structure: header present, declared stream lengths agree *exactly* with the data length.
   Only integer arithmetic on the declared lengths happens here -- nothing is sliced or
   allocated from an unchecked length;
4. CRC32 trailer -- before the semantic checks, so random corruption is reported as
   "CRC32 mismatch" rather than as whichever field the flipped bit happened to land in;
5. semantics: flags/reserved bytes, mode and backend codes, ranges, padding / z_shape
   consistency, stream length alignment. These are what a buggy *writer* (with a valid CRC)
   can get wrong.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from tcm_serve.codec.geometry import MAX_SIDE, Z_STRIDE, Geometry, split_padding
from tcm_serve.errors import ConfigError, FormatError, UnsupportedVersionError

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "SUPPORTED_VERSIONS",
    "BACKENDS",
    "BACKEND_KINDS",
    "DEFAULT_BACKEND",
    "MIN_QUALITY",
    "MAX_QUALITY",
    "quality_problem",
    "PORTABLE_METHODS",
    "PORTABLE",
    "BITSTREAMS",
    "DEFAULT_BITSTREAM",
    "check_bitstream",
    "MODES",
    "HEADER_SIZE",
    "HEADER_SIZES",
    "TRAILER_SIZE",
    "MIN_FILE_SIZE",
    "MIN_STREAM_LEN",
    "TcmHeader",
    "TcmFile",
    "pack",
    "unpack",
    "header_fields",
]

MAGIC = b"\x89TCM"  # 4 bytes; a non-ASCII first byte, like PNG, catches text-mode mangling
#: The newest version this build writes (portable blobs); it reads every version in
#: SUPPORTED_VERSIONS.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)

#: Quality levels a header can name (a u8 field; 0 is invalid). Store levels, ``--quality``,
#: ``TCM_QUALITIES`` and ``?quality=`` all take this range.
MIN_QUALITY, MAX_QUALITY = 1, 255


def quality_problem(quality: int) -> str | None:
    """Why ``quality`` cannot be a quality level, or None: the one wording of the range rule."""
    if not MIN_QUALITY <= quality <= MAX_QUALITY:
        return f"quality must be in {MIN_QUALITY}..{MAX_QUALITY}, got {quality}"
    return None


#: What runs the networks (``--backend``, ``TCM_BACKEND``); the first is the default.
BACKEND_KINDS = ("torch", "onnx")
DEFAULT_BACKEND = BACKEND_KINDS[0]
#: Version 1 ("exact"): what computed the entropy parameters (a backend kind on a device),
#: which a decoder must reproduce bit for bit; stored as u8 code = index + 1 (0 is invalid).
#: The order is part of the format.
BACKENDS = ("torch-cpu", "torch-cuda", "onnx-cpu", "onnx-cuda")
#: Version 2 ("portable"): the method that makes the decoder's decisions platform-free;
#: stored in the same byte as BACKENDS, code = index + 1.
PORTABLE_METHODS = ("portable-f64",)
PORTABLE = PORTABLE_METHODS[0]
#: The entropy-parameter codes each version knows.
_CODES = {1: BACKENDS, 2: PORTABLE_METHODS}

#: What users choose (``--bitstream``, ``TCM_BITSTREAM``, ``?bitstream=``): ``portable``
#: blobs (version 2) decode on any machine; ``exact`` blobs (version 1) hold the reference
#: codec's strings byte for byte and decode only where their entropy parameters are
#: reproduced bit for bit (conformance work). See tcm_serve/codec/portable.py.
BITSTREAMS = ("portable", "exact")
DEFAULT_BITSTREAM = "portable"


def check_bitstream(value: str) -> bool:
    """True for ``portable``, False for ``exact``; :class:`ConfigError` for anything else."""
    if value not in BITSTREAMS:
        raise ConfigError(f"unknown bitstream {value!r} (use {' or '.join(BITSTREAMS)})")
    return value == "portable"


#: Image modes; stored as u8 code = index + 1 (0 is invalid).
MODES = ("L", "RGB")

_HEADER = struct.Struct("<4sBBBBHHHHBBBBB3s8s8sIII")
_HINTS_LEN = struct.Struct("<I")  # version 2: follows the version-1 header fields
HEADER_SIZE = _HEADER.size  # 52: the version-1 header, and the fields both versions share
HEADER_SIZES = {1: HEADER_SIZE, 2: HEADER_SIZE + _HINTS_LEN.size}  # 52, 56
_TRAILER = struct.Struct("<I")
TRAILER_SIZE = _TRAILER.size  # 4
MIN_STREAM_LEN = 8  # rANS strings end with an 8-byte flush
STREAM_ALIGN = 4  # rANS strings are sequences of u32 words
MIN_HINTS_LEN = 1  # version 2: the hint count (a varint) is always there
MIN_FILE_SIZE = HEADER_SIZE + 2 * MIN_STREAM_LEN + TRAILER_SIZE  # 72 (version 1; version 2: 77)

#: Total padding per dimension is strictly below this (a format rule: the writer's padding
#: rule, :mod:`tcm_serve.codec.geometry`, adds at most 255).
MAX_PAD_TOTAL = 256
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF
_HASH_LEN = 8

# Offset of the version byte: the only field read before the header length is known.
_OFF_VERSION = 4

# Signatures of things people feed us by mistake, for a better "bad magic" message.
_FOREIGN_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x0a", "a JPEG XL image"),
    (b"PK\x03\x04", "a ZIP archive (a PyTorch checkpoint?)"),
    (b"\x1f\x8b", "a gzip file"),
)


# --------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TcmHeader:
    quality: int  # 1..255 (store quality level)
    config_hash: bytes  # exactly 8 bytes: identity of the architecture config
    weights_hash: bytes  # exactly 8 bytes: SHA-256 prefix of the weights
    width: int  # original image width, 1..65535
    height: int  # original image height, 1..65535
    mode: str  # "L" (grayscale) or "RGB"
    pad: tuple[int, int, int, int]  # left, right, top, bottom zero padding added before coding
    z_shape: tuple[int, int]  # (zH, zW) = the padded tensor's z grid (Geometry.z_shape)
    backend: str  # what computed the entropy parameters: one of BACKENDS (v1) or PORTABLE_METHODS (v2)
    symbols_crc32: int  # CRC32 of the coded symbols+indexes, checked after decode

    @property
    def version(self) -> int:
        """The format version this header is written in, implied by ``backend``: a portable
        method needs version 2, an exact backend is version 1 (writers write the lowest
        version that can represent the file)."""
        return 2 if self.backend in PORTABLE_METHODS else 1

    @property
    def portable(self) -> bool:
        return self.version == 2

    def problem(self) -> str | None:
        """The first rule this header breaks, as a one-line message, or ``None``."""
        return _header_problem(self)

    def validate(self) -> None:
        """Raise :class:`ValueError` (programmer error) if the header breaks any rule."""
        msg = _header_problem(self)
        if msg is not None:
            raise ValueError(msg)

    @property
    def geometry(self) -> Geometry:
        """The image, its padding and the padded tensor's grids, (height, width) order."""
        return Geometry(self.height, self.width, self.pad)


@dataclass(frozen=True)
class TcmFile:
    header: TcmHeader
    z_string: bytes
    y_string: bytes
    #: Version 2: the encoded hint list (:mod:`tcm_serve.codec.hints`); empty in version 1.
    hints: bytes = b""

    def problem(self) -> str | None:
        """The first rule this file breaks, as a one-line message, or ``None``."""
        if not isinstance(self.header, TcmHeader):
            return f"header must be a TcmHeader, got {type(self.header).__name__}"
        msg = _header_problem(self.header)
        if msg is not None:
            return msg
        for name, s in (("z_string", self.z_string), ("y_string", self.y_string)):
            if not isinstance(s, (bytes, bytearray)):
                return f"{name} must be bytes, got {type(s).__name__}"
            msg = _stream_len_problem(name, len(s))
            if msg is not None:
                return msg
        if not isinstance(self.hints, (bytes, bytearray)):
            return f"hints must be bytes, got {type(self.hints).__name__}"
        return _hints_len_problem(self.header.version, len(self.hints))

    def validate(self) -> None:
        """Raise :class:`ValueError` (programmer error) if the file breaks any rule."""
        msg = self.problem()
        if msg is not None:
            raise ValueError(msg)


# --------------------------------------------------------------------------------------
# Rules shared by pack (ValueError) and unpack (FormatError)
# --------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _stream_len_problem(name: str, n: int) -> str | None:
    if n < MIN_STREAM_LEN:
        return f"{name} is {n} bytes; an entropy-coded string is at least {MIN_STREAM_LEN} bytes (rANS flush)"
    if n % STREAM_ALIGN:
        return f"{name} is {n} bytes, not a multiple of {STREAM_ALIGN} (rANS strings are u32 words)"
    if n > _U32_MAX:
        return f"{name} is {n} bytes, more than a u32 length field can hold"
    return None


def _hints_len_problem(version: int, n: int) -> str | None:
    if version == 1:
        return None if n == 0 else f"a version-1 file has no hints section, got {n} bytes of hints"
    if n < MIN_HINTS_LEN:
        return f"hints section is {n} bytes; version 2 needs at least {MIN_HINTS_LEN} (the hint count)"
    if n > _U32_MAX:
        return f"hints section is {n} bytes, more than a u32 length field can hold"
    return None


def _header_problem(h: TcmHeader) -> str | None:
    # quality
    if not _is_int(h.quality):
        return f"quality must be an int, got {type(h.quality).__name__}"
    if quality_problem(h.quality):
        return f"quality {h.quality} out of range {MIN_QUALITY}..{MAX_QUALITY}"
    # hashes
    for name in ("config_hash", "weights_hash"):
        v = getattr(h, name)
        if not isinstance(v, bytes):
            return f"{name} must be bytes, got {type(v).__name__}"
        if len(v) != _HASH_LEN:
            return f"{name} must be exactly {_HASH_LEN} bytes, got {len(v)}"
    # size
    for name in ("width", "height"):
        v = getattr(h, name)
        if not _is_int(v):
            return f"{name} must be an int, got {type(v).__name__}"
        if not 1 <= v <= MAX_SIDE:
            return f"{name} {v} out of range 1..{MAX_SIDE}"
    # mode / backend
    if h.mode not in MODES:
        return f"mode {h.mode!r} is not one of {', '.join(MODES)}"
    if h.backend not in BACKENDS + PORTABLE_METHODS:
        return f"backend {h.backend!r} is not one of {', '.join(BACKENDS + PORTABLE_METHODS)}"
    # crc
    if not _is_int(h.symbols_crc32):
        return f"symbols_crc32 must be an int, got {type(h.symbols_crc32).__name__}"
    if not 0 <= h.symbols_crc32 <= _U32_MAX:
        return f"symbols_crc32 {h.symbols_crc32} out of range 0..0xffffffff"
    # pad
    if not isinstance(h.pad, tuple) or len(h.pad) != 4:
        return f"pad must be a tuple (left, right, top, bottom), got {h.pad!r}"
    for name, v in zip(("left", "right", "top", "bottom"), h.pad):
        if not _is_int(v):
            return f"pad {name} must be an int, got {type(v).__name__}"
        if not 0 <= v <= 255:
            return f"pad {name} {v} out of range 0..255"
    # z_shape
    if not isinstance(h.z_shape, tuple) or len(h.z_shape) != 2:
        return f"z_shape must be a tuple (zH, zW), got {h.z_shape!r}"
    for name, v in zip(("zH", "zW"), h.z_shape):
        if not _is_int(v):
            return f"z_shape {name} must be an int, got {type(v).__name__}"
        if not 1 <= v <= _U16_MAX:
            return f"z_shape {name} {v} out of range 1..{_U16_MAX}"
    return _padding_problem(h)


def _padding_problem(h: TcmHeader) -> str | None:
    """Padding / z_shape consistency, width first then height: the header's image plus its
    padding must be the padded size its z grid stands for."""
    left, right, top, bottom = h.pad
    zh, zw = h.z_shape
    image, grid = h.geometry, Geometry.from_z(h.z_shape)
    for axis, size, a, b, padded, zdim, expected, a_name, b_name, zname in (
        ("width", h.width, left, right, image.padded_width, zw, grid.padded_width, "left", "right", "zW"),
        ("height", h.height, top, bottom, image.padded_height, zh, grid.padded_height, "top", "bottom", "zH"),
    ):
        total = a + b
        if total >= MAX_PAD_TOTAL:
            return f"{axis} padding {a_name} {a} + {b_name} {b} = {total} must be less than {MAX_PAD_TOTAL}"
        split = split_padding(total)
        if (a, b) != split:
            return (
                f"{axis} padding must be split floor/rest: {a_name} {a}, {b_name} {b}; "
                f"expected {a_name} {split[0]}, {b_name} {split[1]}"
            )
        if padded != expected:
            return (
                f"padded {axis} {size} + {total} = {padded} does not match z_shape "
                f"{zname} {zdim} * {Z_STRIDE} = {expected}"
            )
    return None


# --------------------------------------------------------------------------------------
# pack / unpack
# --------------------------------------------------------------------------------------
def pack(f: TcmFile) -> bytes:
    """Serialise ``f``. Raises :class:`ValueError` if ``f`` breaks any format rule."""
    if not isinstance(f, TcmFile):
        raise ValueError(f"pack() needs a TcmFile, got {type(f).__name__}")
    f.validate()
    h = f.header
    left, right, top, bottom = h.pad
    zh, zw = h.z_shape
    head = _HEADER.pack(
        MAGIC,
        h.version,
        0,  # flags
        h.quality,
        MODES.index(h.mode) + 1,
        h.width,
        h.height,
        zh,
        zw,
        left,
        right,
        top,
        bottom,
        _CODES[h.version].index(h.backend) + 1,
        b"\x00\x00\x00",
        h.config_hash,
        h.weights_hash,
        h.symbols_crc32,
        len(f.z_string),
        len(f.y_string),
    )
    if h.version == 2:
        head += _HINTS_LEN.pack(len(f.hints))
    body = b"".join((head, bytes(f.z_string), bytes(f.y_string), bytes(f.hints)))
    return body + _TRAILER.pack(zlib.crc32(body))


def _hexbytes(b: bytes) -> str:
    return " ".join(f"{x:02x}" for x in b)


def _magic_error(mv: memoryview) -> FormatError:
    """Explain why the first bytes are not MAGIC (caller knows they are not)."""
    head = bytes(mv[:16])
    n = len(mv)
    for sig, what in _FOREIGN_SIGNATURES:
        if head.startswith(sig):
            return FormatError(
                f"not a .tcm file: this looks like {what} (starts with {_hexbytes(sig)}), "
                f"expected magic {_hexbytes(MAGIC)}"
            )
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return FormatError(
            f"not a .tcm file: this looks like a WebP image (RIFF....WEBP), expected magic {_hexbytes(MAGIC)}"
        )
    if head.startswith(b"\xef\xbf\xbdTCM"):
        return FormatError(
            "bad magic: first byte was replaced by U+FFFD (ef bf bd): the file was decoded "
            "as UTF-8 text and re-encoded; transfer .tcm files in binary mode"
        )
    if head.startswith(b"\xc2\x89TCM"):
        return FormatError(
            "bad magic: first byte 0x89 became c2 89: the file was decoded as Latin-1 text "
            "and re-encoded as UTF-8; transfer .tcm files in binary mode"
        )
    if head.startswith(b"iVRDT"):
        return FormatError("not a .tcm file: this looks like a base64-encoded .tcm file; base64-decode it first")
    if n >= 4 and head[1:4] == MAGIC[1:] and head[0] != MAGIC[0]:
        return FormatError(
            f"bad magic: found {_hexbytes(head[:4])}, expected {_hexbytes(MAGIC)}: first byte "
            f"is 0x{head[0]:02x} instead of 0x89 (high bit stripped by a 7-bit or text-mode "
            f"transfer?)"
        )
    found = _hexbytes(head[:4]) if n else "nothing"
    return FormatError(
        f"bad magic: expected {_hexbytes(MAGIC)} (\\x89TCM), found {found}"
        + ("" if n >= 4 else f" ({n} bytes in total)")
    )


def _as_bytes_view(data: Any) -> memoryview:
    if isinstance(data, str):
        raise FormatError("expected bytes, got str: .tcm files are binary; read them with open(path, 'rb')")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FormatError(f"expected bytes, got {type(data).__name__}")
    mv = memoryview(data)
    if mv.format != "B" or mv.ndim != 1:
        try:
            mv = mv.cast("B")
        except (TypeError, ValueError) as exc:
            raise FormatError(f"expected a contiguous byte buffer: {exc}") from None
    return mv


def unpack(data: bytes) -> TcmFile:
    """Parse and fully validate a .tcm blob.

    Raises :class:`FormatError` (or :class:`UnsupportedVersionError`) and nothing else for
    any input. Nothing is allocated from a declared length before that length has been
    checked against ``len(data)``.
    """
    mv = _as_bytes_view(data)
    n = len(mv)

    # 1. magic
    if n < len(MAGIC) or mv[: len(MAGIC)] != MAGIC:
        if n < len(MAGIC) and bytes(mv) == MAGIC[:n]:
            if n == 0:
                raise FormatError(f"empty input: a .tcm file is at least {MIN_FILE_SIZE} bytes")
            raise FormatError(f"truncated: file is {n} bytes, a .tcm file is at least {MIN_FILE_SIZE} bytes")
        raise _magic_error(mv)

    # 2. version
    if n <= _OFF_VERSION:
        raise FormatError(f"truncated: file is {n} bytes (magic only), a .tcm file is at least {MIN_FILE_SIZE} bytes")
    version = mv[_OFF_VERSION]
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(
            f"unsupported .tcm format version {version}: this build reads versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    header_size = HEADER_SIZES[version]

    # 3. structure (integer arithmetic only; nothing sliced from an unchecked length)
    if n < header_size + TRAILER_SIZE:
        raise FormatError(f"truncated: header and CRC trailer need {header_size + TRAILER_SIZE} bytes, got {n}")
    (
        _magic,
        _version,
        flags,
        quality,
        mode_code,
        width,
        height,
        zh,
        zw,
        pad_left,
        pad_right,
        pad_top,
        pad_bottom,
        backend_code,
        reserved,
        config_hash,
        weights_hash,
        symbols_crc32,
        z_len,
        y_len,
    ) = _HEADER.unpack_from(mv, 0)
    hints_len = _HINTS_LEN.unpack_from(mv, HEADER_SIZE)[0] if version == 2 else 0
    declared = f"z_string of {z_len} bytes and y_string of {y_len} bytes" + (
        f" and hints of {hints_len} bytes" if version == 2 else ""
    )
    expected = header_size + z_len + y_len + hints_len + TRAILER_SIZE
    if n < expected:
        raise FormatError(f"truncated: header declares {declared}, so the file needs {expected} bytes, got {n}")
    if n > expected:
        raise FormatError(
            f"length mismatch: header declares {declared}, so the file should be {expected} bytes, got {n} "
            f"({n - expected} unexpected trailing byte{'s' if n - expected != 1 else ''})"
        )

    # 4. CRC over every byte before the trailer
    (stored_crc,) = _TRAILER.unpack_from(mv, n - TRAILER_SIZE)
    computed_crc = zlib.crc32(mv[: n - TRAILER_SIZE])
    if stored_crc != computed_crc:
        raise FormatError(
            f"CRC32 mismatch: stored 0x{stored_crc:08x}, computed 0x{computed_crc:08x} (the file is corrupt)"
        )

    # 5. semantics
    if flags != 0:
        raise FormatError(f"reserved flags byte is 0x{flags:02x}, must be 0 in format version {version}")
    if reserved != b"\x00\x00\x00":
        raise FormatError(f"reserved bytes 21..23 are {_hexbytes(reserved)}, must be zero in format version {version}")
    if not 1 <= mode_code <= len(MODES):
        known = ", ".join(f"{i + 1}={m}" for i, m in enumerate(MODES))
        raise FormatError(f"unknown mode code {mode_code} (known: {known})")
    codes = _CODES[version]
    if not 1 <= backend_code <= len(codes):
        known = ", ".join(f"{i + 1}={b}" for i, b in enumerate(codes))
        raise FormatError(f"unknown backend code {backend_code} in format version {version} (known: {known})")
    header = TcmHeader(
        quality=quality,
        config_hash=config_hash,
        weights_hash=weights_hash,
        width=width,
        height=height,
        mode=MODES[mode_code - 1],
        pad=(pad_left, pad_right, pad_top, pad_bottom),
        z_shape=(zh, zw),
        backend=codes[backend_code - 1],
        symbols_crc32=symbols_crc32,
    )
    msg = _header_problem(header)
    if msg is None:
        msg = (
            _stream_len_problem("z_string", z_len)
            or _stream_len_problem("y_string", y_len)
            or _hints_len_problem(version, hints_len)
        )
    if msg is not None:
        raise FormatError(f"invalid header: {msg}")

    z_start = header_size
    y_start = z_start + z_len
    h_start = y_start + y_len
    return TcmFile(
        header=header,
        z_string=bytes(mv[z_start:y_start]),
        y_string=bytes(mv[y_start:h_start]),
        hints=bytes(mv[h_start : h_start + hints_len]),
    )


# --------------------------------------------------------------------------------------
# Inspection and the hash/checksum definitions from docs/format.md
# --------------------------------------------------------------------------------------
def header_fields(f: TcmFile) -> dict:
    """Every header field plus stream lengths, JSON-friendly (used by ``tcm inspect``).

    Hashes are lowercase hex; ``symbols_crc32`` is an int (``symbols_crc32_hex`` is the
    same value as 8 hex digits). The SHA-256 of each stream is included so it can be
    compared with the strings the reference TCM ``compress()`` returns.
    """
    h = f.header
    left, right, top, bottom = h.pad
    g = h.geometry
    return {
        "format_version": h.version,
        "flags": 0,
        "quality": h.quality,
        "mode": h.mode,
        "width": h.width,
        "height": h.height,
        "pad": {"left": left, "right": right, "top": top, "bottom": bottom},
        "padded_width": g.padded_width,
        "padded_height": g.padded_height,
        "z_shape": [h.z_shape[0], h.z_shape[1]],
        "backend": h.backend,
        "config_hash": bytes(h.config_hash).hex(),
        "weights_hash": bytes(h.weights_hash).hex(),
        "symbols_crc32": h.symbols_crc32,
        "symbols_crc32_hex": f"{h.symbols_crc32:08x}",
        "z_len": len(f.z_string),
        "y_len": len(f.y_string),
        "hints_len": len(f.hints),
        "z_string_sha256": hashlib.sha256(bytes(f.z_string)).hexdigest(),
        "y_string_sha256": hashlib.sha256(bytes(f.y_string)).hexdigest(),
        "file_size": HEADER_SIZES[h.version] + len(f.z_string) + len(f.y_string) + len(f.hints) + TRAILER_SIZE,
    }
