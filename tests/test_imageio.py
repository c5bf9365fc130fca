"""Tests for tcm_serve.imageio: decoding guards, mode handling, PNG encoding and atomic writes.

All images are generated in memory with Pillow (plus one optional real Kodak PNG).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from tcm_serve import imageio
from tcm_serve.errors import ImageError, ImageTooLargeError, TcmError, UnsupportedImageFormatError
from tcm_serve.imageio import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    decode_image,
    encode_png,
    read_image,
    write_png,
)


# ---------------------------------------------------------------------------- helpers
def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb_array(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def gray_array(h: int = 24, w: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def smooth_rgb(h: int = 64, w: int = 48) -> np.ndarray:
    """A smooth image: lossy codecs reproduce it closely."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 128)], axis=-1).astype(
        np.uint8
    )


def png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload) & 0xFFFFFFFF)
    )


def png_header_only(width: int, height: int, *, complete: bool = False) -> bytes:
    """A PNG signature + IHDR (valid CRC); with complete=True also a tiny IDAT and IEND."""
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if complete:
        data += png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b"")
    return data


def png16_gray(values: np.ndarray) -> bytes:
    """A 16-bit grayscale PNG built by hand (independent of how Pillow writes I;16)."""
    h, w = values.shape
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def expected_16_to_8(v: int) -> int:
    return round(Fraction(v * 255, 65535))


def assert_valid(img: DecodedImage) -> None:
    p = img.pixels
    assert isinstance(p, np.ndarray) and p.dtype == np.uint8 and p.ndim == 3
    assert p.flags.c_contiguous and p.flags.writeable
    assert (img.mode, p.shape[2]) in {("L", 1), ("RGB", 3)}
    assert img.height == p.shape[0] >= 1 and img.width == p.shape[1] >= 1
    assert img.source_format in ALLOWED_FORMATS


# ---------------------------------------------------------------------------- constants
def test_constants():
    assert ALLOWED_FORMATS == frozenset({"PNG", "JPEG", "WEBP", "BMP", "TIFF"})
    assert DEFAULT_MAX_PIXELS >= 7680 * 4320  # 8K UHD fits
    # Below Pillow's warning threshold so Pillow's own guard never fires by default.
    assert Image.MAX_IMAGE_PIXELS is None or DEFAULT_MAX_PIXELS <= Image.MAX_IMAGE_PIXELS


# ---------------------------------------------------------------------------- round trips
LOSSLESS = [
    ("PNG", {}),
    ("BMP", {}),
    ("TIFF", {}),
    ("TIFF", {"compression": "tiff_deflate"}),
    ("TIFF", {"compression": "tiff_lzw"}),
    ("WEBP", {"lossless": True}),
]


@pytest.mark.parametrize(("fmt", "kw"), LOSSLESS, ids=lambda v: str(v))
def test_lossless_rgb_round_trip_exact(fmt, kw):
    arr = rgb_array()
    out = decode_image(save(Image.fromarray(arr), fmt, **kw))
    assert_valid(out)
    assert out.mode == "RGB" and out.source_format == fmt
    assert (out.width, out.height) == (32, 24)
    np.testing.assert_array_equal(out.pixels, arr)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_gray_round_trip_stays_one_channel(fmt):
    arr = gray_array()
    out = decode_image(save(Image.fromarray(arr), fmt))
    assert_valid(out)
    assert out.mode == "L" and out.pixels.shape == (24, 32, 1)
    np.testing.assert_array_equal(out.pixels[:, :, 0], arr)


@pytest.mark.parametrize(("fmt", "kw"), [("JPEG", {"quality": 95}), ("WEBP", {"quality": 95})])
def test_lossy_rgb_round_trip_close(fmt, kw):
    arr = smooth_rgb()
    out = decode_image(save(Image.fromarray(arr), fmt, **kw))
    assert_valid(out)
    assert out.mode == "RGB" and out.source_format == fmt and out.pixels.shape == arr.shape
    assert np.abs(out.pixels.astype(int) - arr).mean() < 3


