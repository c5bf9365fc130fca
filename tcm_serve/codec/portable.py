"""Portable bitstreams: every decoder makes the encoder's discrete decisions, on any machine.

Why this exists. The only decision the TCM decoder takes from floating-point numbers is
the Gaussian table index of every y symbol: a threshold on sigma, which ~40 network layers
compute from already decoded data. In float32, sigma differs in the last bits between
thread counts, batch sizes, CPU instruction sets, PyTorch and ONNX Runtime, CPU and GPU
(up to ~1e-6 relative). One index that lands on the other side of a table boundary
desynchronises the range decoder: 22 of 69 photos failed to decode with one thread after
encoding with two (issue 17). A version-1 (exact) blob is only decodable where its entropy
parameters are reproduced bit for bit.

The method (format version 2, header code ``portable-f64``):

1. The entropy-parameter networks (hyper-synthesis, SWAtten and slice networks, LRP) run
   in IEEE float64, on a float64 copy of the model's weights. The transforms ``g_a``,
   ``h_a`` and ``g_s`` stay in float32 on any backend: they decide nothing the decoder must
   repeat. Measured between 1, 2 and 3 threads, batch 1 and 4, AVX-512, AVX2 and no-SIMD
   kernels: sigma differs by at most 6.5e-15 relative (docs/codec.md).
2. The encoder marks every y symbol whose index would change if sigma moved by a relative
   :data:`MARGIN` (2**-24, 6e-8: seven orders of magnitude above the measured deviation)
   and sends that symbol's index as a hint (:mod:`tcm_serve.codec.hints`). About one symbol
   in a million is marked.
3. The decoder uses the hint where there is one and its own index elsewhere. At an
   unhinted symbol the encoder's sigma is at least :data:`MARGIN` from every boundary, so a
   decoder whose sigma is within :data:`TOLERANCE` (MARGIN / 2) of the encoder's picks the
   same index, by construction. A decoder whose sigma falls within MARGIN / 4 of a boundary
   at an unhinted symbol has deviated by more than the tolerance and says so
   (:class:`~tcm_serve.errors.DriftError`) instead of decoding on; the symbol checksum catches
   every other excess.

Everything else the decoder computes from floats (mu, the LRP output, y_hat, the synthesis)
is continuous: a last-bit difference moves decoded pixels by at most a level, never a symbol.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import DriftError
from .tables import build_indexes

#: Relative distance from a table boundary within which the encoder sends the index.
MARGIN = 2.0**-24
#: Relative deviation of the decoder's sigma from the encoder's that always decodes.
TOLERANCE = MARGIN / 2
#: A decoder that finds its own sigma this close to a boundary has exceeded TOLERANCE.
_SELF_CHECK = MARGIN / 4
#: Precision of the portable entropy-parameter path.
DTYPE = torch.float64
#: (positions, indexes) of an empty hint list.
NO_HINTS = (np.zeros(0, np.int64), np.zeros(0, np.int32))


#: Symbols whose index decisions are taken in one go: the decisions' temporaries (scaled
#: copies, comparisons) are bounded by this, not by the slice (hundreds of MB at 48 MP).
DECISION_CHUNK = 1 << 20


def _np_i32(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.int32).contiguous().numpy().reshape(-1)


def _by_chunks(scale: Tensor, decide: Callable[[Tensor], Tensor]) -> np.ndarray:
    """``decide`` applied to the flattened ``scale`` in chunks of :data:`DECISION_CHUNK`,
    as one int32 array (element-wise decisions, so the chunking changes no result)."""
    flat = scale.reshape(-1)
    out = np.empty(flat.numel(), np.int32)
    for start in range(0, flat.numel(), DECISION_CHUNK):
        part = flat[start : start + DECISION_CHUNK]
        out[start : start + part.numel()] = _np_i32(decide(part))
    return out


def close_calls(scale: Tensor, scale_table: Tensor, margin: float) -> Tensor:
    """True where the table index of ``scale`` changes within a relative ``margin``.

    The index is a monotone step function of sigma (lower bound, then a count of table
    entries below it), so it is constant on [s(1 - m), s(1 + m)] exactly when both ends give
    the same index; the ends are swapped for negative s, which the comparison ignores.
    """
    return build_indexes(scale * (1.0 - margin), scale_table) != build_indexes(scale * (1.0 + margin), scale_table)


class ExactIndexes:
    """Version 1: the reference rule, in whatever precision the backend computed sigma."""

    hint_positions, hint_indexes = NO_HINTS

    def __init__(self, scale_table: Tensor) -> None:
        self.scale_table = scale_table

    def encoder_indexes(self, offset: int, scale: Tensor) -> np.ndarray:
        return _by_chunks(scale, lambda s: build_indexes(s, self.scale_table))

    def decoder_indexes(self, offset: int, scale: Tensor) -> np.ndarray:
        return _by_chunks(scale, lambda s: build_indexes(s, self.scale_table))


class PortableIndexes:
    """Version 2: the index decisions of one image, float64 sigma plus hints.

    The encoder's instance collects hints (:attr:`hint_positions`, :attr:`hint_indexes`);
    the decoder's is given them. ``offset`` is the position of the slice's first symbol in
    the image's y symbol list, the coordinate hints use.
    """

    def __init__(self, scale_table: Tensor, hints: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.scale_table = scale_table.to(DTYPE)
        positions, indexes = hints if hints is not None else NO_HINTS
        self._positions: list[np.ndarray] = [np.asarray(positions, np.int64)]
        self._indexes: list[np.ndarray] = [np.asarray(indexes, np.int32)]

    @property
    def hint_positions(self) -> np.ndarray:
        return np.concatenate(self._positions)

    @property
    def hint_indexes(self) -> np.ndarray:
        return np.concatenate(self._indexes)

    def _check_dtype(self, scale: Tensor) -> None:
        if scale.dtype != DTYPE:
            raise TypeError(f"portable index decisions need {DTYPE} scales, got {scale.dtype}")

    def encoder_indexes(self, offset: int, scale: Tensor) -> np.ndarray:
        self._check_dtype(scale)
        idx = _by_chunks(scale, lambda s: build_indexes(s, self.scale_table))
        close = np.flatnonzero(_by_chunks(scale, lambda s: close_calls(s, self.scale_table, MARGIN)))
        self._positions.append(close.astype(np.int64) + offset)
        self._indexes.append(idx[close])
        return idx

    def decoder_indexes(self, offset: int, scale: Tensor) -> np.ndarray:
        self._check_dtype(scale)
        idx = _by_chunks(scale, lambda s: build_indexes(s, self.scale_table))
        positions, indexes = self._positions[0], self._indexes[0]
        lo, hi = np.searchsorted(positions, [offset, offset + idx.size])
        local = positions[lo:hi] - offset
        close = _by_chunks(scale, lambda s: close_calls(s, self.scale_table, _SELF_CHECK)).astype(bool)
        close[local] = False
        if close.any():
            at = offset + int(np.flatnonzero(close)[0])
            raise DriftError(
                f"portable blob: this decoder's entropy parameters differ from the encoder's by more than the "
                f"format tolerates (relative {TOLERANCE:.1e}; found at y symbol {at}): the float64 arithmetic "
                "here is not IEEE-conformant or the model files differ from the encoder's despite equal "
                "hashes; please report it with the blob, the store's manifest entry, this machine's CPU and "
                "torch.__config__.show()"
            )
        idx[local] = indexes[lo:hi]
        return idx
