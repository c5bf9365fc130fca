"""The probability model of TCM's two entropy models: its constants, CDFs and discrete pmfs.

This is the model's own math, as CompressAI's entropy models hold it: the likelihoods used
in ``forward`` and training (:mod:`tcm_serve.model.entropy`) and the discretised
distributions the coder tables are made of (CompressAI's ``update()`` up to the point
where probabilities become integers). Turning a :class:`DiscretePmf` into quantised coder
tables is the codec's job (:mod:`tcm_serve.codec.tables`), which imports from here; this
module never imports the codec.

Every float operation keeps the reference's order (torch float32 on CPU for the tables):
the integer tables built from these values must equal the reference tables bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LIKELIHOOD_BOUND",
    "TAIL_MASS",
    "SCALE_BOUND",
    "SCALE_TABLE_MIN",
    "SCALE_TABLE_MAX",
    "SCALE_TABLE_LEVELS",
    "DiscretePmf",
    "default_scale_table",
    "standardized_cumulative",
    "gaussian_cdf_bounds",
    "logits_cumulative",
    "sign_trick_mass",
    "gaussian_pmf",
    "bottleneck_pmf",
]

#: Likelihoods are bounded below by this (their logarithm is the rate).
LIKELIHOOD_BOUND = 1e-9
#: Probability mass both entropy models leave outside their tables' ranges (the escape bin).
TAIL_MASS = 1e-9
#: Gaussian scales are bounded below by this, in the likelihood and in the table index.
SCALE_BOUND = 0.11
#: The Gaussian tables' scales: SCALE_TABLE_LEVELS values log-spaced in [MIN, MAX].
SCALE_TABLE_MIN = 0.11
SCALE_TABLE_MAX = 256.0
SCALE_TABLE_LEVELS = 64


@dataclass(frozen=True)
class DiscretePmf:
    """One entropy model's distributions over integers, one row per coder table.

    Row k covers ``length[k]`` consecutive values starting at ``offset[k]``: their
    probabilities are ``pmf[k, :length[k]]`` (the rest of the row is unused), and
    ``tail[k]`` is the mass outside that range, which the coder spends on an escape symbol.
    """

    pmf: Tensor  # (K, L) float32, L = max(length)
    tail: Tensor  # (K, 1) float32
    length: Tensor  # (K,) int32
    offset: Tensor  # (K,) int32


def default_scale_table(
    minimum: float = SCALE_TABLE_MIN, maximum: float = SCALE_TABLE_MAX, levels: int = SCALE_TABLE_LEVELS
) -> Tensor:
    """exp of ``levels`` float32 values linearly spaced from ln(minimum) to ln(maximum)."""
    return torch.exp(torch.linspace(math.log(minimum), math.log(maximum), levels, dtype=torch.float32))


def standardized_cumulative(x: Tensor) -> Tensor:
    """Phi(x) = 0.5 * erfc(-x / sqrt(2)), the standard normal CDF in the reference's
    operation order."""
    half = 0.5
    const = -(2**-0.5)
    return half * torch.erfc(const * x)


def gaussian_cdf_bounds(values: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
    """(lower, upper): Phi at (-1/2 - values) / scales and (1/2 - values) / scales, where
    ``values`` = |y - mean|; their difference is the mass of the unit bin around y. Taking
    the lower tail keeps the difference accurate far from the mean."""
    upper = standardized_cumulative((0.5 - values) / scales)
    lower = standardized_cumulative((-0.5 - values) / scales)
    return lower, upper


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


def sign_trick_mass(lower: Tensor, upper: Tensor) -> Tensor:
    """Mass between two cumulative logits, sigmoid(upper) - sigmoid(lower), evaluated on
    the side where the sigmoid is not saturated (CompressAI <= 1.2.4's "sign trick", which
    the reference tables and likelihoods depend on)."""
    sign = -torch.sign(lower + upper).detach()
    return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))


@torch.no_grad()
def gaussian_pmf(scale_table: Tensor, tail_mass: float = TAIL_MASS) -> DiscretePmf:
    """The conditional Gaussian's rows (CompressAI ``GaussianConditional.update``).

    Row k: a zero-mean Gaussian of scale ``scale_table[k]`` discretised on the integers
    within +-ceil(scale * 6.109...) (the tail_mass/2 quantile), plus the tail mass.
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
    lower, upper = gaussian_cdf_bounds(samples, samples_scale)
    pmf = upper - lower
    tail = 2 * lower[:, :1]
    return DiscretePmf(pmf, tail, pmf_length, -pmf_center)


@torch.no_grad()
def bottleneck_pmf(
    quantiles: Tensor, matrices: Sequence[Tensor], biases: Sequence[Tensor], factors: Sequence[Tensor]
) -> DiscretePmf:
    """The EntropyBottleneck's rows, CompressAI 1.2.0 ``update()`` (sign trick).

    quantiles: (C, 1, 3) = (lower, median, upper) per channel. Row c covers the integer
    offsets -minima..maxima around the median, plus the tail mass.
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
    half = 0.5
    lower = logits_cumulative(samples - half, matrices, biases, factors)
    upper = logits_cumulative(samples + half, matrices, biases, factors)
    pmf = sign_trick_mass(lower, upper)
    pmf = pmf[:, 0, :]
    # As in the reference: the upper tail is taken at the last column of the padded
    # sample grid (max_length - 1), not at each channel's own last sample.
    tail = torch.sigmoid(lower[:, 0, :1]) + torch.sigmoid(-upper[:, 0, -1:])
    return DiscretePmf(pmf, tail, pmf_length, offset)