def test_gray_jpeg_stays_one_channel():
    arr = smooth_rgb()[:, :, 0]
    out = decode_image(save(Image.fromarray(arr), "JPEG", quality=95))
    assert out.mode == "L" and out.pixels.shape == (*arr.shape, 1)
    assert np.abs(out.pixels[:, :, 0].astype(int) - arr).mean() < 3


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF"])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_one_by_one(fmt, mode):
    color = (200, 100, 50) if mode == "RGB" else 77
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(save(Image.new(mode, (1, 1), color), fmt, **kw))
    assert_valid(out)
    assert (out.width, out.height) == (1, 1)
    if fmt == "WEBP":  # WebP has no grayscale: always RGB
        assert out.mode == "RGB"
    else:
        assert out.mode == mode
    if fmt != "JPEG":
        expected = np.broadcast_to(np.array(color, dtype=np.uint8).reshape(-1), (out.channels,))
        np.testing.assert_array_equal(out.pixels[0, 0], expected)


def test_real_kodak_png(kodak_dir):
    path = kodak_dir / "kodim23.png"  # conftest fixture: fails loudly if shared/ is missing
    out = read_image(path)
    assert_valid(out)
    assert out.mode == "RGB" and out.source_format == "PNG" and (out.width, out.height) == (768, 512)
    with Image.open(path) as ref:
        np.testing.assert_array_equal(out.pixels, np.asarray(ref.convert("RGB")))


def test_bytearray_and_memoryview_accepted():
    data = save(Image.fromarray(rgb_array()), "PNG")
    a = decode_image(bytearray(data))
    b = decode_image(memoryview(data))
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_non_bytes_is_a_type_error():
    with pytest.raises(TypeError):
        decode_image("not bytes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- modes
def test_bilevel_becomes_gray_0_255():
    arr = gray_array() > 127
    out = decode_image(save(Image.fromarray(arr), "PNG"))
    assert out.mode == "L"
    np.testing.assert_array_equal(out.pixels[:, :, 0], np.where(arr, 255, 0))


def _palette_image(transparency=None) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    idx = np.random.default_rng(3).integers(0, 4, (10, 12), dtype=np.uint8)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 99, 199]], dtype=np.uint8)
    img = Image.frombytes("P", (12, 10), idx.tobytes())
    img.putpalette(palette.reshape(-1).tolist())
    return img, idx, palette


def test_palette_becomes_rgb():
    img, idx, palette = _palette_image()
    for fmt in ("PNG", "BMP", "TIFF"):
        out = decode_image(save(img, fmt))
        assert out.mode == "RGB", fmt
        np.testing.assert_array_equal(out.pixels, palette[idx])


def test_palette_with_transparency_refused_then_dropped():
    img, idx, palette = _palette_image()
    data = save(img, "PNG", transparency=1)  # palette entry 1 is transparent
    with pytest.raises(ImageError, match="palette transparency.*drop_alpha=True"):
        decode_image(data)
    out = decode_image(data, drop_alpha=True)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(out.pixels, palette[idx])


