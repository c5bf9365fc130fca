"""The hints section of portable blobs (tcm_serve/codec/hints.py, spec in docs/format.md)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcm_serve.codec.hints import decode_hints, encode_hints
from tcm_serve.errors import FormatError

N_SYMBOLS = 10**7
N_TABLES = 64


@st.composite
def hint_lists(draw):
    positions = sorted(draw(st.sets(st.integers(0, N_SYMBOLS - 1), max_size=30)))
    indexes = draw(st.lists(st.integers(0, N_TABLES - 1), min_size=len(positions), max_size=len(positions)))
    return np.array(positions, np.int64), np.array(indexes, np.int32)


def test_layout_of_a_small_list():
    """count, then the indexes, then the gaps (position - previous - 1) as varints."""
    data = encode_hints(np.array([5, 6, 300]), np.array([7, 8, 63]))
    assert data == bytes([3, 7, 8, 63, 5, 0]) + bytes([0xA5, 0x02])  # 300 - 6 - 1 = 293 = 0x125
    pos, idx = decode_hints(data, N_SYMBOLS, N_TABLES)
    assert pos.tolist() == [5, 6, 300] and idx.tolist() == [7, 8, 63]
    assert encode_hints(np.zeros(0), np.zeros(0)) == b"\x00"


@settings(max_examples=300, deadline=None)
@given(hint_lists())
def test_round_trip(hints):
    data = encode_hints(*hints)
    pos, idx = decode_hints(data, N_SYMBOLS, N_TABLES)
    np.testing.assert_array_equal(pos, hints[0])
    np.testing.assert_array_equal(idx, hints[1])
    assert pos.dtype == np.int64 and idx.dtype == np.int32


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_any_bytes_decode_canonically_or_fail_cleanly(data):
    """Every section that parses re-encodes to the same bytes (one encoding per list);
    everything else is a one-line FormatError."""
    try:
        pos, idx = decode_hints(data, 5000, N_TABLES)
    except FormatError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("invalid hints")
        return
    assert encode_hints(pos, idx) == data


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "empty"),
        (b"\x80", "hint count is truncated"),
        (b"\x80\x00", "not a minimal varint"),
        (b"\x01\x05", "does not hold exactly 1"),
        (b"\x01\x05\x00\x00", "does not hold exactly 1"),
        (b"\x00\x00", "1 bytes of positions for 0 hints"),
        (b"\x01\x05\x80\x00", "not a minimal varint"),
        (b"\x02\x05\x05" + b"\xff" * 8 + b"\x01\x00", "longer than 8 bytes"),
        (b"\x01\x05" + b"\xff" * 8 + b"\x01", "9 bytes of positions for 1 hints"),
        (b"\x01\x05\x90\x4e", "past the 10000 y symbols"),  # position 10000
        (b"\x01\x40\x00", "table index 64 is past the 64 tables"),
        (b"\x05\x01\x01", "5 hints declared"),
    ],
)
def test_malformed_sections(data, fragment):
    with pytest.raises(FormatError, match=fragment):
        decode_hints(data, 10_000, N_TABLES)


def test_position_overflow_is_caught():
    """Gaps that would wrap a 64-bit running sum past the end are refused, not wrapped."""
    big = bytes([0xFF] * 7 + [0x7F])  # 2**56 - 1
    data = bytes([0xC8, 0x01]) + b"\x00" * 200 + big * 200  # 200 hints: the sum passes 2**63
    with pytest.raises(FormatError, match="past the"):
        decode_hints(data, 10**12, N_TABLES)


def test_encoder_refuses_unordered_or_wide_input():
    with pytest.raises(ValueError):
        encode_hints(np.array([3, 3]), np.array([1, 1]))
    with pytest.raises(ValueError):
        encode_hints(np.array([-1]), np.array([1]))
    with pytest.raises(ValueError):
        encode_hints(np.array([1]), np.array([256]))
    with pytest.raises(ValueError):
        encode_hints(np.array([1, 2]), np.array([1]))
