"""Latent-level TCM codec: padded image tensors <-> the reference's two byte strings.

This is the reference ``compress()`` / ``decompress()`` reorganised for serving:

* batch-capable: a batch of same-size images runs through the analysis/synthesis
  transforms together and every image still gets its own z and y strings (the reference
  codes one y string per batch, which is why it only supports batch 1); see the batching
  policy note below for why the entropy-parameter path runs per image;
* split into a tensor stage (:meth:`Engine.analyse`, device work) and a range-coding stage
  (:func:`encode_symbols`, CPU, GIL released) so that a server can overlap them;
* vectorised: symbols and indexes leave the device once per slice as int32 arrays; no
  Python per-symbol loops, no ``.tolist()``.

The strings are byte-identical to the reference for the same padded input.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import BackendMismatchError, BitstreamError, DriftError, FormatError
from ..model.tcm import TCM
from .backends import Stages, TorchStages
from .rans import EntropyTable, RansDecoder, encode
from .tables import bottleneck_table, build_indexes, default_scale_table, gaussian_table

#: Spatial downsampling of y and z relative to the (padded) image.
Y_STRIDE = 16
Z_STRIDE = 64


@dataclass
class ImageSymbols:
    """Everything the range coder needs for one image, as flat int32 arrays."""

    z_symbols: np.ndarray  # (192 * zH * zW,), channel-major
    y_symbols: np.ndarray  # (320 * yH * yW,), slice 0 channel-major, then slice 1, ...
    y_indexes: np.ndarray  # Gaussian table index of each y symbol

    def checksum(self) -> int:
        """CRC32 of z symbols, y symbols and y indexes (int32 little-endian), stored in the
        container so that a decoder whose entropy parameters drifted fails loudly."""
        return symbols_crc32(self.z_symbols, self.y_symbols, self.y_indexes)


@dataclass
class CodedImage:
    z_string: bytes
    y_string: bytes
    symbols_crc32: int
    #: Backend that computed the entropy parameters (the header's ``backend``). Decoding
    #: uses the same one or refuses; ``None`` means the engine's own backend.
    backend: str | None = None


def symbols_crc32(*arrays: np.ndarray) -> int:
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a, dtype="<i4").data, crc)
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


def _table_from_buffers(module: torch.nn.Module) -> EntropyTable | None:
    if module._quantized_cdf.numel() == 0:
        return None
    table = EntropyTable(
        cdf=_to_numpy_i32(module._quantized_cdf),
        cdf_length=_to_numpy_i32(module._cdf_length).reshape(-1),
        offset=_to_numpy_i32(module._offset).reshape(-1),
    )
    table.validate()
    return table


def _store_table(module: torch.nn.Module, table: EntropyTable) -> None:
    device = module._offset.device
    module._quantized_cdf = torch.from_numpy(table.cdf.copy()).to(device)
    module._cdf_length = torch.from_numpy(table.cdf_length.copy()).to(device)
    module._offset = torch.from_numpy(table.offset.copy()).to(device)


def prepare_entropy_tables(model: TCM) -> tuple[EntropyTable, EntropyTable, Tensor]:
    """The reference ``update()``: build the z and y tables unless the checkpoint already
    holds them (then, like the reference, keep the stored ones). Returns (z table,
    y table, scale table) and writes them into the model's buffers."""
    eb, gc = model.entropy_bottleneck, model.gaussian_conditional
    with torch.no_grad():
        z_table = _table_from_buffers(eb)
        if z_table is None:
            cpu = lambda ts: [t.detach().float().cpu() for t in ts]  # noqa: E731
            z_table = bottleneck_table(eb.quantiles.detach().cpu(), cpu(eb.matrices()), cpu(eb.biases()), cpu(eb.factors()))
            _store_table(eb, z_table)
        y_table = _table_from_buffers(gc)
        if y_table is None or gc.scale_table.numel() == 0:
            scale_table = default_scale_table()
            y_table = gaussian_table(scale_table)
            gc.scale_table = scale_table.to(gc.scale_table.device)
            _store_table(gc, y_table)
    if z_table.cdf.shape[0] != eb.channels:
        raise BitstreamError(f"z table has {z_table.cdf.shape[0]} rows for {eb.channels} channels")
    if y_table.cdf.shape[0] != gc.scale_table.numel():
        raise BitstreamError(f"y table has {y_table.cdf.shape[0]} rows for {gc.scale_table.numel()} scales")
    return z_table, y_table, gc.scale_table.detach().clone()


