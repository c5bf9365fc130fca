"""Tests for the .tcm container (tcm_serve/codec/container.py, spec in docs/format.md).

The byte layout is re-declared here independently of the module (``SPEC``), straight from
the table in docs/format.md, so a change to the module's struct that is not also a change
to the spec fails these tests.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import tracemalloc
import zlib
from array import array
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcm_serve.codec import container as C
from tcm_serve.codec.container import (
    BACKENDS,
    FORMAT_VERSION,
    MAGIC,
    PORTABLE,
    PORTABLE_METHODS,
    SUPPORTED_VERSIONS,
    TcmFile,
    TcmHeader,
    header_fields,
    pack,
    unpack,
)
from tcm_serve.codec.geometry import Geometry
from tcm_serve.errors import FormatError, UnsupportedVersionError

# --------------------------------------------------------------------------------------
# The spec's byte table (docs/format.md), independent of the implementation
# --------------------------------------------------------------------------------------
SPEC = [  # (field, offset, struct code)
    ("magic", 0, "4s"),
    ("version", 4, "B"),
    ("flags", 5, "B"),
    ("quality", 6, "B"),
    ("mode", 7, "B"),
    ("width", 8, "H"),
    ("height", 10, "H"),
    ("zH", 12, "H"),
    ("zW", 14, "H"),
    ("pad_left", 16, "B"),
    ("pad_right", 17, "B"),
    ("pad_top", 18, "B"),
    ("pad_bottom", 19, "B"),
    ("backend", 20, "B"),
    ("reserved", 21, "3s"),
    ("config_hash", 24, "8s"),
    ("weights_hash", 32, "8s"),
    ("symbols_crc32", 40, "I"),
    ("z_len", 44, "I"),
    ("y_len", 48, "I"),
]
SPEC_HEADER_SIZE = 52
#: Version 2 (portable) adds one field after the version-1 header.
SPEC_V2 = SPEC + [("hints_len", 52, "I")]
SPEC_V2_HEADER_SIZE = 56
MODE_CODES = {"L": 1, "RGB": 2}
BACKEND_CODES = {"torch-cpu": 1, "torch-cuda": 2, "onnx-cpu": 3, "onnx-cuda": 4}
PORTABLE_CODES = {"portable-f64": 1}

Z0 = b"\x11" * 8
Y0 = b"\x22" * 12
BASE_FIELDS = dict(
    magic=MAGIC,
    version=1,
    flags=0,
    quality=3,
    mode=2,
    width=100,
    height=70,
    zH=4,
    zW=4,
    pad_left=78,
    pad_right=78,
    pad_top=93,
    pad_bottom=93,
    backend=1,
    reserved=b"\0\0\0",
    config_hash=bytes(range(8)),
    weights_hash=bytes(range(0xA0, 0xA8)),
    symbols_crc32=0xDEADBEEF,
)
BASE_HEADER = TcmHeader(
    quality=3,
    config_hash=bytes(range(8)),
    weights_hash=bytes(range(0xA0, 0xA8)),
    width=100,
    height=70,
    mode="RGB",
    pad=(78, 78, 93, 93),
    z_shape=(4, 4),
    backend="torch-cpu",
    symbols_crc32=0xDEADBEEF,
)
BASE_FILE = TcmFile(BASE_HEADER, Z0, Y0)
# Locks the v1 byte format; the same vector is printed in docs/format.md.
GOLDEN_HEX = (
    "8954434d0100030264004600040004004e4e5d5d010000000001020304050607"
    "a0a1a2a3a4a5a6a7efbeadde080000000c000000111111111111111122222222"
    "2222222222222222c3644ae0"
)


# Locks the v2 byte format (the same header with the portable method and one hint byte
# 00: no hints); also printed in docs/format.md.
BASE_FILE_V2 = TcmFile(replace(BASE_HEADER, backend=PORTABLE), Z0, Y0, b"\x00")
GOLDEN_HEX_V2 = (
    "8954434d0200030264004600040004004e4e5d5d010000000001020304050607"
    "a0a1a2a3a4a5a6a7efbeadde080000000c000000010000001111111111111111"
    "222222222222222222222222002c07962b"
)


def raw_blob(z: bytes = Z0, y: bytes = Y0, crc: int | None = None, hints: bytes | None = None, **overrides) -> bytes:
    """Build a blob field by field from SPEC (SPEC_V2 when ``hints`` is given: a version-2
    blob), bypassing all validation; CRC fixed up."""
    v2 = hints is not None
    vals = dict(BASE_FIELDS, z_len=len(z), y_len=len(y), **({"version": 2, "hints_len": len(hints)} if v2 else {}))
    unknown = set(overrides) - set(vals)
    assert not unknown, unknown
    vals.update(overrides)
    spec = SPEC_V2 if v2 else SPEC
    buf = bytearray(SPEC_V2_HEADER_SIZE if v2 else SPEC_HEADER_SIZE)
    for name, off, code in spec:
        struct.pack_into("<" + code, buf, off, vals[name])
    body = bytes(buf) + z + y + (hints or b"")
    return body + struct.pack("<I", zlib.crc32(body) if crc is None else crc)


def fix_crc(blob: bytes) -> bytes:
    body = blob[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def expect(exc_type, data, *fragments):
    """unpack(data) raises exactly exc_type (not a subclass) with a one-line message."""
    with pytest.raises(FormatError) as info:
        unpack(data)
    assert type(info.value) is exc_type, (type(info.value), str(info.value))
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------
def _canonical_padding(w: int, h: int) -> tuple[int, int, int, int]:
    return Geometry.for_image(h, w).pad


def _pad_for(size: int, k: int) -> tuple[int, int]:
    total = (-size) % 64 + 64 * k  # k in 0..3 keeps total < 256
    return total // 2, total - total // 2


@st.composite
def valid_headers(draw, backends=BACKENDS + PORTABLE_METHODS) -> TcmHeader:
    dim = st.one_of(st.integers(1, 300), st.integers(1, 65535))
    w, h = draw(dim), draw(dim)
    if draw(st.booleans()):
        pad = _canonical_padding(w, h)
    else:
        pad = _pad_for(w, draw(st.integers(0, 3))) + _pad_for(h, draw(st.integers(0, 3)))
    return TcmHeader(
        quality=draw(st.integers(1, 255)),
        config_hash=draw(st.binary(min_size=8, max_size=8)),
        weights_hash=draw(st.binary(min_size=8, max_size=8)),
        width=w,
        height=h,
        mode=draw(st.sampled_from(["L", "RGB"])),
        pad=pad,
        z_shape=((h + pad[2] + pad[3]) // 64, (w + pad[0] + pad[1]) // 64),
        backend=draw(st.sampled_from(backends)),
        symbols_crc32=draw(st.integers(0, 2**32 - 1)),
    )


streams = st.integers(2, 24).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n))


@st.composite
def valid_files(draw) -> TcmFile:
    """Version-1 and version-2 files (the container does not parse the hints' contents)."""
    h = draw(valid_headers())
    hints = draw(st.binary(min_size=1, max_size=40)) if h.version == 2 else b""
    return TcmFile(h, draw(streams), draw(streams), hints)


valid_files = valid_files()


def check_outcome(original: bytes, mutated: bytes) -> None:
    """The mutation-test oracle: FormatError (one-line message), or a canonical parse."""
    try:
        got = unpack(mutated)
    except FormatError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg
        return
    # unpack succeeded: the encoding is canonical, so the bytes must re-pack exactly,
    # and the result equals the original's parse only if the bytes are identical.
    assert pack(got) == mutated
    assert (got == unpack(original)) == (mutated == original)


# --------------------------------------------------------------------------------------
# Layout and round trip
# --------------------------------------------------------------------------------------
def test_constants_match_spec():
    assert MAGIC == b"\x89TCM" and len(MAGIC) == 4
    assert FORMAT_VERSION == 2 and SUPPORTED_VERSIONS == (1, 2)
    assert BACKENDS == ("torch-cpu", "torch-cuda", "onnx-cpu", "onnx-cuda")
    assert PORTABLE_METHODS == ("portable-f64",) == (PORTABLE,)
    assert C.HEADER_SIZE == SPEC_HEADER_SIZE == 52
    assert C.HEADER_SIZES == {1: SPEC_HEADER_SIZE, 2: SPEC_V2_HEADER_SIZE}
    assert C.TRAILER_SIZE == 4
    assert C.MIN_FILE_SIZE == 72
    # SPEC and SPEC_V2 cover their headers contiguously.
    for spec, size in ((SPEC, SPEC_HEADER_SIZE), (SPEC_V2, SPEC_V2_HEADER_SIZE)):
        end = 0
        for _name, off, code in spec:
            assert off == end
            end += struct.calcsize("<" + code)
        assert end == size


def test_golden_vector():
    blob = pack(BASE_FILE)
    assert blob.hex() == GOLDEN_HEX
    assert blob == raw_blob()  # implementation == independent spec table
    assert unpack(bytes.fromhex(GOLDEN_HEX)) == BASE_FILE


def test_golden_vector_v2():
    blob = pack(BASE_FILE_V2)
    assert blob.hex() == GOLDEN_HEX_V2
    assert blob == raw_blob(hints=b"\x00", backend=1)  # implementation == independent spec table
    assert unpack(bytes.fromhex(GOLDEN_HEX_V2)) == BASE_FILE_V2
    assert BASE_FILE_V2.header.version == 2 and BASE_FILE.header.version == 1


def test_spec_document_in_sync():
    """docs/format.md's struct format, byte table and test vector match the code."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "format.md").read_text()
    assert '"<4sBBBBHHHHBBBBB3s8s8sIII"' in doc and '"<4sBBBBHHHHBBBBB3s8s8sIIII"' in doc
    assert struct.calcsize("<4sBBBBHHHHBBBBB3s8s8sIII") == SPEC_HEADER_SIZE
    assert struct.calcsize("<4sBBBBHHHHBBBBB3s8s8sIIII") == SPEC_V2_HEADER_SIZE
    rows = re.findall(r"^\| (\d+)\s+\| (\d+)\s+\| \w+\s+\| `(\w+)`", doc, re.M)
    table = [(name, int(off), int(size)) for off, size, name in rows]
    assert table == [(name, off, struct.calcsize("<" + code)) for name, off, code in SPEC_V2]
    # Two hex dumps, each in its own fenced block: version 1, then version 2.
    blocks = re.findall(r"```\n((?:[0-9a-f]{4}  .*\n)+)```", doc)
    dumps = [bytes.fromhex("".join(line[6:] for line in b.splitlines()).replace(" ", "")) for b in blocks]
    assert dumps == [pack(BASE_FILE), pack(BASE_FILE_V2)]


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_codes_match_spec(mode, backend):
    f = TcmFile(replace(BASE_HEADER, mode=mode, backend=backend), Z0, Y0)
    blob = pack(f)
    assert blob == raw_blob(mode=MODE_CODES[mode], backend=BACKEND_CODES[backend])
    assert unpack(blob) == f


@settings(max_examples=400, deadline=None)
@given(valid_files)
def test_round_trip(f):
    blob = pack(f)
    assert isinstance(blob, bytes)
    assert len(blob) == C.HEADER_SIZES[f.header.version] + len(f.z_string) + len(f.y_string) + len(f.hints) + 4
    assert blob[:4] == MAGIC and blob[4] == f.header.version
    assert struct.unpack("<I", blob[-4:])[0] == zlib.crc32(blob[:-4])
    g = unpack(blob)
    assert g == f
    assert pack(g) == blob
    # other buffer types parse identically
    assert unpack(bytearray(blob)) == f
    assert unpack(memoryview(blob)) == f


@settings(max_examples=100, deadline=None)
@given(valid_files)
def test_header_fields_json(f):
    d = header_fields(f)
    assert json.loads(json.dumps(d)) == d
    h = f.header
    assert d["format_version"] == h.version and d["flags"] == 0
    assert d["hints_len"] == len(f.hints)
    assert d["quality"] == h.quality
    assert d["config_hash"] == h.config_hash.hex()
    assert d["weights_hash"] == h.weights_hash.hex()
    assert (d["width"], d["height"], d["mode"], d["backend"]) == (h.width, h.height, h.mode, h.backend)
    assert tuple(d["pad"][k] for k in ("left", "right", "top", "bottom")) == h.pad
    assert tuple(d["z_shape"]) == h.z_shape
    assert d["padded_width"] == d["z_shape"][1] * 64
    assert d["padded_height"] == d["z_shape"][0] * 64
    assert d["symbols_crc32"] == h.symbols_crc32
    assert int(d["symbols_crc32_hex"], 16) == h.symbols_crc32
    assert (d["z_len"], d["y_len"]) == (len(f.z_string), len(f.y_string))
    assert d["z_string_sha256"] == hashlib.sha256(f.z_string).hexdigest()
    assert d["y_string_sha256"] == hashlib.sha256(f.y_string).hexdigest()
    assert d["file_size"] == len(pack(f))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 65535), st.integers(1, 65535))
def test_codec_padding_satisfies_the_reader_rules(w, h):
    """The writer's padding (tcm_serve.codec.padding) always passes the container's checks."""
    left, right, top, bottom = _canonical_padding(w, h)
    hdr = replace(
        BASE_HEADER,
        width=w,
        height=h,
        pad=(left, right, top, bottom),
        z_shape=((h + top + bottom) // 64, (w + left + right) // 64),
    )
    hdr.validate()


# --------------------------------------------------------------------------------------
# Every unpack validation rule, with the exact exception type
# --------------------------------------------------------------------------------------
def test_empty():
    expect(FormatError, b"", "empty input")


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_magic_prefix_is_truncation(n):
    expect(FormatError, MAGIC[:n], "truncated", f"{n} bytes")


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 80, "PNG"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\0" * 80, "JPEG"),
        (b"GIF89a" + b"\0" * 80, "GIF"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\0" * 80, "WebP"),
        (b"BM" + b"\0" * 80, "BMP"),
        (b"II*\x00" + b"\0" * 80, "TIFF"),
        (b"PK\x03\x04" + b"\0" * 80, "ZIP"),
        (b"\xef\xbf\xbdTCM\x01" + b"\0" * 80, "U+FFFD"),
        (b"\xc2\x89TCM\x01" + b"\0" * 80, "Latin-1"),
        (b"\x09TCM\x01" + b"\0" * 80, "first byte is 0x09 instead of 0x89"),
        (b"iVRDTQEAAwJkAEYA", "base64"),
        (b"hello world" * 10, "found 68 65 6c 6c"),
        (b"\x00", "found 00"),
        (b"TCM", "found 54 43 4d"),
    ],
)
def test_bad_magic(data, fragment):
    msg = expect(FormatError, data, fragment)
    assert "89 54 43 4d" in msg or "binary mode" in msg or "base64" in msg


def test_base64_hint_matches_real_base64():
    import base64

    expect(FormatError, base64.b64encode(pack(BASE_FILE)), "base64")


@pytest.mark.parametrize("version", [0, 3, 255])
def test_unsupported_version(version):
    blob = raw_blob(version=version)
    expect(UnsupportedVersionError, blob, f"version {version}", "reads versions 1, 2")
    # the version is checked before the header length: a short future file says so too
    expect(UnsupportedVersionError, blob[:5], f"version {version}")


def test_magic_only_is_truncated():
    expect(FormatError, MAGIC, "truncated", "magic only")


@pytest.mark.parametrize("n", [5, 6, 20, 51, 52, 55])
def test_truncated_header(n):
    expect(FormatError, pack(BASE_FILE)[:n], "truncated", "56 bytes", f"got {n}")


@pytest.mark.parametrize("cut", [1, 4, 5, 12, 20, 23])
def test_truncated_streams(cut):
    blob = pack(BASE_FILE)
    expect(FormatError, blob[: len(blob) - cut], "truncated", f"got {len(blob) - cut}")


def test_truncated_at_every_length():
    blob = pack(BASE_FILE)
    for n in range(len(blob)):
        with pytest.raises(FormatError) as info:
            unpack(blob[:n])
        assert type(info.value) is FormatError
        assert "truncated" in str(info.value) or "empty" in str(info.value)


@pytest.mark.parametrize("extra", [b"\0", b"garbage", b"\0" * 4, pack(BASE_FILE)])
def test_trailing_garbage(extra):
    blob = pack(BASE_FILE)
    expect(FormatError, blob + extra, "length mismatch", f"{len(extra)} unexpected trailing byte")


def test_length_field_inconsistent():
    # z_len too small by 4 while y_len is unchanged: 4 bytes left over
    expect(FormatError, raw_blob(z_len=4), "length mismatch")
    # y_len too large: claims more than there is
    expect(FormatError, raw_blob(y_len=16), "truncated")


def test_crc_mismatch_payload():
    blob = bytearray(pack(BASE_FILE))
    blob[60] ^= 0x01
    stored = struct.unpack("<I", bytes(blob[-4:]))[0]
    computed = zlib.crc32(bytes(blob[:-4]))
    expect(FormatError, bytes(blob), "CRC32 mismatch", f"stored 0x{stored:08x}", f"computed 0x{computed:08x}")


def test_crc_mismatch_trailer():
    blob = bytearray(pack(BASE_FILE))
    blob[-1] ^= 0x80
    expect(FormatError, bytes(blob), "CRC32 mismatch")


def test_crc_checked_before_semantics():
    # A corrupt flags byte *without* a fixed-up CRC reads as corruption, not as "flags".
    blob = bytearray(pack(BASE_FILE))
    blob[5] = 0x40
    expect(FormatError, bytes(blob), "CRC32 mismatch")
    blob = bytearray(pack(BASE_FILE))
    blob[7] = 9  # mode code
    expect(FormatError, bytes(blob), "CRC32 mismatch")


# Each rule below uses a blob whose CRC is correct, so the semantic check itself fires.
SEMANTIC_CASES = [
    ("flags", dict(flags=1), "flags"),
    ("flags_high", dict(flags=0x80), "flags byte is 0x80"),
    ("reserved0", dict(reserved=b"\x01\0\0"), "reserved bytes"),
    ("reserved2", dict(reserved=b"\0\0\xff"), "reserved bytes"),
    ("mode0", dict(mode=0), "unknown mode code 0"),
    ("mode3", dict(mode=3), "unknown mode code 3"),
    ("mode255", dict(mode=255), "unknown mode code 255"),
    ("backend0", dict(backend=0), "unknown backend code 0"),
    ("backend5", dict(backend=5), "unknown backend code 5"),
    ("quality0", dict(quality=0), "quality 0"),
    ("width0", dict(width=0), "width 0"),
    ("height0", dict(height=0), "height 0"),
    ("zH0", dict(zH=0), "zH 0"),
    ("zW0", dict(zW=0), "zW 0"),
    ("zW_inconsistent", dict(zW=5), "padded width"),
    ("zH_inconsistent", dict(zH=3), "padded height"),
    ("width_inconsistent", dict(width=101), "padded width"),
    ("height_inconsistent", dict(height=64), "padded height"),
    # 64 + 128 + 128 = 320 = 5 * 64 is consistent, but 256 px of padding is too much
    ("pad_w_total", dict(width=64, pad_left=128, pad_right=128, zW=5), "must be less than 256"),
    ("pad_h_total", dict(height=64, pad_top=128, pad_bottom=128, zH=5), "must be less than 256"),
    ("pad_left_split", dict(pad_left=79, pad_right=77), "split floor/rest"),
    ("pad_left_ceil", dict(width=99, pad_left=79, pad_right=78), "split floor/rest"),
    ("pad_top_split", dict(pad_top=0, pad_bottom=186), "split floor/rest"),
    ("pad_ceil_split", dict(width=255, pad_left=1, pad_right=0), "split floor/rest"),
]


@pytest.mark.parametrize("overrides, fragment", [c[1:] for c in SEMANTIC_CASES], ids=[c[0] for c in SEMANTIC_CASES])
def test_semantic_rule(overrides, fragment):
    expect(FormatError, raw_blob(**overrides), fragment)


@pytest.mark.parametrize(
    "z, y, fragment",
    [
        (b"\x11" * 4, Y0, "z_string is 4 bytes"),
        (b"", Y0, "z_string is 0 bytes"),
        (b"\x11" * 10, Y0, "not a multiple of 4"),
        (Z0, b"\x22" * 9, "y_string is 9 bytes, not a multiple of 4"),
        (Z0, b"", "y_string is 0 bytes"),
        (Z0, b"\x22" * 4, "at least 8"),
    ],
)
def test_stream_length_rules(z, y, fragment):
    expect(FormatError, raw_blob(z=z, y=y), fragment)


def test_valid_edge_values_accepted():
    # largest image, quality 255, the high backend/mode codes, zero symbols_crc32
    w = h = 65535
    blob = raw_blob(
        quality=255,
        width=w,
        height=h,
        pad_left=0,
        pad_right=1,
        pad_top=0,
        pad_bottom=1,
        zH=1024,
        zW=1024,
        mode=1,
        backend=4,
        symbols_crc32=0,
    )
    f = unpack(blob)
    assert f.header.mode == "L" and f.header.backend == "onnx-cuda"
    assert f.header.z_shape == (1024, 1024) and pack(f) == blob
    # pad total 255 (the maximum) is fine
    f = unpack(raw_blob(width=1, pad_left=127, pad_right=128, zW=4))
    assert f.header.pad[:2] == (127, 128)


@pytest.mark.parametrize("bad", ["text", 42, None, [1, 2, 3], 3.0])
def test_non_bytes_input(bad):
    expect(FormatError, bad, "expected bytes")


def test_buffer_inputs():
    blob = pack(BASE_FILE)
    assert unpack(memoryview(array("B", blob))) == BASE_FILE
    words = array("I")
    words.frombytes(blob)  # 76 bytes = 19 words: a memoryview of format "I"
    assert unpack(memoryview(words)) == BASE_FILE
    # non-contiguous views cannot be cast: FormatError, not TypeError
    expect(FormatError, memoryview(blob)[::2])


def test_huge_declared_length_fails_fast_without_allocating():
    blob = raw_blob(z_len=0xFFFFFFFC, y_len=0xFFFFFFFC)
    assert len(blob) == 76
    tracemalloc.start()
    try:
        for _ in range(100):
            with pytest.raises(FormatError) as info:
                unpack(blob)
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert type(info.value) is FormatError
    assert "truncated" in str(info.value) and "4294967292" in str(info.value)
    assert peak < 256 * 1024, peak
    # an 8 GiB claim with the CRC fixed up and streams of the "right" total size is still
    # only arithmetic
    expect(FormatError, raw_blob(z_len=0xFFFFFFFC), "truncated")


# --------------------------------------------------------------------------------------
# pack-side validation (ValueError: programmer error)
# --------------------------------------------------------------------------------------
PACK_CASES = [
    (dict(quality=0), "quality 0"),
    (dict(quality=256), "quality 256"),
    (dict(quality=True), "quality must be an int"),
    (dict(quality=3.0), "quality must be an int"),
    (dict(config_hash=b"\0" * 7), "config_hash must be exactly 8 bytes"),
    (dict(config_hash=b"\0" * 32), "config_hash must be exactly 8 bytes"),
    (dict(weights_hash="00" * 8), "weights_hash must be bytes"),
    (dict(width=0), "width 0"),
    (dict(height=70000), "height 70000"),
    (dict(mode="RGBA"), "mode 'RGBA'"),
    (dict(backend="tpu"), "backend 'tpu'"),
    (dict(symbols_crc32=-1), "symbols_crc32 -1"),
    (dict(symbols_crc32=2**32), "symbols_crc32"),
    (dict(pad=[78, 78, 93, 93]), "pad must be a tuple"),
    (dict(pad=(78, 78, 93)), "pad must be a tuple"),
    (dict(pad=(78, 78, 93, 300)), "pad bottom 300"),
    (dict(pad=(79, 77, 93, 93)), "split floor/rest"),
    (dict(z_shape=(4, 5)), "padded width"),
    (dict(z_shape=(0, 4)), "zH 0"),
    (dict(z_shape=[4, 4]), "z_shape must be a tuple"),
]


@pytest.mark.parametrize("overrides, fragment", PACK_CASES)
def test_pack_rejects_invalid_header(overrides, fragment):
    f = TcmFile(replace(BASE_HEADER, **overrides), Z0, Y0)
    with pytest.raises(ValueError, match=None) as info:
        pack(f)
    assert fragment in str(info.value)
    assert f.problem() is not None
    with pytest.raises(ValueError):
        f.header.validate()


@pytest.mark.parametrize(
    "z, y, fragment",
    [
        (b"\0" * 4, Y0, "z_string is 4 bytes"),
        (Z0, b"\0" * 13, "y_string is 13 bytes"),
        ("abcdefgh", Y0, "z_string must be bytes"),
    ],
)
def test_pack_rejects_invalid_streams(z, y, fragment):
    with pytest.raises(ValueError) as info:
        pack(TcmFile(BASE_HEADER, z, y))
    assert fragment in str(info.value)


def test_pack_rejects_non_file():
    with pytest.raises(ValueError):
        pack(BASE_HEADER)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pack(TcmFile("header", Z0, Y0))  # type: ignore[arg-type]


def test_valid_objects_report_no_problem():
    assert BASE_HEADER.problem() is None and BASE_FILE.problem() is None
    BASE_FILE.validate()
    assert BASE_HEADER.geometry.padded_shape == (256, 256)


# --------------------------------------------------------------------------------------
# Mutation / fuzz tests: only FormatError, never anything else
# --------------------------------------------------------------------------------------
mutation_settings = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@mutation_settings
@given(valid_files, st.data())
def test_mutation_flip_bytes(f, data):
    blob = pack(f)
    mutated = bytearray(blob)
    n_flips = data.draw(st.integers(1, 8))
    for _ in range(n_flips):
        i = data.draw(st.integers(0, len(blob) - 1))
        mutated[i] ^= data.draw(st.integers(1, 255))
    check_outcome(blob, bytes(mutated))


@mutation_settings
@given(valid_files, st.data())
def test_mutation_truncate_append_splice(f, data):
    blob = pack(f)
    op = data.draw(st.sampled_from(["truncate", "append", "duplicate", "delete", "insert", "replace_tail"]))
    if op == "truncate":
        mutated = blob[: data.draw(st.integers(0, len(blob)))]
    elif op == "append":
        mutated = blob + data.draw(st.binary(min_size=0, max_size=64))
    elif op == "duplicate":
        a = data.draw(st.integers(0, len(blob) - 1))
        b = data.draw(st.integers(a + 1, len(blob)))
        at = data.draw(st.integers(0, len(blob)))
        mutated = blob[:at] + blob[a:b] + blob[at:]
    elif op == "delete":
        a = data.draw(st.integers(0, len(blob) - 1))
        b = data.draw(st.integers(a + 1, len(blob)))
        mutated = blob[:a] + blob[b:]
    elif op == "insert":
        at = data.draw(st.integers(0, len(blob)))
        mutated = blob[:at] + data.draw(st.binary(min_size=1, max_size=16)) + blob[at:]
    else:
        at = data.draw(st.integers(0, len(blob)))
        mutated = blob[:at] + data.draw(st.binary(max_size=len(blob)))
    check_outcome(blob, mutated)


@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(data):
    check_outcome(pack(BASE_FILE), data)
    # random bytes behind a real magic + version go deeper into the parser
    check_outcome(pack(BASE_FILE), MAGIC + b"\x01" + data)
    check_outcome(pack(BASE_FILE), fix_crc(MAGIC + b"\x01" + data + b"\0\0\0\0"))


@mutation_settings
@given(valid_files, st.data())
def test_mutation_with_recomputed_crc(f, data):
    """Mutate (mostly the header), then fix up the CRC so the structural and semantic
    checks -- not the CRC -- have to catch it."""
    blob = pack(f)
    mutated = bytearray(blob[:-4])
    op = data.draw(st.sampled_from(["header_bytes", "header_field", "anywhere", "resize"]))
    if op == "header_bytes":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, SPEC_HEADER_SIZE - 1))
            mutated[i] = data.draw(st.integers(0, 255))
    elif op == "header_field":
        name, off, code = data.draw(st.sampled_from(SPEC))
        size = struct.calcsize("<" + code)
        mutated[off : off + size] = data.draw(st.binary(min_size=size, max_size=size))
    elif op == "anywhere":
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    else:  # change the body length and keep a valid CRC
        at = data.draw(st.integers(SPEC_HEADER_SIZE, len(mutated)))
        k = data.draw(st.integers(-12, 12))
        if k >= 0:
            mutated[at:at] = data.draw(st.binary(min_size=k, max_size=k))
        else:
            del mutated[max(SPEC_HEADER_SIZE, at + k) : at]
    body = bytes(mutated)
    check_outcome(blob, body + struct.pack("<I", zlib.crc32(body)))


def test_every_single_header_byte_with_recomputed_crc():
    """Exhaustive: every header byte set to every value, CRC fixed up."""
    blob = pack(BASE_FILE)
    outcomes = {"ok": 0, "err": 0}
    for i in range(SPEC_HEADER_SIZE):
        for v in range(256):
            m = bytearray(blob[:-4])
            m[i] = v
            body = bytes(m)
            mutated = body + struct.pack("<I", zlib.crc32(body))
            try:
                got = unpack(mutated)
            except FormatError as exc:
                assert "\n" not in str(exc)
                assert "CRC32" not in str(exc)  # CRC is right: something else must fire
                outcomes["err"] += 1
            else:
                outcomes["ok"] += 1
                assert pack(got) == mutated
                assert (got == BASE_FILE) == (mutated == blob)
    # the free-form fields (hashes, symbols_crc32, quality) accept most values; every
    # structural field rejects most values
    assert outcomes["err"] > 0 and outcomes["ok"] > 0


# --------------------------------------------------------------------------------------
# Hash / checksum definitions from docs/format.md
# --------------------------------------------------------------------------------------
def test_symbols_crc32_definition():
    """docs/format.md: CRC32 over z symbols, y symbols, y indexes as little-endian int32."""
    from tcm_serve.codec.engine import symbols_crc32

    z = np.array([[1, -2], [3, 4]], dtype=np.int32)
    y = np.arange(-5, 7, dtype=np.int32).reshape(2, 2, 3)
    idx = np.array([0, 5, 63], dtype=np.int32)
    expected = zlib.crc32(
        np.ascontiguousarray(z, "<i4").tobytes()
        + np.ascontiguousarray(y, "<i4").tobytes()
        + np.ascontiguousarray(idx, "<i4").tobytes()
    )
    assert symbols_crc32(z, y, idx) == expected
    assert symbols_crc32(y, z, idx) != expected  # the order of the parts matters
    assert symbols_crc32(np.array([1], np.int32)) == zlib.crc32(b"\x01\x00\x00\x00")


def test_decode_size_bounds_the_padded_tensor_as_the_encoder_does():
    """check_decode_size applies the encoder's image guard to the header: width x height
    against the limit, and the padded area (from the header's own padding) against the
    bound that goes with it, so a 1 x 65535 strip is refused although it has few pixels,
    and so is a small image a writer padded more than ours would."""
    from tcm_serve.codec.geometry import padded_size
    from tcm_serve.codec.pipeline import check_decode_size
    from tcm_serve.errors import ImageTooLargeError

    def header(width: int, height: int, pad: tuple[int, int, int, int] | None = None) -> TcmHeader:
        if pad is None:
            pad = Geometry.for_image(height, width).pad
        left, right, top, bottom = pad
        return replace(
            BASE_HEADER,
            width=width,
            height=height,
            pad=pad,
            z_shape=((height + top + bottom) // 64, (width + left + right) // 64),
        )

    strip = header(1, 65535)
    TcmFile(strip, Z0, Y0).validate()  # a legal header
    with pytest.raises(ImageTooLargeError, match="pads to 256x65536"):
        check_decode_size(strip, 1_000_000)
    check_decode_size(header(1000, 1000), 1_000_000)
    check_decode_size(header(200, 130), 200 * 130)  # pads to 256x256, over 26,000: allowed
    with pytest.raises(ImageTooLargeError, match="over the limit of 25,999"):
        check_decode_size(header(200, 130), 200 * 130 - 1)
    # 129 x 129 with the most padding the format allows (255 per dimension): 384 x 384
    assert padded_size(129) == 256
    wide = header(129, 129, (127, 128, 127, 128))
    TcmFile(wide, Z0, Y0).validate()
    with pytest.raises(ImageTooLargeError, match="pads to 384x384"):
        check_decode_size(wide, 129 * 129)


# --------------------------------------------------------------------------------------
# Version 2 (portable): the hints section
# --------------------------------------------------------------------------------------
def test_v2_structure_rules():
    # no hints section at all: version 2 needs at least the count byte
    expect(FormatError, raw_blob(hints=b"", backend=1), "hints section is 0 bytes")
    # the method code: only portable-f64 (1) exists; the version-1 codes mean nothing here
    expect(FormatError, raw_blob(hints=b"\0", backend=2), "unknown backend code 2 in format version 2")
    expect(FormatError, raw_blob(hints=b"\0", backend=0), "unknown backend code 0")
    # declared hints longer / shorter than the file
    expect(FormatError, raw_blob(hints=b"\0", backend=1, hints_len=2), "truncated", "hints of 2 bytes")
    expect(
        FormatError, raw_blob(hints=b"\0\0", backend=1, hints_len=1), "length mismatch", "1 unexpected trailing byte"
    )
    # a version-2 header is 4 bytes longer: a file cut inside it is truncated
    v2 = pack(BASE_FILE_V2)
    for n in (5, 52, 55, 59):
        expect(FormatError, v2[:n], "truncated")


def test_v2_every_length_and_crc():
    blob = pack(BASE_FILE_V2)
    for n in range(len(blob)):
        with pytest.raises(FormatError):
            unpack(blob[:n])
    bad = bytearray(blob)
    bad[-6] ^= 1  # inside the hints section
    expect(FormatError, bytes(bad), "CRC32 mismatch")


@pytest.mark.parametrize(
    "f, fragment",
    [
        (TcmFile(BASE_HEADER, Z0, Y0, b"\0"), "version-1 file has no hints section"),
        (TcmFile(replace(BASE_HEADER, backend=PORTABLE), Z0, Y0), "hints section is 0 bytes"),
        (TcmFile(replace(BASE_HEADER, backend=PORTABLE), Z0, Y0, "x"), "hints must be bytes"),
        (TcmFile(replace(BASE_HEADER, backend="portable-f32"), Z0, Y0, b"\0"), "backend 'portable-f32' is not one of"),
    ],
)
def test_pack_rejects_invalid_hints(f, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        pack(f)
