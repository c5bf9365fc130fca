"""The reference implementation's compress/decompress procedure, re-expressed as a baseline.

This is what the official LIC_TCM ``TCM.compress`` / ``TCM.decompress`` do on CompressAI
1.2.0, step by step, on *our* model modules (the same weights and the same float
computation order, so the strings are the same as the exact path's). What makes it the
reference rather than our codec is the procedure around the networks:

* symbols and indexes leave the tensors with ``.tolist()`` per slice and are appended to
  Python lists; the coder is called with Python lists (CompressAI's pybind11 coder
  converts every list, including the 64 x 3133 CDF table, on every call);
* ``compress`` decodes the z string again to get ``z_hat`` (the official code does);
* ``decompress`` converts the CDF table from Python lists on every slice's decode call and
  rebuilds each slice from a Python list of decoded values;
* no allocator tuning, ``torch.no_grad`` (not inference mode).

CompressAI itself is not installed here (its wheel pulls a CUDA torch; docs/codec.md), so
the list-taking coder calls are stand-ins that convert the lists exactly as pybind11 does
(list -> contiguous int32 buffer) and then run this project's C coder, which produces the
same bytes as CompressAI's. The reference's C++ coder loops are at least as slow as ours
(measured under 1% of the time either way), so the stand-in flatters the baseline, if
anything.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tcm_serve.codec.rans import EntropyTable, RansDecoder, encode
from tcm_serve.codec.tables import build_indexes
from tcm_serve.model import layers
from tcm_serve.model.tcm import TCM


# -- the reference's window attention: out-of-place, mask and bias rebuilt on every call -----
def _reference_wmsa_forward(self: layers.WMSA, x: Tensor) -> Tensor:
    p = self.window_size
    if self.shifted:
        x = torch.roll(x, shifts=(-(p // 2), -(p // 2)), dims=(1, 2))
    x, hw, ww = layers.window_partition(x, p)
    qkv = self.embedding_layer(x)
    b, nw, np_, _ = qkv.shape
    qkv = qkv.view(b, nw, np_, 3 * self.n_heads, self.head_dim).permute(3, 0, 1, 2, 4)
    q, k, v = qkv.chunk(3, dim=0)
    sim = torch.einsum("hbwpc,hbwqc->hbwpq", q, k) * self.scale
    idx = self._rel_index
    sim = sim + self.relative_position_params[:, idx[:, :, 0], idx[:, :, 1]][:, None, None]
    if self.shifted:
        sim = sim.masked_fill_(layers.shifted_window_mask(hw, ww, p, sim.device), float("-inf"))
    probs = F.softmax(sim, dim=-1)
    out = torch.einsum("hbwij,hbwjc->hbwic", probs, v)
    out = out.permute(1, 2, 3, 0, 4).reshape(b, nw, np_, self.n_heads * self.head_dim)
    out = layers.window_merge(self.linear(out), hw, ww, p)
    if self.shifted:
        out = torch.roll(out, shifts=(p // 2, p // 2), dims=(1, 2))
    return out


def use_reference_attention() -> None:
    """Make every WMSA in this process compute attention as the official code does
    (our layers do the same arithmetic in place, with cached masks and bias)."""
    layers.WMSA.forward = _reference_wmsa_forward


# -- CompressAI-style list-taking coder calls (stand-ins, see the module docstring) ----------
def _table(cdf: list, cdf_lengths: list, offsets: list) -> EntropyTable:
    return EntropyTable(
        np.asarray(cdf, dtype=np.int32), np.asarray(cdf_lengths, dtype=np.int32), np.asarray(offsets, dtype=np.int32)
    )


def encode_with_indexes(symbols: list, indexes: list, cdf: list, cdf_lengths: list, offsets: list) -> bytes:
    return encode(
        np.asarray(symbols, dtype=np.int32), np.asarray(indexes, dtype=np.int32), _table(cdf, cdf_lengths, offsets)
    )


class ListRansDecoder:
    def __init__(self, stream: bytes) -> None:
        self._dec = RansDecoder(stream)

    def decode_stream(self, indexes: list, cdf: list, cdf_lengths: list, offsets: list) -> list:
        return self._dec.decode(np.asarray(indexes, dtype=np.int32), _table(cdf, cdf_lengths, offsets)).tolist()


# -- the procedure ------------------------------------------------------------------------
def _tables(module) -> tuple[list, list, list]:
    return (
        module._quantized_cdf.tolist(),
        module._cdf_length.reshape(-1).int().tolist(),
        module._offset.reshape(-1).int().tolist(),
    )


def _z_indexes(model: TCM, size: torch.Size) -> Tensor:
    c = model.entropy_bottleneck.channels
    return torch.arange(c).view(1, -1, 1, 1).expand(size[0], c, size[2], size[3]).int()


def _eb_compress(model: TCM, z: Tensor) -> list[bytes]:
    indexes = _z_indexes(model, z.size())
    medians = model.entropy_bottleneck.medians().detach().reshape(1, -1, 1, 1)
    symbols = torch.round(z - medians).int()
    cdf, lengths, offsets = _tables(model.entropy_bottleneck)
    return [
        encode_with_indexes(symbols[i].reshape(-1).tolist(), indexes[i].reshape(-1).tolist(), cdf, lengths, offsets)
        for i in range(z.size(0))
    ]


def _eb_decompress(model: TCM, strings: list[bytes], shape: tuple[int, int]) -> Tensor:
    eb = model.entropy_bottleneck
    size = torch.Size((len(strings), eb.channels, *shape))
    indexes = _z_indexes(model, size)
    cdf, lengths, offsets = _tables(eb)
    out = torch.empty(size)
    for i, s in enumerate(strings):
        values = ListRansDecoder(s).decode_stream(indexes[i].reshape(-1).tolist(), cdf, lengths, offsets)
        out[i] = torch.tensor(values).reshape(size[1:])
    return out + eb.medians().detach().reshape(1, -1, 1, 1)


@torch.no_grad()
def compress(model: TCM, x: Tensor) -> dict:
    """The official ``compress``: batch 1, returns ``{"strings": [[y], [z]], "shape": ...}``."""
    y = model.g_a(x)
    y_shape = y.shape[2:]
    z = model.h_a(y)
    z_strings = _eb_compress(model, z)
    z_hat = _eb_decompress(model, z_strings, z.size()[-2:])
    latent_scales = model.h_scale_s(z_hat)
    latent_means = model.h_mean_s(z_hat)
    gc = model.gaussian_conditional
    cdf, lengths, offsets = _tables(gc)
    symbols_list: list[int] = []
    indexes_list: list[int] = []
    y_hat_slices: list[Tensor] = []
    for i, y_slice in enumerate(y.chunk(model.cfg.num_slices, 1)):
        p = model.slice_params(i, latent_means, latent_scales, y_hat_slices)
        index = build_indexes(p.scale, gc.scale_table)
        y_q = torch.round(y_slice - p.mu)
        y_hat_slice = y_q + p.mu
        symbols_list.extend(y_q.int().reshape(-1).tolist())
        indexes_list.extend(index.reshape(-1).tolist())
        y_hat_slices.append(model.refine(i, p.mean_support, y_hat_slice))
    y_string = encode_with_indexes(symbols_list, indexes_list, cdf, lengths, offsets)
    return {"strings": [[y_string], z_strings], "shape": tuple(z.size()[-2:]), "y_shape": tuple(y_shape)}


@torch.no_grad()
def decompress(model: TCM, strings: list, shape: tuple[int, int]) -> Tensor:
    """The official ``decompress``: strings and z shape -> clamped reconstruction."""
    z_hat = _eb_decompress(model, strings[1], shape)
    latent_scales = model.h_scale_s(z_hat)
    latent_means = model.h_mean_s(z_hat)
    y_shape = [z_hat.shape[2] * 4, z_hat.shape[3] * 4]
    gc = model.gaussian_conditional
    cdf, lengths, offsets = _tables(gc)
    decoder = ListRansDecoder(strings[0][0])
    y_hat_slices: list[Tensor] = []
    for i in range(model.cfg.num_slices):
        p = model.slice_params(i, latent_means, latent_scales, y_hat_slices)
        index = build_indexes(p.scale, gc.scale_table)
        # the binding converts the Python-list CDF table to vectors on every call
        rv = decoder.decode_stream(index.reshape(-1).tolist(), cdf, lengths, offsets)
        rv = torch.Tensor(rv).reshape(1, -1, y_shape[0], y_shape[1])
        y_hat_slices.append(model.refine(i, p.mean_support, rv + p.mu))
    return model.g_s(torch.cat(y_hat_slices, dim=1)).clamp_(0, 1)
