"""The hints section of a version-2 (portable) ``.tcm`` file, as bytes.

A hint names one y symbol whose Gaussian table index the encoder found too close to call
(:mod:`tcm_serve.codec.portable`) and gives the index to use. Hints are rare (about one per
four Kodak images), so the layout is compact for the empty list (one byte) and simple to
parse without a per-hint Python loop::

    count    LEB128 varint            number of hints
    indexes  count x u8               table index of each hint, in position order
    gaps     count x LEB128 varint    position[k] - position[k-1] - 1 (position[-1] = -1)

A position is the symbol's place in the y symbol list in coding order (slice 0 channel-major,
then slice 1, ...), so positions are strictly increasing. Varints are little-endian base-128
with the high bit as continuation, at most 8 bytes, and minimal (a multi-byte varint does not
end in a zero byte), so every hint list has exactly one encoding.
"""

from __future__ import annotations

import numpy as np

from ..errors import FormatError

#: Longest varint accepted (56 bits: far beyond any symbol count a .tcm header allows).
MAX_VARINT_BYTES = 8


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_hints(positions: np.ndarray, indexes: np.ndarray) -> bytes:
    """The hints section for ``positions`` (strictly increasing) and their table ``indexes``."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    indexes = np.asarray(indexes, dtype=np.int64).reshape(-1)
    if positions.size != indexes.size:
        raise ValueError("one index per hint position")
    if positions.size and (positions[0] < 0 or np.any(np.diff(positions) <= 0)):
        raise ValueError("hint positions must be non-negative and strictly increasing")
    if indexes.size and (indexes.min() < 0 or indexes.max() > 0xFF):
        raise ValueError("hint table indexes must fit in a byte")
    gaps = np.diff(positions, prepend=-1) - 1
    return _varint(positions.size) + indexes.astype(np.uint8).tobytes() + b"".join(_varint(int(g)) for g in gaps)


def _read_count(buf: np.ndarray) -> tuple[int, int]:
    """The leading varint (the hint count) and the offset after it."""
    value = 0
    for i in range(min(len(buf), MAX_VARINT_BYTES)):
        value |= int(buf[i] & 0x7F) << (7 * i)
        if buf[i] < 0x80:
            if i and buf[i] == 0:
                raise FormatError("invalid hints: the hint count is not a minimal varint")
            return value, i + 1
    raise FormatError("invalid hints: the hint count is truncated or longer than 8 bytes")


def decode_hints(data: bytes, n_symbols: int, n_tables: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions int64, table indexes int32) of a hints section, checked against the blob's
    ``n_symbols`` y symbols and ``n_tables`` Gaussian tables. Raises :class:`FormatError`
    for any section that :func:`encode_hints` would not have written."""
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    if buf.size == 0:
        raise FormatError("invalid hints: the section is empty (it starts with the hint count)")
    count, off = _read_count(buf)
    if count > n_symbols or count > buf.size - off:
        raise FormatError(f"invalid hints: {count} hints declared for {n_symbols} symbols in {buf.size} bytes")
    indexes = buf[off : off + count].astype(np.int32)
    gaps = buf[off + count :]
    if gaps.size > MAX_VARINT_BYTES * count:  # before any per-byte temporary is allocated
        raise FormatError(f"invalid hints: {gaps.size} bytes of positions for {count} hints")
    ends = np.flatnonzero(gaps < 0x80)
    if ends.size != count or (count and ends[-1] != gaps.size - 1) or (not count and gaps.size):
        raise FormatError(f"invalid hints: the position list does not hold exactly {count} varints")
    if not count:
        return np.zeros(0, np.int64), indexes
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > MAX_VARINT_BYTES:
        raise FormatError("invalid hints: a position varint is longer than 8 bytes")
    if np.any((lengths > 1) & (gaps[ends] == 0)):
        raise FormatError("invalid hints: a position is not a minimal varint")
    shift = 7 * (np.arange(gaps.size) - np.repeat(starts, lengths))
    values = np.add.reduceat((gaps & 0x7F).astype(np.int64) << shift, starts)
    # The running sum is exact up to the first position past the end (each step adds less
    # than 2**56), and that position is in the array, so max() catches any overflow after it.
    positions = np.cumsum(values + 1) - 1
    if positions.max() >= n_symbols:
        raise FormatError(f"invalid hints: a position is past the {n_symbols} y symbols")
    if indexes.max() >= n_tables:
        raise FormatError(f"invalid hints: table index {int(indexes.max())} is past the {n_tables} tables")
    return positions, indexes
