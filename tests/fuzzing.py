"""Fuzzing harness for the ``.tcm`` parser + decoder (used by tests/test_fuzz.py and
benchmarks/fuzz.py; not a test module itself).

Every case is a byte string built from real blobs (made by the real encoder with the
conformance model) by one of several structure-aware mutations. The oracle: decoding it
with :func:`~tcm_serve.codec.pipeline.decompress_blob` either

* raises a :class:`~tcm_serve.errors.TcmError` with a one-line message (a clean refusal), or
* succeeds, and then the result must be *correct*: the entropy-coded strings are exactly
  those of one of the real blobs (anything else decoding would be a silently wrong image)
  and the pixels equal that blob's reconstruction, cropped and converted as the mutated
  header says (a header-only change such as the backend label or a consistent re-crop is
  a legitimate, different-but-correct decode).

Anything else -- another exception type, a case running longer than the watchdog allows
(``faulthandler`` dumps every thread and exits the process: a hang cannot pass silently),
or resident memory growing past the budget -- is a failure.
"""

from __future__ import annotations

import faulthandler
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tcm_serve.codec.container import HEADER_SIZES, MAGIC, TcmFile, unpack
from tcm_serve.errors import TcmError

#: Header layout (offset, struct code) of the fields a structure-aware mutation rewrites.
FIELDS: dict[str, tuple[int, str]] = {
    "version": (4, "B"),
    "flags": (5, "B"),
    "quality": (6, "B"),
    "mode": (7, "B"),
    "width": (8, "H"),
    "height": (10, "H"),
    "zH": (12, "H"),
    "zW": (14, "H"),
    "pad_left": (16, "B"),
    "pad_right": (17, "B"),
    "pad_top": (18, "B"),
    "pad_bottom": (19, "B"),
    "backend": (20, "B"),
    "reserved": (21, "3s"),
    "config_hash": (24, "8s"),
    "weights_hash": (32, "8s"),
    "symbols_crc32": (40, "I"),
    "z_len": (44, "I"),
    "y_len": (48, "I"),
}
#: Version 2 (portable) only.
V2_FIELDS: dict[str, tuple[int, str]] = {"hints_len": (52, "I")}

#: Padded pixels a fuzz case may decode (the service's own limit is 40 MP; a fuzz case that
#: claims more is refused from its header, which is what this keeps cheap to check).
FUZZ_MAX_PIXELS = 512 * 512


# -- process measurements -------------------------------------------------------------------------
def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (kB) and Threads from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def rss_mb(pid: int | str = "self") -> float:
    return proc_status(pid)["VmRSS"] / 1024.0


# -- the corpus of real blobs ------------------------------------------------------------------------
@dataclass
class Base:
    """A real blob and what decoding it must give."""

    blob: bytes
    padded_recon: object  # torch.Tensor (3, H, W): the engine's output before cropping

    @property
    def file(self) -> TcmFile:
        return unpack(self.blob)


@dataclass
class FuzzContext:
    bases: list[Base]
    decode: Callable[[bytes], object]  # bytes -> Decompressed, raising TcmError
    by_streams: dict[tuple[bytes, bytes], Base] = field(default_factory=dict)
    #: outcome per input already checked (sha256): hypothesis repeats inputs (every
    #: "identity" case is one of a few blobs), and a full decode costs a second here.
    seen: dict[bytes, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for b in self.bases:
            f = b.file
            self.by_streams[(f.z_string, f.y_string)] = b


def make_context(store_root: Path, quality: int) -> FuzzContext:
    """Encode a few synthetic images (RGB and grayscale, two padded sizes) with the store's
    model and keep each one's padded reconstruction for the oracle."""
    import torch

    from tcm_serve.codec.pipeline import coded_image, compress_images, decompress_blob, load_model, store_resolver
    from tcm_serve.imageio import DecodedImage
    from tcm_serve.store import ModelStore

    store = ModelStore(store_root)
    device = torch.device("cpu")
    lm = load_model(store, quality, device)
    rng = np.random.default_rng(20261125)
    images = [
        DecodedImage(rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8), "RGB", "PNG"),
        DecodedImage(rng.integers(0, 256, size=(33, 17, 1), dtype=np.uint8), "L", "PNG"),
        DecodedImage(rng.integers(0, 256, size=(300, 21, 3), dtype=np.uint8), "RGB", "PNG"),
    ]
    bases = []
    # Portable (version 2) blobs, and one exact (version 1) blob: both versions are fuzzed.
    for img, portable in [(img, True) for img in images] + [(images[0], False)]:
        (res,) = compress_images(lm, [img], portable=portable)
        f = unpack(res.blob)
        x = lm.engine.decompress([coded_image(f)], f.header.z_shape)[0]
        bases.append(Base(res.blob, x))
    resolve = store_resolver(store, device)
    return FuzzContext(bases, lambda blob: decompress_blob(blob, resolve, FUZZ_MAX_PIXELS))