class Engine:
    """A loaded TCM model with its entropy tables, ready to code latents.

    Construct once per model and device; it is stateless per request, so one engine may
    serve consecutive batches (but not concurrent calls from several threads at once on the
    same device: the caller serialises device work).

    ``stages`` runs the networks (default: the model itself on ``device``, the exact path;
    see :mod:`service.codec.backends`). Its ``name`` is what the engine's strings record as
    the backend of their entropy parameters. ``decode_paths`` are further stages this
    engine can decode with, for strings whose entropy parameters another backend computed
    (e.g. an ONNX engine also decodes ``torch-cpu`` strings with the model itself).
    """

    def __init__(self, model: TCM, device: torch.device, stages: Stages | None = None, decode_paths: tuple[Stages, ...] = ()) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.cfg = model.cfg
        self.stages: Stages = stages if stages is not None else TorchStages(self.model, device)
        self._decode_paths: dict[str, Stages] = {s.name: s for s in (*decode_paths, self.stages)}
        self.z_table, self.y_table, scale_table = prepare_entropy_tables(self.model)
        self.scale_table = scale_table.to(device)
        medians = self.model.entropy_bottleneck.medians().detach()
        self.z_medians = medians.reshape(1, -1, 1, 1).to(device)
        self.z_channels = medians.shape[0]

    # -- backends ------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """What computes this engine's entropy parameters (recorded in every header)."""
        return self.stages.name

    @property
    def decodable_backends(self) -> tuple[str, ...]:
        return tuple(self._decode_paths)

    def entropy_path(self, backend: str | None) -> Stages:
        """The stages that recompute entropy parameters exactly as ``backend`` did, or
        :class:`BackendMismatchError`: other stages differ in the last bits, which can move
        a table index and make the range decoder read the wrong symbols."""
        if backend is None:
            return self.stages
        path = self._decode_paths.get(backend)
        if path is None:
            raise BackendMismatchError(backend_mismatch_message(backend, tuple(self._decode_paths)))
        return path

    # -- compress ---------------------------------------------------------------------------
    # Batching policy: only the analysis (g_a) and synthesis (g_s) transforms run on the
    # whole batch. Everything the decoder recomputes (hyper-synthesis, SWAtten + slice
    # networks, LRP) runs one image at a time on both sides: those kernels are not
    # batch-invariant on CPU (differences of ~1e-7 between batch 1 and batch 3, measured),
    # and an index or symbol that moved across a rounding boundary would make an image
    # encoded in one batch undecodable in another. h_a is encoder-only but also runs per
    # image, so that batched output equals one-at-a-time output byte for byte.
    @torch.no_grad()
    def analyse(self, x: Tensor) -> list[ImageSymbols]:
        """Padded batch (B, 3, H, W) in [0, 1] -> per-image symbols and indexes."""
        self._check_padded(x)
        y = self.stages.g_a(x.to(self.device))
        return [self._analyse_latent(y[k : k + 1]) for k in range(y.shape[0])]

    def _analyse_latent(self, y: Tensor) -> ImageSymbols:
        m = self.stages
        z = m.h_a(y)
        z_sym = torch.round(z - self.z_medians).to(torch.int32)
        z_hat = z_sym.to(z.dtype) + self.z_medians
        latent_means, latent_scales = m.hyper_synthesis(z_hat)
        decoded: list[Tensor] = []
        sym_slices, idx_slices = [], []
        for i, y_slice in enumerate(y.chunk(self.cfg.num_slices, 1)):
            p = m.slice_params(i, latent_means, latent_scales, decoded)
            idx_slices.append(build_indexes(p.scale, self.scale_table).reshape(-1))
            y_q = torch.round(y_slice - p.mu).to(torch.int32)
            sym_slices.append(y_q.reshape(-1))
            decoded.append(m.refine(i, p.mean_support, y_q + p.mu))
        return ImageSymbols(
            _to_numpy_i32(z_sym).reshape(-1), _to_numpy_i32(torch.cat(sym_slices)), _to_numpy_i32(torch.cat(idx_slices))
        )

    def z_indexes(self, plane: int) -> np.ndarray:
        """Table index of each z symbol: its channel number, channel-major."""
        return np.repeat(np.arange(self.z_channels, dtype=np.int32), plane)

    def encode_symbols(self, s: ImageSymbols) -> CodedImage:
        """Range-code one image's symbols (CPU only; releases the GIL)."""
        z_string = encode(s.z_symbols, self.z_indexes(s.z_symbols.size // self.z_channels), self.z_table)
        y_string = encode(s.y_symbols, s.y_indexes, self.y_table)
        return CodedImage(z_string, y_string, s.checksum(), self.backend)

    def compress(self, x: Tensor) -> list[CodedImage]:
        return [self.encode_symbols(s) for s in self.analyse(x)]

    # -- decompress -------------------------------------------------------------------------
    @torch.no_grad()
    def decompress(self, coded: list[CodedImage], z_shape: tuple[int, int]) -> Tensor:
        """Strings of a batch of same-size images -> padded reconstructions in [0, 1].

        Raises :class:`BitstreamError` for undecodable strings and :class:`DriftError` when
        the decoded symbols do not match the encoder's checksum.
        """
        self._check_z_shape(z_shape)
        paths = [self.entropy_path(c.backend) for c in coded]  # refuse before any work
        y_hat = torch.cat([self._decode_latent(c, z_shape, p) for c, p in zip(coded, paths)])
        return self.stages.g_s(y_hat).clamp_(0, 1)

    def _decode_latent(self, c: CodedImage, z_shape: tuple[int, int], m: Stages) -> Tensor:
        """One image's strings -> y_hat (1, M, yH, yW) with the entropy-parameter stages
        ``m``, checking the symbol checksum."""
        zh, zw = z_shape
        z_syms = self._decode_z(c.z_string, self.z_indexes(zh * zw))
        z_hat = torch.from_numpy(z_syms).reshape(1, self.z_channels, zh, zw).to(self.device, torch.float32)
        latent_means, latent_scales = m.hyper_synthesis(z_hat + self.z_medians)
        yh, yw = latent_means.shape[2:]
        decoder = RansDecoder(c.y_string)
        decoded: list[Tensor] = []
        y_syms: list[np.ndarray] = []
        y_idxs: list[np.ndarray] = []
        for i in range(self.cfg.num_slices):
            p = m.slice_params(i, latent_means, latent_scales, decoded)
            idx = _to_numpy_i32(build_indexes(p.scale, self.scale_table)).reshape(-1)
            sym = decoder.decode(idx, self.y_table)
            y_syms.append(sym)
            y_idxs.append(idx)
            y_q = torch.from_numpy(sym).reshape(1, -1, yh, yw).to(self.device, p.mu.dtype)
            decoded.append(m.refine(i, p.mean_support, y_q + p.mu))
        if symbols_crc32(z_syms, *y_syms, *y_idxs) != c.symbols_crc32:
            raise DriftError(
                "decoded symbols do not match the encoder's checksum: the entropy parameters "
                "differ from the encoder's (different hardware or kernels) or the stream is corrupt"
            )
        decoder.check_finished()
        return torch.cat(decoded, dim=1)

    # -- helpers -------------------------------------------------------------------------------
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
        cannot run on: the padded size must be what :meth:`_check_padded` allows (z even
        and at least 4), or the window attention fails on the odd shape. Such a header can
        pass every container rule (found by tests/test_fuzz.py: a CRC-valid blob whose
        z_shape is another factorisation of the same symbol count crashed the decoder)."""
        zh, zw = z_shape
        if zh % 2 or zw % 2 or zh < 4 or zw < 4:
            raise FormatError(
                f"invalid header: padded size {64 * zh}x{64 * zw} (z_shape {zh}x{zw}) is not one this codec "
                "produces (multiples of 128, at least 256)"
            )

    @staticmethod
    def _check_padded(x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got {tuple(x.shape)}")
        h, w = x.shape[2:]
        if h % 128 or w % 128 or h < 256 or w < 256:
            raise ValueError(f"padded size {h}x{w} must be multiples of 128 and at least 256")
