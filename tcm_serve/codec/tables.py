"""Coder tables of TCM's two entropy models: the model's probabilities, quantised.

The probabilities are the model's (:mod:`tcm_serve.model.probability`: CompressAI 1.2.0's
``update()`` step by step, torch float32 on CPU, same operation order); this module turns
them into the integer tables the range coder reads, so that they equal the reference
tables bit for bit:

* :func:`quantize_pmf`: a :class:`~tcm_serve.model.probability.DiscretePmf` -> 16-bit CDF
  rows (CompressAI's ``pmf_to_quantized_cdf`` per row);
* :func:`gaussian_table`: ``GaussianConditional.update`` for a scale table;
* :func:`bottleneck_table`: ``EntropyBottleneck.update`` of CompressAI <= 1.2.4, i.e. with
  the "sign trick" (1.2.6 and later build different z tables);
* :func:`prepare_entropy_tables`: the reference ``update()`` of a whole model, keeping
  tables a checkpoint already holds;
* :func:`build_indexes`: ``GaussianConditional.build_indexes`` (scale -> table row).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import BitstreamError
from ..model.entropy import EntropyBottleneck, GaussianConditional
from ..model.probability import (
    SCALE_BOUND,
    TAIL_MASS,
    DiscretePmf,
    bottleneck_pmf,
    default_scale_table,
    gaussian_pmf,
)
from ..model.tcm import TCM
from .rans import EntropyTable, quantize_cdf

__all__ = [
    "quantize_pmf",
    "gaussian_table",
    "bottleneck_table",
    "prepare_entropy_tables",
    "build_indexes",
]


def quantize_pmf(p: DiscretePmf) -> EntropyTable:
    """Per row: pmf[:length] + tail -> 16-bit CDF, zero-padded to max(length) + 2 columns."""
    pmf_np = p.pmf.detach().to(torch.float32).cpu().numpy()
    tail_np = p.tail.detach().to(torch.float32).cpu().numpy().reshape(-1)
    lengths = p.length.detach().cpu().numpy().astype(np.int64)
    cdf = np.zeros((len(lengths), p.pmf.shape[1] + 2), dtype=np.int32)
    for i, n in enumerate(lengths):
        prob = np.concatenate((pmf_np[i, :n], tail_np[i : i + 1])).astype(np.float32)
        row = quantize_cdf(prob)
        cdf[i, : row.size] = row
    return EntropyTable(cdf=cdf, cdf_length=(p.length + 2).numpy(), offset=p.offset.numpy())


def gaussian_table(scale_table: Tensor, tail_mass: float = TAIL_MASS) -> EntropyTable:
    """CDF tables of the conditional Gaussian (CompressAI ``GaussianConditional.update``):
    row k for a zero-mean Gaussian of scale ``scale_table[k]`` (:func:`gaussian_pmf`)."""
    return quantize_pmf(gaussian_pmf(scale_table, tail_mass))


def bottleneck_table(
    quantiles: Tensor, matrices: Sequence[Tensor], biases: Sequence[Tensor], factors: Sequence[Tensor]
) -> EntropyTable:
    """CDF tables of the EntropyBottleneck, CompressAI 1.2.0 ``update()`` (sign trick):
    row c for channel c's learned density (:func:`bottleneck_pmf`)."""
    return quantize_pmf(bottleneck_pmf(quantiles, matrices, biases, factors))


def _table_from_buffers(module: EntropyBottleneck | GaussianConditional) -> EntropyTable | None:
    """The table an entropy model's buffers hold, or None where they are empty (a
    checkpoint saved before ``update()``)."""
    if module._quantized_cdf.numel() == 0:
        return None
    # EntropyTable makes validated, read-only int32 copies.
    cdf, length, offset = (
        t.detach().cpu().numpy() for t in (module._quantized_cdf, module._cdf_length, module._offset)
    )
    return EntropyTable(cdf=cdf, cdf_length=length.reshape(-1), offset=offset.reshape(-1))


def _store_table(module: EntropyBottleneck | GaussianConditional, table: EntropyTable) -> None:
    """Write ``table`` into an entropy model's buffers, where the checkpoint keeps it."""
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
            z_table = quantize_pmf(eb.pmf())
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


def build_indexes(scales: Tensor, scale_table: Tensor) -> Tensor:
    """Table row per scale (CompressAI ``GaussianConditional.build_indexes``).

    After lower-bounding at 0.11: index = number of the first ``len(table) - 1`` table
    entries that are strictly below the scale (reference loop: start at len-1 and subtract
    one for every such entry s with scale <= s). NaN scales get the last index, like the
    reference. float64 scales are compared in float64, everything else in float32.
    """
    scales = torch.as_tensor(scales)
    dtype = torch.float64 if scales.dtype == torch.float64 else torch.float32
    scales = scales.detach().to(dtype)
    table = torch.as_tensor(scale_table).detach().to(device=scales.device, dtype=dtype).reshape(-1)
    last = table.numel() - 1
    if last < 0:
        raise ValueError("scale_table is empty")
    bound = torch.tensor(SCALE_BOUND, dtype=torch.float32).to(device=scales.device, dtype=dtype)
    scales = torch.maximum(scales, bound)  # NaN stays NaN, as with torch.max in the reference
    head = table[:last]
    if head.numel() == 0:
        return torch.zeros(scales.shape, dtype=torch.int32, device=scales.device)
    if head.numel() == 1 or bool(torch.all(head[1:] > head[:-1])):
        # count of head entries < scale; searchsorted needs NaN handled separately.
        idx = torch.searchsorted(head.contiguous(), scales.contiguous().reshape(-1), right=False, out_int32=True)
        return idx.reshape(scales.shape).masked_fill_(torch.isnan(scales), last)
    # Unsorted table: the reference loop, vectorised per entry.
    indexes = torch.full(scales.shape, last, dtype=torch.int32, device=scales.device)
    for s in head:
        indexes -= (scales <= s).int()
    return indexes