# -- mutations ------------------------------------------------------------------------------------------
def fix_crc(body: bytes) -> bytes:
    """``body`` (everything but the trailer) plus a correct CRC32 trailer."""
    return body + struct.pack("<I", zlib.crc32(body))


def _set_field(body: bytearray, name: str, value) -> None:
    off, code = FIELDS[name]
    struct.pack_into("<" + code, body, off, value)


def _assemble(body: bytearray, f: TcmFile, z: bytes, y: bytes, hints: bytes | None = None) -> bytes:
    """A blob of ``f``'s version from ``body``'s header and these streams (and hints, for
    version 2), with the length fields and the CRC made right."""
    version = f.header.version
    hints = f.hints if hints is None else hints
    _set_field(body, "z_len", len(z))
    _set_field(body, "y_len", len(y))
    if version == 2:
        off, code = V2_FIELDS["hints_len"]
        struct.pack_into("<" + code, body, off, len(hints))
    return fix_crc(bytes(body[: HEADER_SIZES[version]]) + bytes(z) + bytes(y) + (bytes(hints) if version == 2 else b""))


#: Mutation kinds, repeated by weight: the full decodes (identity, same-size splices) cost a
#: whole decompression each, so they are drawn less often than the cheap structural ones.
KINDS = (
    ["random", "magic_random", "truncate", "swap_crc", "splice_crc", "identity"]
    + ["flip", "resize_crc", "stream_garbage_crc", "geometry_crc", "hints_crc"] * 2
    + ["flip_crc", "field_crc"] * 3
)


