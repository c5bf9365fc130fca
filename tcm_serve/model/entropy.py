"""The two entropy models of TCM as parameter holders with the reference likelihoods.

They own the learned parameters and the CDF-table buffers under the official key names
(CompressAI 1.2.0 spelling), and compute likelihoods for ``forward`` and training; the
math, and the discrete distributions the coder tables are made of, is in
:mod:`tcm_serve.model.probability`. Quantising those into tables and range coding belong
to the codec (:mod:`tcm_serve.codec.tables`, :mod:`tcm_serve.codec.rans`), which imports
the model, never the reverse.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .layers import LowerBound
from .probability import (
    LIKELIHOOD_BOUND,
    SCALE_BOUND,
    TAIL_MASS,
    DiscretePmf,
    bottleneck_pmf,
    gaussian_cdf_bounds,
    logits_cumulative,
    sign_trick_mass,
)


def _empty_table_buffers(module: nn.Module) -> None:
    # Filled by the loader (or left empty, like an official checkpoint before update()).
    module.register_buffer("_offset", torch.IntTensor())
    module.register_buffer("_quantized_cdf", torch.IntTensor())
    module.register_buffer("_cdf_length", torch.IntTensor())


class EntropyBottleneck(nn.Module):
    """Fully factorized prior for z (Ballé et al. 2018): a per-channel learned CDF."""

    # buffers (register_buffer): declared for the type checker
    target: Tensor
    _offset: Tensor
    _quantized_cdf: Tensor
    _cdf_length: Tensor

    def __init__(
        self,
        channels: int,
        init_scale: float = 10.0,
        filters: tuple[int, ...] = (3, 3, 3, 3),
        tail_mass: float = TAIL_MASS,
    ):
        super().__init__()
        self.likelihood_lower_bound = LowerBound(LIKELIHOOD_BOUND)
        _empty_table_buffers(self)
        self.channels = channels
        self.filters = tuple(filters)
        widths = (1,) + self.filters + (1,)
        scale = init_scale ** (1 / (len(self.filters) + 1))
        for i in range(len(self.filters) + 1):
            init = math.log(math.expm1(1 / scale / widths[i + 1]))
            self.register_parameter(f"_matrix{i}", nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init)))
            self.register_parameter(
                f"_bias{i}", nn.Parameter(torch.empty(channels, widths[i + 1], 1).uniform_(-0.5, 0.5))
            )
            if i < len(self.filters):
                self.register_parameter(f"_factor{i}", nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))
        self.quantiles = nn.Parameter(torch.tensor([-init_scale, 0.0, init_scale]).repeat(channels, 1, 1))
        target = math.log(2 / tail_mass - 1)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]))

    # -- parameters as lists (for table building and the likelihood) ---------------------
    def matrices(self) -> list[Tensor]:
        return [getattr(self, f"_matrix{i}") for i in range(len(self.filters) + 1)]

    def biases(self) -> list[Tensor]:
        return [getattr(self, f"_bias{i}") for i in range(len(self.filters) + 1)]

    def factors(self) -> list[Tensor]:
        return [getattr(self, f"_factor{i}") for i in range(len(self.filters))]

    def medians(self) -> Tensor:
        """(C, 1, 1) quantisation offsets: z is coded as round(z - median)."""
        return self.quantiles[:, :, 1:2]

    def _cumulative(self, x: Tensor) -> Tensor:
        return logits_cumulative(x, self.matrices(), self.biases(), self.factors())

    def likelihood(self, values: Tensor) -> Tensor:
        """P(v - 1/2 < Z <= v + 1/2) per element of ``values`` shaped (C, 1, L).

        Uses the sign trick of CompressAI <= 1.2.4 (evaluate the sigmoid on the side where
        it is not saturated), which the reference tables and likelihoods depend on.
        """
        lower = self._cumulative(values - 0.5)
        upper = self._cumulative(values + 0.5)
        return sign_trick_mass(lower, upper)

    def pmf(self) -> DiscretePmf:
        """This prior's per-channel distributions (CPU, float32, no gradient), as the coder
        tables are built from them."""
        cpu = lambda ts: [t.detach().float().cpu() for t in ts]  # noqa: E731
        return bottleneck_pmf(
            self.quantiles.detach().cpu(), cpu(self.matrices()), cpu(self.biases()), cpu(self.factors())
        )

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (z_hat, likelihoods); uniform noise in training, rounding in eval."""
        if self.training:
            z_hat = z + torch.empty_like(z).uniform_(-0.5, 0.5)
        else:
            medians = self.medians().reshape(1, -1, *([1] * (z.dim() - 2)))
            z_hat = torch.round(z - medians) + medians
        return z_hat, self.likelihood_at(z_hat)

    def likelihood_at(self, z_hat: Tensor) -> Tensor:
        """Bounded likelihoods of the quantised ``z_hat`` (N, C, H, W), differentiable in
        ``z_hat``: what eval-mode ``forward`` returns for ``z``, when ``z_hat`` is its
        rounding."""
        c = z_hat.size(1)
        perm = (1, 0) + tuple(range(2, z_hat.dim()))
        values = z_hat.permute(*perm).contiguous()
        shape = values.shape
        likelihood = self.likelihood_lower_bound(self.likelihood(values.reshape(c, 1, -1)))
        return likelihood.reshape(shape).permute(*perm).contiguous()

    def aux_loss(self) -> Tensor:
        """Pulls the quantiles towards the tail-mass targets (trained with its own optimiser)."""
        detached = lambda ts: [t.detach() for t in ts]  # noqa: E731 - gradients reach only the quantiles
        logits = logits_cumulative(
            self.quantiles, detached(self.matrices()), detached(self.biases()), detached(self.factors())
        )
        return torch.abs(logits - self.target).sum()


class GaussianConditional(nn.Module):
    """Conditional Gaussian model of y given (mu, sigma) from the hyperprior and context."""

    # buffers (register_buffer): declared for the type checker
    scale_table: Tensor
    scale_bound: Tensor
    _offset: Tensor
    _quantized_cdf: Tensor
    _cdf_length: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.likelihood_lower_bound = LowerBound(LIKELIHOOD_BOUND)
        _empty_table_buffers(self)
        self.register_buffer("scale_table", torch.Tensor())
        self.register_buffer("scale_bound", torch.Tensor([SCALE_BOUND]))
        self.lower_bound_scale = LowerBound(SCALE_BOUND)

    def likelihood(self, y: Tensor, scales: Tensor, means: Tensor) -> Tensor:
        values = torch.abs(y - means)
        scales = self.lower_bound_scale(scales)
        lower, upper = gaussian_cdf_bounds(values, scales)
        return upper - lower

    def likelihood_at(self, y_hat: Tensor, scales: Tensor, means: Tensor) -> Tensor:
        """Bounded likelihoods of the quantised ``y_hat``, differentiable in all three."""
        return self.likelihood_lower_bound(self.likelihood(y_hat, scales, means))

    def forward(self, y: Tensor, scales: Tensor, means: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (y_hat, likelihoods); uniform noise in training, rounding in eval."""
        if self.training:
            y_hat = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        else:
            y_hat = torch.round(y - means) + means
        return y_hat, self.likelihood_at(y_hat, scales, means)
