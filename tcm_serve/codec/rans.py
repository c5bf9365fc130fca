"""numpy-facing wrapper of the rANS coder in :mod:`tcm_serve.codec._rans`.

The coder is byte-compatible with CompressAI 1.2.x (``BufferedRansEncoder`` /
``RansDecoder`` with ``*_with_indexes``): 64-bit state, 16-bit precision, 32-bit
little-endian words, 4-bit escape coding for values outside a table.

* :class:`EntropyTable` bundles the integer tables (one CDF row per table index), checked
  once when built and then read-only.
* :func:`encode` codes a whole symbol list into one byte string.
* :class:`RansDecoder` decodes a stream in one or several calls (the y stream of TCM is
  decoded slice by slice); any problem with the bytes raises
  :class:`~tcm_serve.errors.BitstreamError`.

The C functions release the GIL, so several streams can be coded in parallel threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tcm_serve.codec import _rans

from ..errors import BitstreamError

__all__ = ["PRECISION", "EntropyTable", "encode", "RansDecoder", "quantize_cdf"]

#: Probability precision of the coder: every CDF row runs from 0 to 2**PRECISION.
PRECISION: int = _rans.PRECISION
_PROB_ONE = 1 << PRECISION


def _int32(a: object) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int32)


def _frozen_int32(a: object) -> np.ndarray:
    # Always a private copy, so freezing it never affects the caller's array.
    out = np.array(a, dtype=np.int32, order="C", copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)  # identity eq/hash: fields are arrays
class EntropyTable:
    """Integer tables for the coder.

    cdf: (K, L) int32; row k holds a CDF from 0 to 65536 in its first ``cdf_length[k]``
    entries (strictly increasing) and zero padding after. cdf_length: (K,) int32, at least
    2. offset: (K,) int32, the symbol value of CDF entry 0. The last coded value of a row
    (``cdf_length - 2``) is the escape symbol.

    The arrays are copied, validated and made read-only on construction.
    """

    cdf: np.ndarray
    cdf_length: np.ndarray
    offset: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "cdf", _frozen_int32(self.cdf))
        object.__setattr__(self, "cdf_length", _frozen_int32(self.cdf_length))
        object.__setattr__(self, "offset", _frozen_int32(self.offset))
        self.validate()

    @property
    def num_tables(self) -> int:
        return int(self.cdf.shape[0])

    def validate(self) -> None:
        """Raise ValueError unless the tables are usable by the coder."""
        cdf, length, offset = self.cdf, self.cdf_length, self.offset
        if cdf.ndim != 2 or cdf.shape[0] < 1 or cdf.shape[1] < 2:
            raise ValueError(f"cdf must have shape (K >= 1, L >= 2), got {cdf.shape}")
        k, width = cdf.shape
        if length.shape != (k,) or offset.shape != (k,):
            raise ValueError(f"cdf_length {length.shape} and offset {offset.shape} must have shape ({k},)")
        if np.any(length < 2) or np.any(length > width):
            raise ValueError(f"cdf_length entries must lie in [2, {width}]")
        rows = np.arange(k)
        if np.any(cdf[:, 0] != 0):
            raise ValueError("every cdf row must start at 0")
        if np.any(cdf[rows, length - 1] != _PROB_ONE):
            raise ValueError(f"every cdf row must end at {_PROB_ONE} (at cdf_length - 1)")
        inside = np.arange(1, width)[None, :] < length[:, None]
        if np.any((np.diff(cdf, axis=1) <= 0) & inside):
            raise ValueError("cdf rows must be strictly increasing (every bin wider than 0)")

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.cdf, self.cdf_length, self.offset


def encode(symbols: np.ndarray, indexes: np.ndarray, table: EntropyTable) -> bytes:
    """rANS-encode ``symbols`` (any shape, C order), each with table row ``indexes``.

    Raises ValueError for an index outside the table or a symbol so far out of its table
    that its escape value needs more than 32 bits.
    """
    sym = _int32(symbols).reshape(-1)
    idx = _int32(indexes).reshape(-1)
    if sym.shape != idx.shape:
        raise ValueError(f"symbols ({sym.size}) and indexes ({idx.size}) differ in size")
    return _rans.encode(sym, idx, table.cdf, table.cdf_length, table.offset)


class RansDecoder:
    """Decoder over one rANS stream; successive :meth:`decode` calls continue the stream.

    Every failure caused by the stream bytes raises :class:`BitstreamError`. After a
    failure the decoder refuses further calls (BitstreamError again).
    """

    __slots__ = ("_dec",)

    def __init__(self, data: bytes) -> None:
        try:
            self._dec = _rans.Decoder(data)
        except ValueError as exc:
            raise BitstreamError(f"entropy-coded stream: {exc}") from exc

    def decode(self, indexes: np.ndarray, table: EntropyTable) -> np.ndarray:
        """Decode one symbol per entry of ``indexes``; returns int32 of the same shape."""
        idx = _int32(indexes)
        flat = idx.reshape(-1)
        if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= table.num_tables):
            # A caller bug, not a stream problem.
            raise ValueError(f"indexes must lie in [0, {table.num_tables})")
        out = np.empty(flat.shape, dtype=np.int32)
        try:
            self._dec.decode(flat, table.cdf, table.cdf_length, table.offset, out)
        except ValueError as exc:
            raise BitstreamError(f"entropy-coded stream: {exc}") from exc
        return out.reshape(idx.shape)

    @property
    def remaining(self) -> int:
        """Bytes of the stream not yet read."""
        return self._dec.remaining

    @property
    def finished(self) -> bool:
        """True when exactly the encoded symbols have been decoded (all bytes consumed
        and the coder state back at its initial value)."""
        return self._dec.finished

    def check_finished(self) -> None:
        """Raise BitstreamError unless the whole stream was consumed exactly."""
        if not self._dec.finished:
            raise BitstreamError(
                f"entropy-coded stream: trailing data or symbol count mismatch ({self._dec.remaining} bytes unread)"
            )


def quantize_cdf(pmf: np.ndarray) -> np.ndarray:
    """CompressAI's ``pmf_to_quantized_cdf`` (16 bits): float32 pmf of n entries (tail
    mass last) -> int32 CDF of n + 1 entries from 0 to 65536, every bin at least 1 wide.

    Raises ValueError for a negative or non-finite entry or a pmf that quantises to 0.
    """
    p = np.ascontiguousarray(pmf, dtype=np.float32).reshape(-1)
    return np.frombuffer(_rans.quantize_cdf(p), dtype=np.int32).copy()