@st.composite
def tcm_cases(draw, blobs: Sequence[bytes]) -> tuple[str, bytes]:
    """(mutation kind, candidate blob). Kinds that recompute the CRC reach past the
    container's checksum into the semantic checks and the decoder."""
    blob = draw(st.sampled_from(list(blobs)))
    f = unpack(blob)
    body = bytearray(blob[:-4])
    kind = draw(st.sampled_from(KINDS))
    if kind == "random":
        return kind, draw(st.binary(max_size=256))
    if kind == "magic_random":
        data = MAGIC + draw(st.sampled_from([b"\x01", b"\x02"])) + draw(st.binary(max_size=256))
        return kind, fix_crc(data) if draw(st.booleans()) else data
    if kind in ("flip", "flip_crc"):
        crc = kind == "flip_crc"
        target = body if crc else bytearray(blob)
        lo = draw(st.sampled_from([0, HEADER_SIZES[f.header.version]])) if crc else 0
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(lo, len(target) - 1))
            target[i] ^= draw(st.integers(1, 255))
        return kind, fix_crc(bytes(target)) if crc else bytes(target)
    if kind == "field_crc":
        fields = {**FIELDS, **(V2_FIELDS if f.header.version == 2 else {})}
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from(sorted(fields)))
            off, code = fields[name]
            size = struct.calcsize("<" + code)
            body[off : off + size] = draw(st.binary(min_size=size, max_size=size))
        return kind, fix_crc(bytes(body))
    if kind == "geometry_crc":
        # A header that satisfies every container rule but describes another size: the
        # decoder has to cope with (or refuse) streams that do not fit it.
        # mostly small (cheap to decode); sometimes up to 65472 px, refused from the header
        side = st.integers(1, 6) | st.integers(7, 1023)
        zh, zw = draw(side), draw(side)
        pad_w, pad_h = draw(st.integers(0, min(255, zw * 64 - 1))), draw(st.integers(0, min(255, zh * 64 - 1)))
        _set_field(body, "zH", zh)
        _set_field(body, "zW", zw)
        _set_field(body, "width", zw * 64 - pad_w)
        _set_field(body, "height", zh * 64 - pad_h)
        _set_field(body, "pad_left", pad_w // 2)
        _set_field(body, "pad_right", pad_w - pad_w // 2)
        _set_field(body, "pad_top", pad_h // 2)
        _set_field(body, "pad_bottom", pad_h - pad_h // 2)
        return kind, fix_crc(bytes(body))
    if kind == "truncate":
        return kind, blob[: draw(st.integers(0, len(blob) - 1))]
    if kind == "resize_crc":
        # Cut or grow one stream by whole words, keeping the length fields and CRC right.
        which = draw(st.sampled_from(["z", "y"]))
        z, y = bytearray(f.z_string), bytearray(f.y_string)
        s = z if which == "z" else y
        k = 4 * draw(st.integers(-8, 8))
        if k < 0:
            del s[max(0, len(s) + k) :]
        else:
            s += draw(st.binary(min_size=k, max_size=k))
        return kind, _assemble(body, f, z, y)
    if kind == "splice_crc":
        other = unpack(draw(st.sampled_from(list(blobs))))
        z = draw(st.sampled_from([f.z_string, other.z_string]))
        y = draw(st.sampled_from([f.y_string, other.y_string]))
        return kind, _assemble(body, f, z, y)
    if kind == "stream_garbage_crc":
        which = draw(st.sampled_from(["z", "y"]))
        n = 4 * draw(st.integers(2, 64))
        garbage = draw(st.binary(min_size=n, max_size=n))
        z, y = (garbage, f.y_string) if which == "z" else (f.z_string, garbage)
        return kind, _assemble(body, f, z, y)
    if kind == "swap_crc":
        return kind, _assemble(body, f, f.y_string, f.z_string)
    if kind == "hints_crc" and f.header.version == 2:
        # Any hint list: garbage, or a well-formed one naming symbols and tables at random.
        if draw(st.booleans()):
            hints = draw(st.binary(max_size=24))
        else:
            from tcm_serve.codec.hints import encode_hints

            positions = sorted(draw(st.sets(st.integers(0, 4000), max_size=5)))
            indexes = draw(st.lists(st.integers(0, 70), min_size=len(positions), max_size=len(positions)))
            hints = encode_hints(np.array(positions, np.int64), np.array(indexes, np.int64).clip(0, 255))
        return kind, _assemble(body, f, f.z_string, f.y_string, hints)
    return kind, blob  # identity: the oracle's positive control


# -- the oracle --------------------------------------------------------------------------------------------
def check_case(ctx: FuzzContext, data: bytes) -> str:
    """Decode ``data``; return the outcome (an error code or ``"decoded"``), or raise
    AssertionError when the outcome is neither a clean error nor a correct decode."""
    from tcm_serve.codec.padding import crop, tensor_to_pixels

    try:
        out = ctx.decode(data)
    except TcmError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, f"error message is not one line: {msg!r}"
        return exc.code
    # A successful decode must be one the encoder made: the same strings, and the pixels
    # that those strings give under this header.
    f = unpack(data)
    base = ctx.by_streams.get((f.z_string, f.y_string))
    assert base is not None, "decoded entropy-coded strings that no encoder produced (silently wrong image)"
    h, bh = f.header, base.file.header
    assert (h.z_shape, h.symbols_crc32) == (bh.z_shape, bh.symbols_crc32), "decoded under another geometry/checksum"
    expected = tensor_to_pixels(crop(base.padded_recon, h.pad), h.mode)
    # The same symbols decode to the encoder's reconstruction up to the last float bits of
    # the float32 transforms, which are not always repeatable within one process (seen on an
    # AMD EPYC without AVX-512: one value of 7,200 one level off between two decodes of the
    # same blob): a value on a .5 boundary may round either way. A silently wrong image is far off everywhere; this is one level, rarely.
    assert out.pixels.shape == expected.shape, "decoded to another shape than the encoder's image"
    diff = np.abs(out.pixels.astype(np.int16) - expected)
    assert diff.max(initial=0) <= 1 and (diff > 0).mean() <= 1e-3, (
        f"decoded pixels differ from the encoder's reconstruction (max {diff.max()}, {(diff > 0).sum()} values)"
    )
    return "decoded"


# -- a bounded run ------------------------------------------------------------------------------------------
@dataclass
class FuzzReport:
    cases: int = 0
    distinct: int = 0  # distinct inputs among the cases (a repeated input is not decoded again)
    outcomes: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    kind_seconds: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    slowest_case_s: float = 0.0
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    peak_rss_mb: float = 0.0  # VmHWM at the end (the process's high-water mark)

    def count(self, kind: str, outcome: str, seconds: float) -> None:
        """Record one finished case."""
        self.slowest_case_s = max(self.slowest_case_s, seconds)
        self.kind_seconds[kind] += seconds
        self.cases += 1
        self.kinds[kind] += 1
        self.outcomes[outcome] += 1

    def summary(self) -> str:
        lines = [
            f"cases: {self.cases}"
            + (f" ({self.distinct} distinct inputs)" if self.distinct else "")
            + f" in {self.seconds:.1f} s (slowest case {self.slowest_case_s:.2f} s)",
            f"resident memory: {self.rss_start_mb:.0f} MB at start, {self.rss_end_mb:.0f} MB at end, "
            f"peak {self.peak_rss_mb:.0f} MB",
            "mutations (cases, seconds): "
            + ", ".join(f"{k} {v} ({self.kind_seconds[k]:.0f} s)" for k, v in sorted(self.kinds.items())),
            "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
        ]
        return "\n".join(lines)


def run_tcm_fuzz(
    ctx: FuzzContext,
    cases: int,
    seed: int | None = None,
    case_timeout_s: float = 120.0,
    progress: Callable[[FuzzReport], None] | None = None,
) -> FuzzReport:
    """Run ``cases`` hypothesis-generated cases through :func:`check_case`. ``seed=None``
    derandomizes (the same cases every run); a hang past ``case_timeout_s`` dumps every
    thread's stack and exits the process (exit code 1)."""
    import hashlib

    report = FuzzReport(rss_start_mb=rss_mb())

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=seed is None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=tcm_cases([b.blob for b in ctx.bases]))
    def one(case: tuple[str, bytes]) -> None:
        kind, data = case
        key = hashlib.sha256(data).digest()
        faulthandler.dump_traceback_later(case_timeout_s, exit=True)
        t0 = time.monotonic()
        try:
            outcome = ctx.seen.get(key) or check_case(ctx, data)
        finally:
            faulthandler.cancel_dump_traceback_later()
        if key not in ctx.seen:
            ctx.seen[key] = outcome
            report.distinct += 1
        report.count(kind, outcome, time.monotonic() - t0)
        if progress is not None and report.cases % 500 == 0:
            progress(report)

    if seed is not None:
        one = hypothesis_seed(seed)(one)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one decode at a time; more threads only spin on a shared machine
    t0 = time.monotonic()
    try:
        one()
    finally:
        torch.set_num_threads(threads)
    report.seconds = time.monotonic() - t0
    status = proc_status()
    report.rss_end_mb = status["VmRSS"] / 1024.0
    report.peak_rss_mb = status["VmHWM"] / 1024.0
    return report


def main_progress(report: FuzzReport) -> None:
    print(
        f"  ... {report.cases} cases, rss {rss_mb():.0f} MB, outcomes {dict(report.outcomes)}",
        file=sys.stderr,
        flush=True,
    )


# -- odd images (tests/test_fuzz.py, benchmarks/fuzz.py) ------------------------------------------------------
@dataclass(frozen=True)
class OddImage:
    """Image bytes and what :func:`~tcm_serve.imageio.decode_image` must make of them: a
    ``(height, width, channels)`` shape, or the :class:`~tcm_serve.errors.ImageError`
    subclass it must raise. ``drop_alpha`` is passed through (the API's query flag)."""

    data: bytes
    expect: object  # tuple[int, int, int] | type[ImageError]
    drop_alpha: bool = False


def _save(img, fmt: str, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def _png(width: int, height: int, depth: int, colour: int, raw_rows: bytes | None) -> bytes:
    """A PNG written by hand (any IHDR, even one Pillow cannot write); no IDAT when
    ``raw_rows`` is None beyond a token one."""
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    idat = _png_chunk(b"IDAT", zlib.compress(raw_rows if raw_rows is not None else b"\x00", 9))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + _png_chunk(b"IEND", b"")


def _patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame size in the SOF0/SOF2 segment."""
    out = bytearray(data)
    i = 2
    while i + 9 < len(out):
        assert out[i] == 0xFF, "lost JPEG marker sync"
        marker, seg_len = out[i + 1], struct.unpack(">H", out[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC2):
            struct.pack_into(">HH", out, i + 5, height, width)
            return bytes(out)
        i += 2 + seg_len
    raise ValueError("no SOF segment")


def _patch_tiff_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite ImageWidth/ImageLength in the first IFD of a little-endian TIFF."""
    out = bytearray(data)
    assert out[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", out, 4)[0]
    for k in range(struct.unpack_from("<H", out, ifd)[0]):
        e = ifd + 2 + 12 * k
        tag, typ = struct.unpack_from("<HH", out, e)
        if tag in (256, 257):
            value = width if tag == 256 else height
            if typ == 3:
                struct.pack_into("<HH", out, e + 8, value if value < 65536 else 65535, 0)
            else:
                struct.pack_into("<I", out, e + 8, value)
    return bytes(out)


def _patch_webp_lossless_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the 14-bit width-1 / height-1 fields of a simple-format VP8L WebP."""
    out = bytearray(data)
    assert out[12:16] == b"VP8L" and out[20] == 0x2F
    bits = struct.unpack_from("<I", out, 21)[0]
    bits = (bits & ~((1 << 28) - 1)) | ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
    struct.pack_into("<I", out, 21, bits)
    return bytes(out)


def odd_images() -> dict[str, OddImage]:
    """The awkward cases: bombs (tiny file, huge declared size), zero-sized and 1-pixel
    images, animation, CMYK, 16-bit, palette transparency, every EXIF orientation."""
    from PIL import Image

    from tcm_serve.errors import ImageError, ImageTooLargeError, UnsupportedImageFormatError

    rng = np.random.default_rng(5)
    rgb = Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))  # 24 wide, 16 high
    px1 = Image.new("RGB", (1, 1), (200, 30, 60))
    cases: dict[str, OddImage] = {}
    # 1-pixel images in every allowed format
    for fmt, kw in (("PNG", {}), ("JPEG", {}), ("WEBP", {"lossless": True}), ("TIFF", {}), ("BMP", {})):
        cases[f"1px-{fmt.lower()}"] = OddImage(_save(px1, fmt, **kw), (1, 1, 3))
    cases["1px-gray-png"] = OddImage(_save(Image.new("L", (1, 1), 7), "PNG"), (1, 1, 1))
    # zero-sized: headers that declare no pixels
    cases["zero-width-png"] = OddImage(_png(0, 5, 8, 2, b""), ImageError)
    cases["zero-height-png"] = OddImage(_png(5, 0, 8, 0, b""), ImageError)
    cases["zero-height-jpeg"] = OddImage(_patch_jpeg_size(_save(rgb, "JPEG"), 24, 0), ImageError)
    cases["zero-width-tiff"] = OddImage(_patch_tiff_size(_save(rgb, "TIFF"), 0, 16), ImageError)
    bmp = bytearray(_save(rgb, "BMP"))
    struct.pack_into("<i", bmp, 18, 0)
    cases["zero-width-bmp"] = OddImage(bytes(bmp), ImageError)
    # decompression bombs: a few hundred bytes that declare billions of pixels
    cases["bomb-png-header"] = OddImage(_png(100_000, 100_000, 8, 2, None), ImageTooLargeError)
    cases["bomb-jpeg-header"] = OddImage(_patch_jpeg_size(_save(rgb, "JPEG"), 65_000, 65_000), ImageTooLargeError)
    cases["bomb-tiff-header"] = OddImage(_patch_tiff_size(_save(rgb, "TIFF"), 200_000, 200_000), ImageTooLargeError)
    bmp = bytearray(_save(rgb, "BMP"))
    struct.pack_into("<ii", bmp, 18, 100_000, 100_000)
    cases["bomb-bmp-header"] = OddImage(bytes(bmp), ImageTooLargeError)
    cases["bomb-webp-header"] = OddImage(
        _patch_webp_lossless_size(_save(rgb, "WEBP", lossless=True), 16_384, 16_384), ImageTooLargeError
    )
    # ... and a real zlib bomb: 4000x4000 zeros (16 MP of pixel data) in ~16 KB
    cases["bomb-png-zlib-16mp"] = OddImage(_png(4000, 4000, 8, 0, bytes(4001 * 4000)), ImageTooLargeError)
    # animation and multiple frames: the first frame
    red, green = Image.new("RGB", (6, 4), (255, 0, 0)), Image.new("RGB", (6, 4), (0, 255, 0))
    cases["animated-png"] = OddImage(_save(red, "PNG", save_all=True, append_images=[green]), (4, 6, 3))
    cases["animated-webp"] = OddImage(
        _save(red, "WEBP", save_all=True, append_images=[green], lossless=True), (4, 6, 3)
    )
    cases["multipage-tiff"] = OddImage(_save(red, "TIFF", save_all=True, append_images=[green]), (4, 6, 3))
    cases["animated-gif"] = OddImage(
        _save(red, "GIF", save_all=True, append_images=[green]), UnsupportedImageFormatError
    )
    # colour spaces and depths
    cases["cmyk-jpeg"] = OddImage(_save(rgb.convert("CMYK"), "JPEG"), (16, 24, 3))
    cases["cmyk-tiff"] = OddImage(_save(rgb.convert("CMYK"), "TIFF"), (16, 24, 3))
    g16 = rng.integers(0, 65536, (16, 24)).astype(">u2")
    cases["16bit-gray-png"] = OddImage(_png(24, 16, 16, 0, b"".join(b"\x00" + r.tobytes() for r in g16)), (16, 24, 1))
    cases["16bit-gray-tiff"] = OddImage(
        _save(Image.frombytes("I;16", (24, 16), g16.astype("<u2").tobytes()), "TIFF"), (16, 24, 1)
    )
    c16 = rng.integers(0, 65536, (16, 24 * 3)).astype(">u2")
    cases["16bit-rgb-png"] = OddImage(_png(24, 16, 16, 2, b"".join(b"\x00" + r.tobytes() for r in c16)), (16, 24, 3))
    a16 = rng.integers(0, 65536, (16, 24 * 4)).astype(">u2")
    rgba16 = _png(24, 16, 16, 6, b"".join(b"\x00" + r.tobytes() for r in a16))
    cases["16bit-rgba-png"] = OddImage(rgba16, ImageError)
    cases["16bit-rgba-png-drop-alpha"] = OddImage(rgba16, (16, 24, 3), drop_alpha=True)
    # palette with transparency (tRNS): refused unless the alpha is dropped
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    ptrns = _save(pal, "PNG", transparency=0)
    cases["palette-trns-png"] = OddImage(ptrns, ImageError)
    cases["palette-trns-png-drop-alpha"] = OddImage(ptrns, (16, 24, 3), drop_alpha=True)
    cases["gray-alpha-png-drop-alpha"] = OddImage(_save(rgb.convert("LA"), "PNG"), (16, 24, 1), drop_alpha=True)
    # EXIF orientation 1..8 (5..8 swap width and height)
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        cases[f"exif-orientation-{o}-jpeg"] = OddImage(
            _save(rgb, "JPEG", exif=exif), (24, 16, 3) if o >= 5 else (16, 24, 3)
        )
    # truncated and corrupt
    for fmt, kw in (("PNG", {}), ("JPEG", {}), ("WEBP", {}), ("TIFF", {})):
        full = _save(rgb, fmt, **kw)
        cases[f"truncated-{fmt.lower()}"] = OddImage(full[: len(full) // 2], ImageError)
    return cases


#: The limit the odd-image checks run under (the API tests use the same):
#: 1 MP, so that the 16 MP zlib bomb and every header bomb are refused while the rest decode.
ODD_MAX_PIXELS = 1_000_000


def check_odd_image(case: OddImage) -> str:
    """Decode through tcm_serve.imageio; assert the expectation; return the outcome."""
    import warnings

    from tcm_serve.errors import ImageError
    from tcm_serve.imageio import decode_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = decode_image(case.data, max_pixels=ODD_MAX_PIXELS, drop_alpha=case.drop_alpha)
        except ImageError as exc:
            assert isinstance(case.expect, type), f"expected {case.expect}, got {type(exc).__name__}: {exc}"
            assert type(exc) is case.expect, f"expected {case.expect.__name__}, got {type(exc).__name__}: {exc}"
            assert "\n" not in str(exc)
            return exc.code
    assert not isinstance(case.expect, type), f"expected {case.expect.__name__}, but it decoded"
    assert out.pixels.shape == case.expect, (out.pixels.shape, case.expect)
    return "decoded"


# -- mutated odd images ------------------------------------------------------------------------------------------
@st.composite
def image_cases(draw, seeds: Sequence[bytes]) -> tuple[str, bytes]:
    """Truncations, byte edits, deletions, insertions and duplications of the odd images
    (bombs, 16-bit, CMYK, animation, ...), so mutations start from the awkward corners."""
    data = bytearray(draw(st.sampled_from(list(seeds))))
    kind = draw(st.sampled_from(["truncate", "edit", "splice", "header"]))
    if kind == "truncate":
        return kind, bytes(data[: draw(st.integers(0, max(0, len(data) - 1)))])
    if kind == "header":  # the first 64 bytes hold every format's size fields
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, min(63, len(data) - 1)))
            data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]) | st.integers(0, 255))
        return kind, bytes(data)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(
            st.sampled_from(
                ["set", "xor", "delete", "insert", "duplicate"] if kind == "edit" else ["duplicate", "delete"]
            )
        )
        if op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "xor":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[i:i] = data[i : i + draw(st.integers(1, 256))]
    return kind, bytes(data)


def check_image_bytes(data: bytes, drop_alpha: bool) -> str:
    """decode_image gives an ImageError (one line) or a valid image within the limit."""
    import warnings

    from tcm_serve.errors import ImageError
    from tcm_serve.imageio import decode_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = decode_image(data, max_pixels=ODD_MAX_PIXELS, drop_alpha=drop_alpha)
        except ImageError as exc:
            assert str(exc) and "\n" not in str(exc)
            return exc.code
    p = out.pixels
    assert p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] in (1, 3) and p.flags.c_contiguous
    assert 1 <= p.shape[0] * p.shape[1] <= ODD_MAX_PIXELS
    return "decoded"


def run_image_fuzz(cases: int, seed: int | None = None, case_timeout_s: float = 60.0) -> FuzzReport:
    """Like :func:`run_tcm_fuzz`, for mutated odd images through tcm_serve.imageio."""
    seeds = [c.data for c in odd_images().values()]
    report = FuzzReport(rss_start_mb=rss_mb())

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=seed is None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=image_cases(seeds), drop_alpha=st.booleans())
    def one(case: tuple[str, bytes], drop_alpha: bool) -> None:
        kind, data = case
        faulthandler.dump_traceback_later(case_timeout_s, exit=True)
        t0 = time.monotonic()
        try:
            outcome = check_image_bytes(data, drop_alpha)
        finally:
            faulthandler.cancel_dump_traceback_later()
        report.count(kind, outcome, time.monotonic() - t0)

    if seed is not None:
        one = hypothesis_seed(seed)(one)
    t0 = time.monotonic()
    one()
    report.seconds = time.monotonic() - t0
    status = proc_status()
    report.rss_end_mb, report.peak_rss_mb = status["VmRSS"] / 1024.0, status["VmHWM"] / 1024.0
    return report
