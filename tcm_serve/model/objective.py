"""The paper's rate-distortion objective: lambda * 255^2 * MSE + bits per pixel.

What training minimises over the weights and what encoder effort
(:mod:`tcm_serve.codec.effort`) minimises over one image's latents, the weights fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor


@dataclass
class RDLoss:
    """One batch's objective and the numbers the progress bar shows."""

    loss: Tensor  # differentiable
    bpp: float
    mse: float

    @property
    def psnr(self) -> float:
        return 10 * math.log10(1.0 / self.mse) if self.mse > 0 else float("inf")


def bits_per_pixel(likelihoods: dict[str, Tensor], num_pixels: int) -> Tensor:
    """Estimated rate of all latents, from their likelihoods (the sum of -log2 p)."""
    total = cast(Tensor, sum(torch.log(lik).sum() for lik in likelihoods.values()))  # sum() starts at int 0
    return total / (-math.log(2) * num_pixels)


def rate_distortion(out: dict, target: Tensor, lmbda: float) -> RDLoss:
    """``lmbda * 255**2 * MSE + bpp``, the loss of the reference training script, with
    bpp per pixel of the batch (N * H * W)."""
    n, _, h, w = target.shape
    bpp = bits_per_pixel(out["likelihoods"], n * h * w)
    mse = torch.mean((out["x_hat"] - target) ** 2)
    return RDLoss(lmbda * 255**2 * mse + bpp, float(bpp.detach()), float(mse.detach()))
