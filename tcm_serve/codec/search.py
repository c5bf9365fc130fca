"""The latent search behind encoder effort (:mod:`tcm_serve.codec.effort` says what it is
and why its blobs decode everywhere): Adam steps on one image's ``y`` and ``z`` against the
model's rate-distortion objective, through the whole slice chain."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.objective import rate_distortion
from ..model.tcm import TCM
from .effort import SCORES, LatentSearch, check_effort_size

#: Seed of the noise the search draws (any fixed value: it makes a search repeatable).
SEARCH_SEED = 0


@dataclass
class SearchResult:
    """The latents the search settled on, and the objective before and after (the model's
    estimate for the rounded latents: ``lambda * 255^2 * MSE + bpp``)."""

    y: Tensor
    z: Tensor
    initial_loss: float
    final_loss: float
    steps: int


def coded_loss(model: TCM, x: Tensor, y: Tensor, z: Tensor, lmbda: float) -> float:
    """The objective of the latents as they would be coded (rounded, exact likelihoods)."""
    with torch.no_grad():
        return float(rate_distortion(model.from_latents(y, z, noisy_likelihoods=False), x, lmbda).loss)


def search_latents(model: TCM, x: Tensor, y: Tensor, search: LatentSearch) -> SearchResult:
    """Optimise one image's latents: ``x`` (1, 3, H, W) in [0, 1], ``y`` (1, M, yH, yW) from
    ``g_a``. Returns the best (y, z) of those evaluated, detached, in float32.

    Gradients come from the objective with noisy likelihoods (a smooth stand-in for the
    rate; rounding straight through for what the decoder reconstructs: measured in
    docs/codec.md, the straight-through rate alone drifts to higher costs). Every quarter of
    the way the latents are scored as they would be coded, and the best scored ones win, so
    the result never costs more than ``g_a``'s latents by that score. The model's weights
    are not changed and get no gradients."""
    check_effort_size(x.shape[-2], x.shape[-1])
    x = x.detach().float()
    with torch.no_grad():
        z0 = model.h_a(y)
    y_var = y.detach().float().clone().requires_grad_(True)
    z_var = z0.detach().float().clone().requires_grad_(True)
    initial = coded_loss(model, x, y_var, z_var, search.lmbda)
    best = (initial, y_var.detach().clone(), z_var.detach().clone())
    optimiser = torch.optim.Adam([y_var, z_var], lr=search.lr)
    checkpoints = {search.steps * k // SCORES for k in range(1, SCORES + 1)}
    # The noise is drawn from a fixed seed, the caller's random state left as it was: the
    # same image, model and machine give the same blob every time.
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.enable_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(SEARCH_SEED)
        for step in range(search.steps):
            if search.deadline is not None and time.monotonic() > search.deadline:
                break
            for group in optimiser.param_groups:  # cosine decay to zero
                group["lr"] = search.lr * 0.5 * (1 + math.cos(math.pi * step / search.steps))
            loss = rate_distortion(model.from_latents(y_var, z_var, noisy_likelihoods=True), x, search.lmbda).loss
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            del loss
            if step + 1 in checkpoints:
                score = coded_loss(model, x, y_var, z_var, search.lmbda)
                if score < best[0]:
                    best = (score, y_var.detach().clone(), z_var.detach().clone())
    return SearchResult(best[1], best[2], initial, best[0], search.steps)
