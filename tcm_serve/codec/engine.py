"""Latent-level TCM codec: padded image tensors <-> two entropy-coded byte strings.

Two kinds of strings (the ``.tcm`` format's versions, ``docs/format.md``):

* **portable** (version 2, the default): the entropy parameters run in float64 and close
  calls travel as hints, so every machine decodes them (:mod:`tcm_serve.codec.portable`);
* **exact** (version 1): the reference's own ``compress()`` strings, byte for byte, which
  decode only where the entropy parameters are reproduced bit for bit.

This is the reference ``compress()`` / ``decompress()`` reorganised for serving:

* batch-capable: a batch of same-size images runs through the analysis/synthesis
  transforms together and every image still gets its own z and y strings (the reference
  codes one y string per batch, which is why it only supports batch 1); see the batching
  policy note below for why the entropy-parameter path runs per image;
* split into a tensor stage (:meth:`Engine.analyse`, device work) and a range-coding stage
  (:func:`encode_symbols`, CPU, GIL released) so that a server can overlap them;
* vectorised: symbols and indexes leave the device once per slice as int32 arrays; no
  Python per-symbol loops, no ``.tolist()``.

Exact strings are byte-identical to the reference for the same padded input.
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from ..cpu import cpu_budget
from ..errors import BackendMismatchError, BitstreamError, DriftError, FormatError
from ..model.scratch import banded_transformers, bound_scratch, group_attention
from ..model.tcm import TCM
from .backends import EncodedSlice, Stages, TorchStages, encode_slice
from .container import PORTABLE, PORTABLE_METHODS
from .effort import LatentSearch, check_effort_size
from .geometry import ALIGN, MIN_PADDED, Geometry
from .hints import decode_hints, encode_hints
from .padding import to_unit
from .portable import DTYPE as PORTABLE_DTYPE
from .portable import NO_HINTS, ExactIndexes, PortableIndexes
from .rans import RansDecoder, encode
from .search import NO_PADDING, search_latents
from .tables import prepare_entropy_tables
from .tiling import WHOLE, DecoderParams, TiledEntropyStages, Tiling, entropy_halo

#: Thread counts a version-1 blob is retried with when it does not decode with the current
#: one (commonest first), then the machine's core count: torch's kernels split work by
#: thread count, and the last bits of the entropy parameters, hence a version-1 blob's
#: decodability, depend on the split. The CLI tries them all; the service a few (each
#: retry costs a full entropy-parameter pass, and anyone can send a CRC-valid bad blob).
V1_RETRY_THREADS = (1, 2, 4, 8, 3, 6, 16, 12)
SERVICE_V1_RETRY_THREADS = (1, 2, 4)
#: Hints store a table index in one byte (docs/format.md); official models have 64 tables.
MAX_GAUSSIAN_TABLES = 256


@dataclass
class ImageSymbols:
    """Everything the range coder needs for one image, as flat int32 arrays."""

    z_symbols: np.ndarray  # (192 * zH * zW,), channel-major
    y_symbols: np.ndarray  # (320 * yH * yW,), slice 0 channel-major, then slice 1, ...
    #: Gaussian table index of each y symbol: uint8 (at most MAX_GAUSSIAN_TABLES tables), a
    #: quarter of int32's memory for a large photo's whole list; the checksum and the coder
    #: read them as int32.
    y_indexes: np.ndarray
    #: The header's ``backend``: PORTABLE, or the exact backend that computed the indexes
    #: (``None``: the engine's own exact backend, as for :class:`CodedImage`).
    method: str | None = None
    #: Portable only: positions (in the y symbol list) and indexes of the close calls.
    hint_positions: np.ndarray = field(default_factory=lambda: NO_HINTS[0])
    hint_indexes: np.ndarray = field(default_factory=lambda: NO_HINTS[1])

    def checksum(self) -> int:
        """CRC32 of z symbols, y symbols and y indexes (int32 little-endian), stored in the
        container so that a decoder whose entropy parameters drifted fails loudly."""
        return symbols_crc32(self.z_symbols, self.y_symbols, self.y_indexes)

    def sha256(self) -> str:
        """SHA-256 of the same bytes as :meth:`checksum`: the symbols' identity where a CRC is
        too weak to stand for them (the golden blobs' records, tests/golden)."""
        h = hashlib.sha256()
        for buf in _le_int32(self.z_symbols, self.y_symbols, self.y_indexes):
            h.update(buf)
        return h.hexdigest()


@dataclass
class CodedImage:
    z_string: bytes
    y_string: bytes
    symbols_crc32: int
    #: The header's ``backend``: PORTABLE (decodes anywhere), or the exact backend that
    #: computed the entropy parameters (decoded with the same one or refused); ``None``
    #: means the engine's own exact backend.
    backend: str | None = None
    #: Portable only: the hints section (tcm_serve.codec.hints).
    hints: bytes = b""

    @property
    def portable(self) -> bool:
        return self.backend in PORTABLE_METHODS


#: Values converted to int32 at a time for a checksum (a bounded temporary, not a copy of a
#: large photo's whole symbol list).
_CHECKSUM_CHUNK = 1 << 22


def _le_int32(*arrays: np.ndarray) -> Iterator[memoryview]:
    """Each array's values as little-endian int32 bytes (docs/format.md, symbols_crc32), in
    chunks (a checksum over consecutive chunks is the checksum over the whole)."""
    for a in arrays:
        flat = np.asarray(a).reshape(-1)
        for start in range(0, max(flat.size, 1), _CHECKSUM_CHUNK):
            yield np.ascontiguousarray(flat[start : start + _CHECKSUM_CHUNK], dtype="<i4").data


def symbols_crc32(*arrays: np.ndarray) -> int:
    crc = 0
    for buf in _le_int32(*arrays):
        crc = zlib.crc32(buf, crc)
    return crc


def backend_mismatch_message(wanted: str, have: tuple[str, ...]) -> str:
    """One line: which backend a blob needs, which this decoder has, and how to get it."""
    kind, _, device = wanted.partition("-")
    return (
        f"the blob's entropy parameters were computed with {wanted}, but this decoder computes them with "
        f"{' or '.join(have)}, which may differ in the last bits and decode wrongly: decode it with "
        f"--backend {kind} --device {device} (service: TCM_BACKEND={kind}, TCM_DEVICES={device})"
    )


def _to_numpy_i32(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.int32).contiguous().numpy()


def v1_drift_message(backend: str, tried: list[int]) -> str:
    """One line for a version-1 blob that no thread count here decodes: what it is, what to do."""
    return (
        f"entropy-parameter drift: this version-1 (exact) blob's entropy parameters were computed by {backend} "
        f"on hardware or with a thread count whose last bits this machine does not reproduce (tried "
        f"{', '.join(map(str, tried))} threads). Decode it where it was made (same CPU type, backend and "
        "thread count) and re-encode it as a portable blob (version 2, the default), which decodes anywhere"
    )


class IndexRule(Protocol):
    """How one image's Gaussian table indexes are decided (:mod:`tcm_serve.codec.portable`)."""

    def encoder_indexes(self, offset: int, scale: Tensor) -> np.ndarray: ...
    def decoder_indexes(self, offset: int, scale: Tensor) -> np.ndarray: ...
    @property
    def hint_positions(self) -> np.ndarray: ...
    @property
    def hint_indexes(self) -> np.ndarray: ...


@dataclass(frozen=True)
class EntropyPath:
    """Where and in what precision entropy parameters are computed: the stages that run the
    hyper-synthesis, slice networks and LRP, with the z medians and the scale table in the
    path's dtype on its device."""

    name: str  # the header's backend: PORTABLE or an exact backend
    stages: Stages
    device: torch.device
    dtype: torch.dtype
    medians: Tensor  # (1, C, 1, 1)
    scale_table: Tensor

    def rule(self, hints: tuple[np.ndarray, np.ndarray] | None = None) -> IndexRule:
        if self.name in PORTABLE_METHODS:
            return PortableIndexes(self.scale_table, hints)
        return ExactIndexes(self.scale_table)

    def z_hat(self, z_symbols: Tensor) -> Tensor:
        return z_symbols.to(self.device, self.dtype) + self.medians

    def encode_slice(
        self, i: int, latent_means: Tensor, latent_scales: Tensor, decoded: list[Tensor], y_slice: Tensor, refine: bool
    ) -> EncodedSlice:
        """The encoder's step for slice ``i`` (:func:`~tcm_serve.codec.backends.encode_slice`),
        fused per tile where the stages are tiled."""
        if isinstance(self.stages, TiledEntropyStages):
            return self.stages.encode_slice(i, latent_means, latent_scales, decoded, y_slice, refine)
        return encode_slice(self.stages, i, latent_means, latent_scales, decoded, y_slice, refine)

    def decoder_params(
        self, i: int, latent_means: Tensor, latent_scales: Tensor, decoded: list[Tensor]
    ) -> DecoderParams:
        """The decoder's parameters of slice ``i``, with the mean attention's output or, where
        the stages are tiled for this image, its gate (:class:`~tcm_serve.codec.tiling.DecoderParams`)."""
        if isinstance(self.stages, TiledEntropyStages):
            return self.stages.decoder_params(i, latent_means, latent_scales, decoded)
        p = self.stages.slice_params(i, latent_means, latent_scales, decoded)
        return DecoderParams(p.mu, p.scale, mean_support=p.mean_support)


class Engine:
    """A loaded TCM model with its entropy tables, ready to code latents.

    Construct once per model and device; it is stateless per request, so one engine may
    serve consecutive batches (but not concurrent calls from several threads at once on the
    same device: the caller serialises device work).

    ``stages`` runs the networks (default: the model itself on ``device``, the exact path;
    see :mod:`tcm_serve.codec.backends`). Its ``name`` is what the engine's exact strings
    record as the backend of their entropy parameters. ``decode_paths`` are further stages
    this engine can decode exact strings with, for strings whose entropy parameters another
    backend computed (e.g. an ONNX engine also decodes ``torch-cpu`` strings with the model
    itself). Portable strings compute their entropy parameters with a float64 copy of the
    model on ``portable_device`` (default ``device``), built on first use. Exact strings
    that fail to decode are retried with ``v1_retry_threads`` (then the core count).
    """

    def __init__(
        self,
        model: TCM,
        device: torch.device,
        stages: Stages | None = None,
        decode_paths: tuple[Stages, ...] = (),
        portable_device: torch.device | None = None,
        v1_retry_threads: tuple[int, ...] = V1_RETRY_THREADS,
        tiling: Tiling | None = None,
    ) -> None:
        self.model = model.eval().to(device).requires_grad_(False)  # inference only (effort: leaves are latents)
        for transform in (self.model.g_a, self.model.g_s):
            group_attention(transform)  # bounded scratch, the same result (model/scratch.py)
        self.tiling = tiling or Tiling()
        self.device = device
        self.cfg = model.cfg
        self.stages: Stages = stages if stages is not None else TorchStages(self.model, device)
        self._decode_paths: dict[str, Stages] = {s.name: s for s in (*decode_paths, self.stages)}
        self.z_table, self.y_table, scale_table = prepare_entropy_tables(self.model)
        if self.y_table.num_tables > MAX_GAUSSIAN_TABLES:
            raise BitstreamError(
                f"the model has {self.y_table.num_tables} Gaussian tables; at most {MAX_GAUSSIAN_TABLES} can be "
                "coded (a portable blob's hints hold a table index in one byte)"
            )
        self.scale_table = scale_table.to(device)
        medians = self.model.entropy_bottleneck.medians().detach()
        self.z_medians = medians.reshape(1, -1, 1, 1).to(device)
        self.z_channels = medians.shape[0]
        self.portable_device = portable_device or device
        self.v1_retry_threads = tuple(v1_retry_threads)
        self._portable: EntropyPath | None = None
        self._portable_lock = threading.Lock()

    # -- backends ------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """What computes this engine's exact entropy parameters (recorded in version-1 headers)."""
        return self.stages.name

    @property
    def portable_path(self) -> EntropyPath:
        """The float64 entropy-parameter path (a copy of the entropy networks, built once)."""
        with self._portable_lock:
            if self._portable is None:
                dev, copy = self.portable_device, self.model.entropy_copy(PORTABLE_DTYPE, self.portable_device)
                bound_scratch(copy)  # bounded scratch buffers for large images (model/scratch.py)
                self._portable = EntropyPath(
                    PORTABLE,
                    TiledEntropyStages(TorchStages(copy, dev), halo=entropy_halo(self.cfg)),
                    dev,
                    PORTABLE_DTYPE,
                    self.z_medians.to(dev, PORTABLE_DTYPE),
                    self.scale_table.to(dev, PORTABLE_DTYPE),
                )
            return self._portable

    def transform_tiling(self, portable: bool) -> Tiling:
        """How ``g_a`` / ``g_s`` are tiled: the engine's tiling for portable blobs; whole for
        exact (version-1) ones, which reproduce the reference's computation for any size."""
        return self.tiling if portable else WHOLE

    def entropy_path(self, backend: str | None) -> EntropyPath:
        """The path that computes entropy parameters as a blob's ``backend`` needs, or
        :class:`BackendMismatchError`: exact (version-1) strings need the very backend that
        made them, since other stages differ in the last bits, which can move a table index
        and make the range decoder read the wrong symbols."""
        if backend in PORTABLE_METHODS:
            return self.portable_path
        if backend is None:
            stages = self.stages
        elif backend in self._decode_paths:
            stages = self._decode_paths[backend]
        else:
            raise BackendMismatchError(backend_mismatch_message(backend, tuple(self._decode_paths)))
        return EntropyPath(stages.name, stages, self.device, torch.float32, self.z_medians, self.scale_table)

    # -- compress ---------------------------------------------------------------------------
    # Batching policy: only the analysis (g_a) and synthesis (g_s) transforms run on the
    # whole batch. Everything the decoder recomputes (hyper-synthesis, SWAtten + slice
    # networks, LRP) runs one image at a time on both sides: in float32 those kernels are
    # not batch-invariant on CPU (differences of ~1e-7 between batch 1 and batch 3,
    # measured), and an exact blob's index that moved across a rounding boundary would make
    # an image encoded in one batch undecodable in another. h_a is encoder-only but also runs
    # per image, so that batched output equals one-at-a-time output byte for byte.
    @torch.no_grad()
    def analyse(
        self,
        x: Tensor,
        portable: bool = True,
        search: LatentSearch | None = None,
        pads: list[tuple[int, int, int, int]] | None = None,
    ) -> list[ImageSymbols]:
        """Padded batch (B, 3, H, W), float in [0, 1] or uint8 (converted by
        :func:`~tcm_serve.codec.padding.to_unit` one tile at a time) -> per-image symbols and
        indexes, for portable (version 2) or exact (version 1, the reference's) strings.
        ``search``: encoder effort (:mod:`tcm_serve.codec.effort`), each image's latents
        optimised before they are coded (``pads``: each image's padding, which the search does
        not score); the strings decode the same way either way."""
        self._check_padded(x)
        if search is not None:
            check_effort_size(x.shape[-2], x.shape[-1])
        g_a = self.stages.g_a if x.is_floating_point() else lambda w: self.stages.g_a(to_unit(w))
        y = self.transform_tiling(portable).analysis(
            g_a, x.to(self.device), lambda: banded_transformers(self.model.g_a)
        )
        if search is None:
            return [self.analyse_latent(y[k : k + 1], portable) for k in range(y.shape[0])]
        out = []
        for k in range(y.shape[0]):
            image = x[k : k + 1].to(self.device)
            unit = image if image.is_floating_point() else to_unit(image)
            found = search_latents(self.model, unit, y[k : k + 1], search, pads[k] if pads else NO_PADDING)
            out.append(self.analyse_latent(found.y, portable, z=found.z))
        return out

    @torch.no_grad()
    def analyse_latent(self, y: Tensor, portable: bool = True, z: Tensor | None = None) -> ImageSymbols:
        """One image's latent y (1, M, yH, yW) from ``g_a`` -> its symbols and indexes
        (h_a, then the slice chain on the portable or the exact entropy path). ``z``: the
        hyper-latent to code instead of ``h_a(y)`` (encoder effort chose both)."""
        return self._analyse_latent(y, self.entropy_path(PORTABLE if portable else None), z)

    def _analyse_latent(self, y: Tensor, path: EntropyPath, z: Tensor | None = None) -> ImageSymbols:
        if z is None:
            z = self.stages.h_a(y)
        z_sym = torch.round(z - self.z_medians).to(torch.int32)
        latent_means, latent_scales = path.stages.hyper_synthesis(path.z_hat(z_sym))
        rule = path.rule()
        y_symbols = np.empty(y.numel(), np.int32)  # filled slice by slice: no list, no concatenation
        y_indexes = np.empty(y.numel(), np.uint8)  # < MAX_GAUSSIAN_TABLES, checked on load
        decoded: list[Tensor] = []
        offset, last = 0, self.cfg.num_slices - 1
        for i, y_slice in enumerate(y.chunk(self.cfg.num_slices, 1)):
            # One slice at a time in the path's precision (a float64 copy of the whole y
            # would be the largest buffer of a big photo). The last slice's refined latent
            # conditions nothing the encoder codes.
            e = path.encode_slice(
                i, latent_means, latent_scales, decoded, y_slice.to(path.device, path.dtype), i < last
            )
            end = offset + y_slice.numel()
            y_indexes[offset:end] = rule.encoder_indexes(offset, e.scale)
            y_symbols[offset:end] = _to_numpy_i32(e.y_q).reshape(-1)
            if e.refined is not None:
                decoded.append(e.refined)
            del e
            offset = end
        return ImageSymbols(
            _to_numpy_i32(z_sym).reshape(-1),
            y_symbols,
            y_indexes,
            path.name,
            rule.hint_positions,
            rule.hint_indexes,
        )

    def z_indexes(self, plane: int) -> np.ndarray:
        """Table index of each z symbol: its channel number, channel-major."""
        return np.repeat(np.arange(self.z_channels, dtype=np.int32), plane)

    def encode_symbols(self, s: ImageSymbols) -> CodedImage:
        """Range-code one image's symbols (CPU only; releases the GIL)."""
        z_string = encode(s.z_symbols, self.z_indexes(s.z_symbols.size // self.z_channels), self.z_table)
        y_string = encode(s.y_symbols, s.y_indexes, self.y_table)
        portable = s.method in PORTABLE_METHODS
        hints = encode_hints(s.hint_positions, s.hint_indexes) if portable else b""
        return CodedImage(z_string, y_string, s.checksum(), s.method or self.backend, hints)

    def compress(self, x: Tensor, portable: bool = True) -> list[CodedImage]:
        return [self.encode_symbols(s) for s in self.analyse(x, portable)]

    # -- decompress -------------------------------------------------------------------------
    @torch.no_grad()
    def decompress(self, coded: list[CodedImage], z_shape: tuple[int, int]) -> Tensor:
        """Strings of a batch of same-size images -> padded reconstructions in [0, 1].

        Raises :class:`BitstreamError` for undecodable strings and :class:`DriftError` when
        the decoded symbols do not match the encoder's checksum.
        """
        self._check_z_shape(z_shape)
        for c in coded:  # refuse before any work
            self.entropy_path(c.backend)
        y_hat = torch.cat([self.decode_latent(c, z_shape)[0] for c in coded])
        tiling = self.transform_tiling(all(c.portable for c in coded))
        return tiling.synthesis(self.stages.g_s, y_hat, lambda: banded_transformers(self.model.g_s)).clamp_(0, 1)

    @torch.no_grad()
    def decode_latent(self, c: CodedImage, z_shape: tuple[int, int]) -> tuple[Tensor, ImageSymbols]:
        """One image's strings -> (y_hat (1, M, yH, yW), float32 on the engine's device; the
        decoded symbols and indexes).

        Version-1 strings that do not decode are retried with the thread counts that
        commonly made them (``v1_retry_threads``; on the CPU only, where the count changes
        the arithmetic) before a :class:`DriftError` says what happened and what to do.
        """
        self._check_z_shape(z_shape)
        zh, zw = z_shape
        z_syms = self._decode_z(c.z_string, self.z_indexes(zh * zw))
        path = self.entropy_path(c.backend)
        if c.portable:
            yh, yw = Geometry.from_z(z_shape).y_shape
            n_symbols = self.cfg.M * yh * yw
            hints = decode_hints(c.hints, n_symbols, self.y_table.num_tables)
            try:
                return self._decode_latent(c, z_syms, z_shape, path, path.rule(hints))
            except BitstreamError as exc:  # the container's CRC held: the bytes are as written
                raise DriftError(
                    f"entropy-parameter drift: this portable blob's y stream does not decode with the entropy "
                    f"parameters computed here ({exc}), although its container is intact: the float64 arithmetic "
                    "here deviates beyond the format's tolerance, or the blob was written wrongly; please report "
                    "it with the blob"
                ) from None
        current = path.stages.current_threads()
        tried: list[int] = []
        for k in (current, *self._retry_threads(path, current)):
            tried.append(k)
            with nullcontext() if k == current else path.stages.threads(k):
                try:
                    return self._decode_latent(c, z_syms, z_shape, path, path.rule())
                except (BitstreamError, DriftError):
                    continue
        raise DriftError(v1_drift_message(path.name, tried))

    def _decode_latent(
        self, c: CodedImage, z_syms: np.ndarray, z_shape: tuple[int, int], path: EntropyPath, rule: IndexRule
    ) -> tuple[Tensor, ImageSymbols]:
        """The slice chain of one image on ``path``, deciding indexes by ``rule``; checks the
        symbol checksum and that the y string ends where its symbols do."""
        zh, zw = z_shape
        z_sym = torch.from_numpy(z_syms).reshape(1, self.z_channels, zh, zw)
        latent_means, latent_scales = path.stages.hyper_synthesis(path.z_hat(z_sym))
        yh, yw = latent_means.shape[2:]
        decoder = RansDecoder(c.y_string)
        decoded: list[Tensor] = []
        total = self.cfg.M * yh * yw
        y_symbols = np.empty(total, np.int32)  # filled slice by slice: no list, no concatenation
        y_indexes = np.empty(total, np.uint8)  # < MAX_GAUSSIAN_TABLES, checked on load
        offset, last = 0, self.cfg.num_slices - 1
        for i in range(self.cfg.num_slices):
            p = path.decoder_params(i, latent_means, latent_scales, decoded)
            idx = rule.decoder_indexes(offset, p.scale)
            sym = decoder.decode(idx, self.y_table)
            end = offset + sym.size
            y_symbols[offset:end] = sym
            y_indexes[offset:end] = idx
            y_hat = torch.from_numpy(sym).reshape(1, -1, yh, yw).to(path.device, p.mu.dtype) + p.mu
            del idx, sym
            if p.mean_gate is not None:  # a tiled large photo: LRP finishes the attention per tile
                assert isinstance(path.stages, TiledEntropyStages)
                decoded.append(path.stages.refine_from_gate(i, p.mean_gate, y_hat))
            elif i == last and c.portable:
                # Feeds only the synthesis, so float32 on the transforms' backend will do.
                assert p.mean_support is not None
                f32 = lambda t: t.to(self.device, torch.float32)  # noqa: E731
                decoded.append(self.stages.refine(i, f32(p.mean_support), f32(y_hat)))
            else:
                assert p.mean_support is not None
                decoded.append(path.stages.refine(i, p.mean_support, y_hat))
            del p, y_hat  # a large photo's slice state is gone before the next slice's
            offset = end
        symbols = ImageSymbols(z_syms, y_symbols, y_indexes, path.name)
        y_hat = torch.cat([d.to(self.device, torch.float32) for d in decoded], dim=1)
        if symbols.checksum() != c.symbols_crc32:
            raise DriftError(
                "decoded symbols do not match the encoder's checksum: the entropy parameters "
                "differ from the encoder's (different hardware or kernels) or the stream is corrupt"
            )
        decoder.check_finished()
        return y_hat, symbols

    # -- helpers -------------------------------------------------------------------------------
    def _retry_threads(self, path: EntropyPath, current: int) -> list[int]:
        """The thread counts to retry a version-1 blob with, commonest first, then this
        machine's core count; the current count (already tried) left out. None where the
        thread count does not change the arithmetic (a GPU) or cannot be changed."""
        if not path.stages.thread_count_matters():
            return []
        out: list[int] = []
        for k in (*self.v1_retry_threads, cpu_budget()):
            if k != current and k not in out:
                out.append(k)
        return out

    def _decode_z(self, z_string: bytes, z_idx: np.ndarray) -> np.ndarray:
        # z uses fixed per-channel tables (no network in the loop), so a z stream that does
        # not end exactly where its symbols end is corrupt, never a sign of drift.
        dec = RansDecoder(z_string)
        syms = dec.decode(z_idx, self.z_table)
        dec.check_finished()
        return syms

    @staticmethod
    def _check_z_shape(z_shape: tuple[int, int]) -> None:
        """Refuse (FormatError) a header geometry this codec never writes and the networks
        cannot run on: the padded size must be what :meth:`_check_padded` allows
        (:attr:`Geometry.is_coded`), or the window attention fails on the odd shape. Such a header can
        pass every container rule (found by tests/test_fuzz.py: a CRC-valid blob whose
        z_shape is another factorisation of the same symbol count crashed the decoder)."""
        padded = Geometry.from_z(z_shape)
        if not padded.is_coded:
            zh, zw = z_shape
            raise FormatError(
                f"invalid header: padded size {padded.padded_height}x{padded.padded_width} (z_shape {zh}x{zw}) "
                f"is not one this codec produces (multiples of {ALIGN}, at least {MIN_PADDED})"
            )

    @staticmethod
    def _check_padded(x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got {tuple(x.shape)}")
        h, w = x.shape[2:]
        if not Geometry(h, w).is_coded:
            raise ValueError(f"padded size {h}x{w} must be multiples of {ALIGN} and at least {MIN_PADDED}")
