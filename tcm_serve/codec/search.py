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
from .padding import crop

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
    steps: int  # the steps run: fewer than asked when the deadline came first


NO_PADDING = (0, 0, 0, 0)


def _objective(model: TCM, x: Tensor, y: Tensor, z: Tensor, lmbda: float, pad, noise: torch.Generator | None):
    """The RD objective of (y, z) on the image inside ``pad`` (left, right, top, bottom): the
    padding is not the user's image, so neither its distortion nor its pixels count, while
    every latent's bits do."""
    out = model.from_latents(y, z, noisy_likelihoods=noise is not None, noise=noise)
    return rate_distortion({**out, "x_hat": crop(out["x_hat"], pad)}, crop(x, pad), lmbda)


def coded_loss(model: TCM, x: Tensor, y: Tensor, z: Tensor, lmbda: float, pad=NO_PADDING) -> float:
    """The objective of the latents as they would be coded (rounded, exact likelihoods)."""
    with torch.no_grad():
        return float(_objective(model, x, y, z, lmbda, pad, None).loss)


def search_latents(
    model: TCM, x: Tensor, y: Tensor, search: LatentSearch, pad: tuple[int, int, int, int] = NO_PADDING
) -> SearchResult:
    """Optimise one image's latents: ``x`` (1, 3, H, W) in [0, 1] padded by ``pad`` (left,
    right, top, bottom), ``y`` (1, M, yH, yW) from ``g_a``. Returns the best (y, z) of those
    evaluated, detached, in float32.

    Gradients come from the objective with noisy likelihoods (a smooth stand-in for the
    rate; rounding straight through for what the decoder reconstructs: measured in
    docs/codec.md, the straight-through rate alone drifts to higher costs). Every quarter of
    the way the latents are scored as they would be coded, and the best scored ones win, so
    the result never costs more than ``g_a``'s latents by that score. The noise comes from a
    generator of its own with a fixed seed: the same image, model and machine give the same
    latents, and nobody else's random state is touched. Gradients go to the latents alone
    (the weights are neither changed nor given ``.grad``). With a deadline, the search stops
    two steps' time before it, so that the latents are still coded in time."""
    check_effort_size(x.shape[-2], x.shape[-1])
    x = x.detach().float()
    with torch.no_grad():
        z0 = model.h_a(y)
    y_var = y.detach().float().clone().requires_grad_(True)
    z_var = z0.detach().float().clone().requires_grad_(True)
    initial = coded_loss(model, x, y_var, z_var, search.lmbda, pad)
    best = (initial, y_var.detach().clone(), z_var.detach().clone())
    optimiser = torch.optim.Adam([y_var, z_var], lr=search.lr)
    checkpoints = {search.steps * k // SCORES for k in range(1, SCORES + 1)}
    noise = torch.Generator(device=x.device).manual_seed(SEARCH_SEED)
    step_s, run = 0.0, 0
    with torch.enable_grad():
        for step in range(search.steps):
            if search.deadline is not None and time.monotonic() + 2 * step_s > search.deadline:
                break
            started = time.monotonic()
            for group in optimiser.param_groups:  # cosine decay to zero
                group["lr"] = search.lr * 0.5 * (1 + math.cos(math.pi * step / search.steps))
            loss = _objective(model, x, y_var, z_var, search.lmbda, pad, noise).loss
            y_var.grad, z_var.grad = torch.autograd.grad(loss, [y_var, z_var])
            optimiser.step()
            del loss
            run = step + 1
            if run in checkpoints:
                score = coded_loss(model, x, y_var, z_var, search.lmbda, pad)
                if score < best[0]:
                    best = (score, y_var.detach().clone(), z_var.detach().clone())
            step_s = time.monotonic() - started
    return SearchResult(best[1], best[2], initial, best[0], run)