def test_palette_with_per_entry_alpha_dropped_without_warnings():
    img, idx, palette = _palette_image()
    data = save(img, "PNG", transparency=bytes([255, 128, 0, 255]))  # tRNS with 4 entries
    with pytest.raises(ImageError, match="palette transparency"):
        decode_image(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns on P(bytes tRNS) -> RGB; we must not
        out = decode_image(data, drop_alpha=True)
    np.testing.assert_array_equal(out.pixels, palette[idx])


def test_bilevel_with_transparency_key():
    arr = gray_array() > 127
    data = save(Image.fromarray(arr), "PNG", transparency=0)
    with pytest.raises(ImageError, match="colour key"):
        decode_image(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = decode_image(data, drop_alpha=True)
    np.testing.assert_array_equal(out.pixels[:, :, 0], np.where(arr, 255, 0))


def test_rgba_refused_with_message():
    rgba = np.dstack([rgb_array(), np.full((24, 32), 128, np.uint8)])
    data = save(Image.fromarray(rgba), "PNG")
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert type(info.value) is ImageError
    msg = str(info.value)
    assert msg == ("image has an alpha channel (RGBA); pass drop_alpha=True (CLI: --drop-alpha) to discard it")
    assert "\n" not in msg


@pytest.mark.parametrize(("fmt", "kw"), [("PNG", {}), ("TIFF", {}), ("WEBP", {"lossless": True})])
def test_rgba_accepted_with_drop_alpha_keeps_colour_values(fmt, kw):
    rgb = rgb_array()
    rgba = np.dstack([rgb, np.random.default_rng(5).integers(1, 256, (24, 32), dtype=np.uint8)])
    data = save(Image.fromarray(rgba), fmt, **kw)
    with pytest.raises(ImageError, match="alpha"):
        decode_image(data)
    out = decode_image(data, drop_alpha=True)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(out.pixels, rgb)


def test_gray_alpha_refused_then_dropped_to_gray():
    gray = gray_array()
    la = Image.merge("LA", [Image.fromarray(gray), Image.new("L", (32, 24), 9)])
    data = save(la, "PNG")
    with pytest.raises(ImageError, match=r"alpha channel \(LA\)"):
        decode_image(data)
    out = decode_image(data, drop_alpha=True)
    assert out.mode == "L" and out.pixels.shape == (24, 32, 1)
    np.testing.assert_array_equal(out.pixels[:, :, 0], gray)


@pytest.mark.parametrize(("mode", "key"), [("RGB", (0, 0, 0)), ("L", 0)])
def test_colour_key_transparency_counts_as_alpha(mode, key):
    data = save(Image.new(mode, (4, 3), key), "PNG", transparency=key)
    with pytest.raises(ImageError, match="transparent colour key"):
        decode_image(data)
    out = decode_image(data, drop_alpha=True)
    assert out.mode == mode and not out.pixels.any()


def test_16bit_png_gray_scaled_not_clipped():
    values = np.array(
        [[0, 1, 128, 129, 257, 32767, 32768], [385, 386, 65279, 65534, 65535, 1000, 50000]], dtype=np.uint16
    )
    out = decode_image(png16_gray(values))
    assert out.mode == "L" and out.pixels.shape == (2, 7, 1)
    got = out.pixels[:, :, 0]
    assert got[1, 4] == 255 and got[0, 4] == 1 and got[0, 6] == 128  # 65535, 257, 32768
    assert got[0, 0] == 0 and got[0, 1] == 0
    expected = np.vectorize(expected_16_to_8)(values)
    np.testing.assert_array_equal(got, expected)


def test_16bit_scaling_is_exact_for_every_value():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    got = decode_image(png16_gray(values)).pixels[:, :, 0].astype(int).reshape(-1)
    v = np.arange(65536)
    # round(v * 255 / 65535) == round(v / 257); no ties since 257 is odd.
    np.testing.assert_array_equal(got, (2 * v + 257) // 514)
    assert all(got[i] == expected_16_to_8(i) for i in range(0, 65536, 97))


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_tiff_gray_scaled(mode):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    img = Image.frombytes(mode, (4, 1), values.astype("<u2" if mode == "I;16" else ">u2").tobytes())
    out = decode_image(save(img, "TIFF"))
    assert out.mode == "L"
    np.testing.assert_array_equal(out.pixels[0, :, 0], [0, 1, 128, 255])


def test_mode_i_from_16bit_source_scaled():
    # Older Pillow opens 16-bit PNGs as mode "I"; exercise that path directly.
    img = Image.fromarray(np.array([[0, 257, 32768, 65535]], dtype=np.int32))
    assert img.mode == "I"
    arr, mode = imageio._to_array(img, "PNG", drop_alpha=False)
    assert mode == "L"
    np.testing.assert_array_equal(arr, [[0, 1, 128, 255]])


def test_32bit_int_tiff_refused():
    data = save(Image.fromarray(np.array([[0, 70000]], dtype=np.int32)), "TIFF")
    with pytest.raises(ImageError, match="32-bit signed integer"):
        decode_image(data)


def test_float_tiff_refused():
    data = save(Image.fromarray(np.array([[0.0, 0.5]], dtype=np.float32)), "TIFF")
    with pytest.raises(ImageError, match="floating-point"):
        decode_image(data)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # pure red in naive CMYK
    data = save(cmyk, "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "CMYK"
    out = decode_image(data)
    assert out.mode == "RGB" and out.pixels.shape == (8, 16, 3)
    r, g, b = out.pixels.reshape(-1, 3).mean(axis=0)
    assert r > 240 and g < 15 and b < 15


@pytest.mark.parametrize("mode", ["CMYK", "LAB", "YCbCr"])
def test_other_colour_spaces_in_tiff_become_rgb(mode):
    src = Image.fromarray(smooth_rgb(8, 8))
    img = src.convert(mode)
    out = decode_image(save(img, "TIFF"))
    assert out.mode == "RGB"
    np.testing.assert_array_equal(out.pixels, np.asarray(img.convert("RGB")))


# ---------------------------------------------------------------------------- EXIF orientation
def quadrant_image(w: int = 40, h: int = 20) -> np.ndarray:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = (255, 0, 0)
    arr[: h // 2, w // 2 :] = (0, 255, 0)
    arr[h // 2 :, : w // 2] = (0, 0, 255)
    arr[h // 2 :, w // 2 :] = (255, 255, 255)
    return arr


def with_orientation(arr: np.ndarray, fmt: str, orientation: int, **kw) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(Image.fromarray(arr), fmt, exif=exif, **kw)


def test_jpeg_exif_orientation_6_rotates_clockwise():
    data = with_orientation(quadrant_image(), "JPEG", 6, quality=95)
    out = decode_image(data)
    # 40 wide x 20 high on disk -> 20 wide x 40 high displayed.
    assert (out.width, out.height) == (20, 40)
    # Rotated 90 degrees clockwise: the top-left (red) quadrant moves to the top-right.
    px = out.pixels.astype(int)
    assert np.abs(px[5, 15] - [255, 0, 0]).max() < 30  # top-right: red
    assert np.abs(px[5, 5] - [0, 0, 255]).max() < 30  # top-left: blue
    assert np.abs(px[35, 15] - [0, 255, 0]).max() < 30  # bottom-right: green
    with Image.open(io.BytesIO(data)) as ref:
        expected = np.asarray(ImageOps.exif_transpose(ref))
    np.testing.assert_array_equal(out.pixels, expected)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("fmt", "kw"), [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {})])
def test_every_orientation_matches_exif_transpose(fmt, kw, orientation):
    arr = rgb_array(6, 10)
    data = with_orientation(arr, fmt, orientation, **kw)
    out = decode_image(data)
    with Image.open(io.BytesIO(data)) as ref:
        assert ref.getexif().get(0x0112, 1) == orientation  # the tag really was written
        expected = np.asarray(ImageOps.exif_transpose(ref))
    if orientation != 1 and fmt != "TIFF":  # and Pillow's own transpose applies it
        assert expected.shape[:2] != arr.shape[:2] or not np.array_equal(expected, arr)
    np.testing.assert_array_equal(out.pixels, expected)
    assert (out.height, out.width) == ((10, 6) if orientation >= 5 else (6, 10))


def test_orientation_pixel_limit_uses_same_product():
    data = with_orientation(rgb_array(6, 10), "PNG", 6)
    assert decode_image(data, max_pixels=60).pixels.shape == (10, 6, 3)
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=59)


def test_corrupt_exif_is_ignored():
    jpeg = save(Image.fromarray(smooth_rgb()), "JPEG")
    bad_exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + b"\x00" * 6
    segment = b"\xff\xe1" + struct.pack(">H", len(bad_exif) + 2) + bad_exif
    data = jpeg[:2] + segment + jpeg[2:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = decode_image(data)
    assert out.pixels.shape == (64, 48, 3)


# ---------------------------------------------------------------------------- multi-frame
def test_multipage_tiff_uses_first_page():
    frames = [Image.new("RGB", (5, 4), c) for c in [(255, 0, 0), (0, 255, 0)]]
    data = save(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    out = decode_image(data)
    assert out.source_format == "TIFF"
    assert (out.pixels == [255, 0, 0]).all()


def test_animated_webp_uses_first_frame():
    frames = [Image.new("RGB", (5, 4), c) for c in [(255, 0, 0), (0, 255, 0)]]
    data = save(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    with Image.open(io.BytesIO(data)) as check:
        if getattr(check, "n_frames", 1) < 2:
            pytest.skip("this Pillow cannot write animated WebP")
    out = decode_image(data)
    assert out.source_format == "WEBP"
    assert (out.pixels == [255, 0, 0]).all()


def test_mpo_reported_as_jpeg_first_frame():
    frames = [Image.new("RGB", (16, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = save(frames[0], "MPO", save_all=True, append_images=frames[1:])
    out = decode_image(data)
    assert out.source_format == "JPEG"
    assert out.pixels[..., 0].min() > 230 and out.pixels[..., 2].max() < 25


# ---------------------------------------------------------------------------- size limits
def test_huge_png_header_refused_without_decoding(monkeypatch):
    data = png_header_only(100_000, 100_000)

    def boom(*a, **k):
        raise AssertionError("must not get as far as Pillow")

    monkeypatch.setattr(Image, "open", boom)
    with pytest.raises(ImageTooLargeError, match="100000x100000"):
        decode_image(data)


@pytest.mark.parametrize(
    ("fmt", "kw"),
    [
        ("JPEG", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("WEBP", {"lossless": True}),
        ("PNG", {}),
    ],
)
def test_pixel_limit_checked_before_pixels_are_loaded(fmt, kw, monkeypatch):
    from PIL import WebPImagePlugin

    data = save(Image.fromarray(rgb_array(30, 40)), fmt, **kw)

    def no_load(self, *a, **k):
        raise AssertionError("pixels were decoded before the size check")

    for cls in (Image.Image, ImageFile.ImageFile, WebPImagePlugin.WebPImageFile):
        monkeypatch.setattr(cls, "load", no_load, raising=False)
    with pytest.raises(ImageTooLargeError, match="40x30"):
        decode_image(data, max_pixels=40 * 30 - 1)


def test_pixel_limit_is_inclusive():
    data = save(Image.fromarray(rgb_array(30, 40)), "PNG")
    assert decode_image(data, max_pixels=1200).width == 40
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=1199)


def test_pillow_decompression_bomb_error_maps_to_too_large():
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        pytest.skip("Pillow's bomb guard is disabled in this process")
    side = int((2 * limit) ** 0.5) + 2
    data = png_header_only(side, side, complete=True)
    with pytest.raises(ImageTooLargeError, match="decompression-bomb"):
        decode_image(data, max_pixels=10**12)


def test_pillow_decompression_bomb_warning_as_error_maps_to_too_large():
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        pytest.skip("Pillow's bomb guard is disabled in this process")
    side = int((1.5 * limit) ** 0.5)
    data = png_header_only(side, side, complete=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLargeError):
            decode_image(data, max_pixels=10**12)


def test_max_bytes():
    data = save(Image.fromarray(rgb_array()), "PNG")
    assert decode_image(data, max_bytes=len(data)).width == 32
    with pytest.raises(ImageTooLargeError, match="bytes"):
        decode_image(data, max_bytes=len(data) - 1)
    # checked first: even garbage over the limit is "too large", not "unrecognized"
    with pytest.raises(ImageTooLargeError):
        decode_image(b"x" * 100, max_bytes=10)


@pytest.mark.parametrize("kw", [{"max_pixels": 0}, {"max_pixels": -1}, {"max_bytes": 0}, {"max_pixels": 1.5}])
def test_bad_limits_are_value_errors(kw):
    with pytest.raises(ValueError):
        decode_image(save(Image.new("L", (1, 1)), "PNG"), **kw)


# ---------------------------------------------------------------------------- refusals
def test_empty():
    with pytest.raises(ImageError, match="^empty image data$"):
        decode_image(b"")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("GIF", save(Image.new("RGB", (4, 4)), "GIF")),
        ("ICO", save(Image.new("RGB", (16, 16)), "ICO")),
        ("PDF", save(Image.new("RGB", (4, 4)), "PDF")),
        ("PDF", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"),
        ("PNM", save(Image.new("RGB", (4, 4)), "PPM")),
        ("HEIF", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"),
        ("SVG", b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>"),
    ],
)
def test_known_other_formats_are_unsupported(name, data):
    with pytest.raises(UnsupportedImageFormatError, match=name) as info:
        decode_image(data)
    assert "supported formats: BMP, JPEG, PNG, TIFF, WEBP" in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        bytes(np.random.default_rng(7).integers(0, 256, 1000, dtype=np.uint8)),
        b"hello, world",
        b"\x00",
        b"\x00" * 4096,
    ],
)
def test_unrecognised_bytes_are_plain_image_errors(data):
    with pytest.raises(ImageError, match="unrecognized image data") as info:
        decode_image(data)
    assert type(info.value) is ImageError


@pytest.mark.parametrize(
    ("fmt", "kw"),
    [
        ("PNG", {}),
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("BMP", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("WEBP", {}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_truncated_files_raise_image_error(fmt, kw):
    # 48 px * 3 bytes is a multiple of 4, so a BMP has no row padding: every cut loses pixels
    # (a BMP missing only the final row's padding bytes still decodes, by design).
    data = save(Image.fromarray(rgb_array(40, 48)), fmt, **kw)
    for cut in sorted({1, 2, 8, 20, 40, len(data) // 4, len(data) // 2, len(data) - 13, len(data) - 2, len(data) - 1}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ImageError) as info:
                decode_image(data[:cut])
        assert "\n" not in str(info.value)
        assert "0x" not in str(info.value)  # no "<_io.BytesIO object at 0x...>" noise


def test_png_cut_after_last_idat_is_truncated():
    data = save(Image.fromarray(rgb_array()), "PNG")
    assert data.endswith(png_chunk(b"IEND", b""))
    with pytest.raises(ImageError, match="truncated PNG"):
        decode_image(data[:-12])  # pixels complete, IEND missing: Pillow alone would accept it


def test_png_bad_idat_crc():
    data = bytearray(save(Image.fromarray(rgb_array()), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    with pytest.raises(ImageError, match="checksum"):
        decode_image(bytes(data))


def test_global_pillow_state_untouched():
    before = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
    decode_image(save(Image.fromarray(rgb_array()), "JPEG"))
    with pytest.raises(ImageError):
        decode_image(save(Image.fromarray(rgb_array()), "JPEG")[:-40])
    with pytest.raises(ImageTooLargeError):
        decode_image(png_header_only(100_000, 100_000))
    assert (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS) == before


# ---------------------------------------------------------------------------- read_image
def test_read_image(tmp_path):
    arr = rgb_array()
    p = tmp_path / "a.png"
    p.write_bytes(save(Image.fromarray(arr), "PNG"))
    np.testing.assert_array_equal(read_image(p).pixels, arr)
    np.testing.assert_array_equal(read_image(str(p), max_bytes=10**6).pixels, arr)
    with pytest.raises(ImageTooLargeError, match="a.png"):
        read_image(p, max_bytes=10)
    with pytest.raises(ImageTooLargeError, match="a.png"):
        read_image(p, max_pixels=10)


def test_read_image_os_errors_become_image_errors(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="nope.png") as info:
        read_image(missing)
    assert type(info.value) is ImageError
    with pytest.raises(ImageError, match="cannot read image file"):
        read_image(tmp_path)  # a directory
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(ImageError, match="bad.jpg: cannot decode JPEG"):
        read_image(bad)
    gif = tmp_path / "x.gif"
    gif.write_bytes(save(Image.new("RGB", (2, 2)), "GIF"))
    with pytest.raises(UnsupportedImageFormatError, match="x.gif"):
        read_image(gif)


# ---------------------------------------------------------------------------- encode / write
@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (5, 7, 3), (1, 1), (1, 1, 3)])
def test_encode_png_round_trip(shape):
    arr = np.random.default_rng(11).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(arr)
    with Image.open(io.BytesIO(data)) as check:
        assert check.format == "PNG" and check.mode == ("RGB" if arr.ndim == 3 and shape[2] == 3 else "L")
    out = decode_image(data)
    np.testing.assert_array_equal(out.pixels, arr.reshape(shape[0], shape[1], -1))


def test_encode_png_accepts_non_contiguous_views():
    arr = rgb_array(20, 30)
    view = arr[::2, ::-3]
    np.testing.assert_array_equal(decode_image(encode_png(view)).pixels, view)
    np.testing.assert_array_equal(decode_image(encode_png(arr[..., 1:2])).pixels, arr[..., 1:2])


def test_encode_decoded_image_round_trip():
    d = decode_image(save(Image.fromarray(rgb_array()), "BMP"))
    np.testing.assert_array_equal(decode_image(encode_png(d.pixels)).pixels, d.pixels)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4), np.uint16),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((4,), np.uint8),
        np.zeros((2, 4, 4, 3), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
        [[1, 2], [3, 4]],
    ],
)
def test_encode_png_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        encode_png(bad)


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_write_png_writes_and_overwrites_atomically(tmp_path):
    target = tmp_path / "out.png"
    a, b = rgb_array(seed=1), gray_array(seed=2)
    write_png(target, a)
    np.testing.assert_array_equal(read_image(target).pixels, a)
    write_png(str(target), b)
    np.testing.assert_array_equal(read_image(target).pixels[:, :, 0], b)
    assert _leftovers(tmp_path, {"out.png"}) == []


def test_write_png_new_file_permissions_follow_umask(tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX permissions only")
    old = os.umask(0o027)
    try:
        write_png(tmp_path / "p.png", rgb_array())
    finally:
        os.umask(old)
    assert (tmp_path / "p.png").stat().st_mode & 0o777 == 0o640


def test_write_png_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    write_png(target, rgb_array(seed=1))
    before = target.read_bytes()

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imageio.os, "replace", failing_replace)
    with pytest.raises(ImageError, match="cannot write PNG file .*out.png: No space left"):
        write_png(target, rgb_array(seed=2))
    assert target.read_bytes() == before
    assert _leftovers(tmp_path, {"out.png"}) == []


def test_write_png_interrupted_mid_write_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.png"

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(imageio.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_png(target, rgb_array())
    assert _leftovers(tmp_path, set()) == []


def test_write_png_bad_pixels_touch_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_png(tmp_path / "x.png", np.zeros((2, 2), np.float64))
    assert _leftovers(tmp_path, set()) == []


def test_write_png_missing_directory_is_image_error(tmp_path):
    with pytest.raises(ImageError, match="cannot write PNG file"):
        write_png(tmp_path / "missing" / "x.png", rgb_array())


def test_write_png_onto_directory_is_image_error(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ImageError):
        write_png(tmp_path / "d", rgb_array())
    assert _leftovers(tmp_path, {"d"}) == []


# ---------------------------------------------------------------------------- DecodedImage
def test_decoded_image_validates_and_exposes_size():
    img = DecodedImage(np.zeros((3, 5, 1), np.uint8), "L", "PNG")
    assert (img.width, img.height, img.channels) == (5, 3, 1)
    with pytest.raises(ValueError):
        DecodedImage(np.zeros((3, 5, 3), np.uint8), "L", "PNG")
    with pytest.raises(ValueError):
        DecodedImage(np.zeros((3, 5), np.uint8), "L", "PNG")
    with pytest.raises(ValueError):
        DecodedImage(np.zeros((3, 5, 3), np.float32), "RGB", "PNG")
    with pytest.raises(ValueError):
        DecodedImage(np.zeros((5, 3, 3), np.uint8).transpose(1, 0, 2), "RGB", "PNG")
    with pytest.raises(AttributeError):
        img.mode = "RGB"  # type: ignore[misc]


# ---------------------------------------------------------------------------- fuzzing
def _fuzz_base(fmt: str) -> bytes:
    arr = rgb_array(9, 12, seed=42)
    img = Image.fromarray(arr)
    if fmt == "PNG":
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "fuzz")
        return save(img, "PNG", pnginfo=info)
    if fmt == "JPEG":
        return with_orientation(arr, "JPEG", 6, quality=80)
    if fmt == "WEBP":
        return save(img, "WEBP", lossless=True)
    return save(img, fmt)


FUZZ_BASES = {fmt: _fuzz_base(fmt) for fmt in ("PNG", "JPEG", "WEBP", "BMP", "TIFF")}


@st.composite
def mutations(draw, base: bytes) -> bytes:
    data = bytearray(base)
    if draw(st.booleans()):  # truncate
        data = data[: draw(st.integers(0, len(data)))]
    n_ops = draw(st.integers(0 if len(data) < len(base) else 1, 6))
    for _ in range(n_ops):
        if not data:
            break
        op = draw(st.sampled_from(["set", "xor", "delete", "insert", "duplicate"]))
        i = draw(st.integers(0, len(data) - 1))
        if op == "set":
            data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFE, 0xFF]) | st.integers(0, 255))
        elif op == "xor":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 16))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[i:i] = data[i : i + draw(st.integers(1, 32))]
    return bytes(data)


def _decode_or_image_error(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = decode_image(data, max_pixels=4096, drop_alpha=bool(len(data) % 2))
        except ImageError as exc:
            msg = str(exc)
            assert msg and "\n" not in msg
            return
    assert_valid(out)
    assert out.width * out.height <= 4096


FUZZ_SETTINGS = settings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every complete chunk's CRC so that mutations reach Pillow's PNG decoder
    instead of stopping at our checksum check."""
    out = bytearray(data)
    pos = 8
    while pos + 12 <= len(out):
        length = struct.unpack(">I", out[pos : pos + 4])[0]
        end = pos + 8 + length
        if end + 4 > len(out):
            break
        out[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(out[pos + 4 : end])) & 0xFFFFFFFF)
        pos = end + 4
    return bytes(out)


@FUZZ_SETTINGS
@given(mutations(FUZZ_BASES["PNG"]), st.booleans())
def test_fuzz_png(data, fix_crcs):
    _decode_or_image_error(fix_png_crcs(data) if fix_crcs else data)


@FUZZ_SETTINGS
@given(mutations(FUZZ_BASES["JPEG"]))
def test_fuzz_jpeg(data):
    _decode_or_image_error(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from(["WEBP", "BMP", "TIFF"]).flatmap(lambda f: mutations(FUZZ_BASES[f])))
def test_fuzz_other_formats(data):
    _decode_or_image_error(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_random_bytes(data):
    _decode_or_image_error(data)


def test_all_failures_are_tcm_errors():
    assert issubclass(UnsupportedImageFormatError, ImageError)
    assert issubclass(ImageTooLargeError, ImageError)
    assert issubclass(ImageError, TcmError)


# ------------------------------------------------------------------------------------
# Shapes the codec cannot take within the limit (tcm_serve/codec/geometry.py)


def test_thin_strips_are_refused_before_decoding():
    """A 40,000,000 x 1 PNG is within a 40 MP limit but pads to a 10-gigapixel tensor; a
    side over 65535 cannot be stored in a .tcm header. Both are refused from the header,
    before any pixel is decoded (the IDAT here is empty)."""
    with pytest.raises(ImageTooLargeError, match="at most 65535"):
        decode_image(png_header_only(40_000_000, 1, complete=True), max_pixels=40_000_000)
    with pytest.raises(ImageTooLargeError, match="at most 65535"):
        decode_image(png_header_only(1, 70_000, complete=True))
    with pytest.raises(ImageTooLargeError, match=r"pads to 65536x256 \(16,777,216 pixels\)"):
        decode_image(png_header_only(65535, 32, complete=True), max_pixels=2_097_152)
    # the same strip through Pillow's header (not the hand-written PNG check)
    strip = save(Image.new("L", (60_000, 2)), "BMP")
    with pytest.raises(ImageTooLargeError, match="pads to"):
        decode_image(strip, max_pixels=200_000)
    # an ordinary image of exactly max_pixels still decodes
    img = decode_image(save(Image.fromarray(rgb_array(130, 200)), "PNG"), max_pixels=200 * 130)
    assert (img.height, img.width) == (130, 200)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**9), st.floats(0.0, 1.0))
def test_every_image_no_thinner_than_a_square_fits_the_padded_bound(max_pixels, share):
    """Any w x h <= max_pixels whose sides sum to at most a square's passes the guard."""
    from math import isqrt

    from tcm_serve.codec.geometry import MAX_SIDE, check_image_size

    w = max(1, min(MAX_SIDE, int(isqrt(max_pixels) * (0.5 + share))))
    h = max(1, min(MAX_SIDE, max_pixels // w, 2 * isqrt(max_pixels) - w))
    assert w * h <= max_pixels
    check_image_size(h, w, max_pixels)
