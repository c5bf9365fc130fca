"""Entropy tables of TCM's two entropy models, built once at model load.

Semantics and float arithmetic follow CompressAI 1.2.0's ``update()`` step by step (torch
float32 on CPU, same operation order), so that the integer tables equal the reference
tables bit for bit:

* :func:`gaussian_table`: ``GaussianConditional.update`` for a scale table;
* :func:`bottleneck_table`: ``EntropyBottleneck.update`` of CompressAI <= 1.2.4, i.e. with
  the "sign trick" (1.2.6 and later build different z tables);
* :func:`build_indexes`: ``GaussianConditional.build_indexes`` (scale -> table row);
* :func:`logits_cumulative`: the EntropyBottleneck's cumulative-logit network, shared
  with the model's likelihood.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .rans import EntropyTable, quantize_cdf

__all__ = [
    "SCALE_BOUND",
    "SCALE_TABLE_MIN",
    "SCALE_TABLE_MAX",
    "SCALE_TABLE_LEVELS",
    "default_scale_table",
    "gaussian_table",
    "logits_cumulative",
    "bottleneck_table",
    "build_indexes",
]

SCALE_BOUND = 0.11
SCALE_TABLE_MIN = 0.11
SCALE_TABLE_MAX = 256.0
SCALE_TABLE_LEVELS = 64


def default_scale_table(
    minimum: float = SCALE_TABLE_MIN, maximum: float = SCALE_TABLE_MAX, levels: int = SCALE_TABLE_LEVELS
) -> Tensor:
    """exp of ``levels`` float32 values linearly spaced from ln(minimum) to ln(maximum)."""
    return torch.exp(torch.linspace(math.log(minimum), math.log(maximum), levels, dtype=torch.float32))


def _standardized_cumulative(x: Tensor) -> Tensor:
    # Phi(x) = 0.5 * erfc(-x / sqrt(2)), in the reference's operation order.
    half = float(0.5)
    const = float(-(2**-0.5))
    return half * torch.erfc(const * x)


def _quantize_rows(pmf: Tensor, tail_mass: Tensor, pmf_length: Tensor, max_length: int) -> np.ndarray:
    """Per row: pmf[:length] + tail -> 16-bit CDF, zero-padded to max_length + 2 columns."""
    pmf_np = pmf.detach().to(torch.float32).cpu().numpy()
    tail_np = tail_mass.detach().to(torch.float32).cpu().numpy().reshape(-1)
    lengths = pmf_length.detach().cpu().numpy().astype(np.int64)
    cdf = np.zeros((len(lengths), max_length + 2), dtype=np.int32)
    for i, n in enumerate(lengths):
        prob = np.concatenate((pmf_np[i, :n], tail_np[i : i + 1])).astype(np.float32)
        row = quantize_cdf(prob)
        cdf[i, : row.size] = row
    return cdf


@torch.no_grad()
def gaussian_table(scale_table: Tensor, tail_mass: float = 1e-9) -> EntropyTable:
    """CDF tables of the conditional Gaussian (CompressAI ``GaussianConditional.update``).

    Row k: a zero-mean Gaussian of scale ``scale_table[k]`` discretised on the integers
    within +-ceil(scale * 6.109...) (the tail_mass/2 quantile), plus the tail mass as the
    escape bin.
    """
    scale_table = torch.as_tensor(scale_table).detach().to(device="cpu", dtype=torch.float32).reshape(-1)
    if scale_table.numel() < 1 or not bool(torch.all(torch.isfinite(scale_table) & (scale_table > 0))):
        raise ValueError("scale_table must be a non-empty tensor of positive finite scales")
    # CompressAI uses scipy.stats.norm.ppf; NormalDist.inv_cdf agrees to float64 rounding,
    # and the product below is computed in float32 anyway.
    multiplier = -NormalDist().inv_cdf(tail_mass / 2)
    pmf_center = torch.ceil(scale_table * multiplier).int()
    pmf_length = 2 * pmf_center + 1
    max_length = int(torch.max(pmf_length).item())

    samples = torch.abs(torch.arange(max_length).int() - pmf_center[:, None])
    samples_scale = scale_table.unsqueeze(1)
    samples = samples.float()
    samples_scale = samples_scale.float()
    upper = _standardized_cumulative((0.5 - samples) / samples_scale)
    lower = _standardized_cumulative((-0.5 - samples) / samples_scale)
    pmf = upper - lower
    tail = 2 * lower[:, :1]

    cdf = _quantize_rows(pmf, tail, pmf_length, max_length)
    return EntropyTable(cdf=cdf, cdf_length=(pmf_length + 2).numpy(), offset=(-pmf_center).numpy())


def logits_cumulative(
    x: Tensor, matrices: Sequence[Tensor], biases: Sequence[Tensor], factors: Sequence[Tensor]
) -> Tensor:
    """Cumulative logits of the EntropyBottleneck density (Ballé et al. 2018, appendix 6.1).

    x: (C, 1, L); matrices[i]: (C, out_i, in_i); biases[i]: (C, out_i, 1); factors[i]:
    (C, out_i, 1) for every layer but the last. Per layer: x = softplus(matrix) @ x + bias,
    then (except after the last layer) x += tanh(factor) * tanh(x). Differentiable.
    """
    if len(biases) != len(matrices) or len(factors) != len(matrices) - 1:
        raise ValueError("need one bias per matrix and one factor per matrix but the last")
    logits = x
    for i, matrix in enumerate(matrices):
        logits = torch.matmul(F.softplus(matrix), logits)
        logits = logits + biases[i]
        if i < len(factors):
            logits = logits + torch.tanh(factors[i]) * torch.tanh(logits)
    return logits


@torch.no_grad()
def bottleneck_table(
    quantiles: Tensor, matrices: Sequence[Tensor], biases: Sequence[Tensor], factors: Sequence[Tensor]
) -> EntropyTable:
    """CDF tables of the EntropyBottleneck, CompressAI 1.2.0 ``update()`` (sign trick).

    quantiles: (C, 1, 3) = (lower, median, upper) per channel. Row c covers the integer
    offsets -minima..maxima around the median, plus the tail mass as the escape bin.
    """
    quantiles = quantiles.detach().cpu()
    if quantiles.dim() != 3 or quantiles.shape[1:] != (1, 3):
        raise ValueError(f"quantiles must have shape (C, 1, 3), got {tuple(quantiles.shape)}")
    if not bool(torch.all(torch.isfinite(quantiles))):
        raise ValueError("quantiles must be finite")
    matrices = [m.detach().cpu() for m in matrices]
    biases = [b.detach().cpu() for b in biases]
    factors = [f.detach().cpu() for f in factors]

    medians = quantiles[:, 0, 1]
    minima = medians - quantiles[:, 0, 0]
    minima = torch.ceil(minima).int()
    minima = torch.clamp(minima, min=0)
    maxima = quantiles[:, 0, 2] - medians
    maxima = torch.ceil(maxima).int()
    maxima = torch.clamp(maxima, min=0)

    offset = -minima
    pmf_start = medians - minima
    pmf_length = maxima + minima + 1
    max_length = int(pmf_length.max().item())

    samples = torch.arange(max_length)
    samples = samples[None, :] + pmf_start[:, None, None]  # (C, 1, max_length) float32
    half = float(0.5)
    lower = logits_cumulative(samples - half, matrices, biases, factors)
    upper = logits_cumulative(samples + half, matrices, biases, factors)
    sign = -torch.sign(lower + upper)
    pmf = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
    pmf = pmf[:, 0, :]
    # As in the reference: the upper tail is taken at the last column of the padded
    # sample grid (max_length - 1), not at each channel's own last sample.
    tail = torch.sigmoid(lower[:, 0, :1]) + torch.sigmoid(-upper[:, 0, -1:])

    cdf = _quantize_rows(pmf, tail, pmf_length, max_length)
    return EntropyTable(cdf=cdf, cdf_length=(pmf_length + 2).numpy(), offset=offset.numpy())


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
        idx = torch.searchsorted(head.contiguous(), scales.contiguous().reshape(-1), right=False)
        idx = idx.reshape(scales.shape)
        idx = torch.where(torch.isnan(scales), torch.full_like(idx, last), idx)
        return idx.to(torch.int32)
    # Unsorted table: the reference loop, vectorised per entry.
    indexes = torch.full(scales.shape, last, dtype=torch.int32, device=scales.device)
    for s in head:
        indexes -= (scales <= s).int()
    return indexes
