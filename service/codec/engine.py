"""Latent-level TCM codec: padded image tensors <-> the reference's two byte strings.

This is the reference ``compress()`` / ``decompress()`` reorganised for serving:

* batch-capable: a batch of same-size images runs through the transforms together and
  every image still gets its own z and y strings (the reference codes one y string per
  batch, which is why it only supports batch 1);
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

from ..errors import BitstreamError, DriftError
from ..model.tcm import TCM
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


def symbols_crc32(*arrays: np.ndarray) -> int:
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a, dtype="<i4").data, crc)
    return crc


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
    """

    def __init__(self, model: TCM, device: torch.device) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.cfg = model.cfg
        self.z_table, self.y_table, scale_table = prepare_entropy_tables(self.model)
        self.scale_table = scale_table.to(device)
        medians = self.model.entropy_bottleneck.medians().detach()
        self.z_medians = medians.reshape(1, -1, 1, 1).to(device)
        self.z_channels = medians.shape[0]

    # -- compress ---------------------------------------------------------------------------
    @torch.no_grad()
    def analyse(self, x: Tensor) -> list[ImageSymbols]:
        """Padded batch (B, 3, H, W) in [0, 1] -> per-image symbols and indexes."""
        self._check_padded(x)
        m = self.model
        y = m.g_a(x.to(self.device))
        z = m.h_a(y)
        z_sym = torch.round(z - self.z_medians).to(torch.int32)
        z_hat = z_sym.to(z.dtype) + self.z_medians
        latent_means, latent_scales = m.hyper_synthesis(z_hat)
        decoded: list[Tensor] = []
        sym_slices, idx_slices = [], []
        for i, y_slice in enumerate(y.chunk(self.cfg.num_slices, 1)):
            p = m.slice_params(i, latent_means, latent_scales, decoded)
            idx_slices.append(build_indexes(p.scale, self.scale_table))
            y_q = torch.round(y_slice - p.mu).to(torch.int32)
            sym_slices.append(y_q)
            decoded.append(m.refine(i, p.mean_support, y_q + p.mu))
        b = x.shape[0]
        z_np = _to_numpy_i32(z_sym).reshape(b, -1)
        y_np = _to_numpy_i32(torch.cat([s.reshape(b, -1) for s in sym_slices], dim=1))
        i_np = _to_numpy_i32(torch.cat([s.reshape(b, -1) for s in idx_slices], dim=1))
        return [ImageSymbols(z_np[k], y_np[k], i_np[k]) for k in range(b)]

    def z_indexes(self, plane: int) -> np.ndarray:
        """Table index of each z symbol: its channel number, channel-major."""
        return np.repeat(np.arange(self.z_channels, dtype=np.int32), plane)

    def encode_symbols(self, s: ImageSymbols) -> CodedImage:
        """Range-code one image's symbols (CPU only; releases the GIL)."""
        z_string = encode(s.z_symbols, self.z_indexes(s.z_symbols.size // self.z_channels), self.z_table)
        y_string = encode(s.y_symbols, s.y_indexes, self.y_table)
        return CodedImage(z_string, y_string, s.checksum())

    def compress(self, x: Tensor) -> list[CodedImage]:
        return [self.encode_symbols(s) for s in self.analyse(x)]

    # -- decompress -------------------------------------------------------------------------
    @torch.no_grad()
    def decompress(self, coded: list[CodedImage], z_shape: tuple[int, int]) -> Tensor:
        """Strings of a batch of same-size images -> padded reconstructions in [0, 1].

        Raises :class:`BitstreamError` for undecodable strings and :class:`DriftError` when
        the decoded symbols do not match the encoder's checksum.
        """
        zh, zw = z_shape
        b = len(coded)
        m = self.model
        plane = zh * zw
        z_idx = self.z_indexes(plane)
        z_syms = np.stack([RansDecoder(c.z_string).decode(z_idx, self.z_table) for c in coded])
        z_sym = torch.from_numpy(z_syms).reshape(b, self.z_channels, zh, zw).to(self.device)
        z_hat = z_sym.to(torch.float32) + self.z_medians
        latent_means, latent_scales = m.hyper_synthesis(z_hat)
        yh, yw = latent_means.shape[2:]
        decoders = [RansDecoder(c.y_string) for c in coded]
        decoded: list[Tensor] = []
        y_syms: list[list[np.ndarray]] = [[] for _ in range(b)]
        y_idxs: list[list[np.ndarray]] = [[] for _ in range(b)]
        for i in range(self.cfg.num_slices):
            p = m.slice_params(i, latent_means, latent_scales, decoded)
            idx = _to_numpy_i32(build_indexes(p.scale, self.scale_table)).reshape(b, -1)
            syms = []
            for k in range(b):
                s = decoders[k].decode(idx[k], self.y_table)
                syms.append(s)
                y_syms[k].append(s)
                y_idxs[k].append(idx[k])
            sym = torch.from_numpy(np.stack(syms)).reshape(b, -1, yh, yw).to(self.device)
            decoded.append(m.refine(i, p.mean_support, sym.to(p.mu.dtype) + p.mu))
        for k, c in enumerate(coded):
            crc = symbols_crc32(z_syms[k], *y_syms[k], *y_idxs[k])
            if crc != c.symbols_crc32:
                raise DriftError(
                    "decoded symbols do not match the encoder's checksum: the entropy parameters "
                    "differ from the encoder's (different hardware or kernels) or the stream is corrupt"
                )
        return m.g_s(torch.cat(decoded, dim=1)).clamp_(0, 1)

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _check_padded(x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got {tuple(x.shape)}")
        h, w = x.shape[2:]
        if h % 128 or w % 128 or h < 256 or w < 256:
            raise ValueError(f"padded size {h}x{w} must be multiples of 128 and at least 256")
