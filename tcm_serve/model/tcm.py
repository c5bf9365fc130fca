"""TCM: mixed Transformer-CNN learned image codec (Liu, Sun, Katto, CVPR 2023).

The network is split into the stages the codec pipeline needs, so that compress and
decompress can run the same code as ``forward`` (same kernels, same order), and so that
batching and backends can wrap stages independently:

* ``g_a`` / ``g_s``: analysis / synthesis transforms (image <-> y, M channels at 1/16),
* ``h_a`` / ``h_mean_s`` + ``h_scale_s``: hyperprior (y -> z at 1/64, z_hat -> mean/scale priors),
* per slice: SWAtten + CNN -> (mu, sigma) for the Gaussian model, then latent residual
  prediction (LRP) refines y_hat; slice i is conditioned on the decoded slices before it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import HYPER_WINDOW_SIZE, SWATTEN_HEAD_DIM, WINDOW_SIZE, TCMConfig
from .entropy import EntropyBottleneck, GaussianConditional
from .layers import (
    ResidualBlockUpsample,
    ResidualBlockWithStride,
    SWAtten,
    conv3x3,
    slice_transform,
    subpel_conv3x3,
    tcm_stage,
)


@dataclass
class SliceParams:
    """Entropy parameters of one y slice and the attention output LRP needs."""

    mu: Tensor
    scale: Tensor
    mean_support: Tensor


class TCM(nn.Module):
    """The TCM network with official state_dict names and shapes."""

    def __init__(self, cfg: TCMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, m, c, hd, w = cfg.N, cfg.M, cfg.config, cfg.head_dim, WINDOW_SIZE
        # Registered first, as in the official class (CompressionModel creates it first).
        zc = cfg.hyper_channels
        self.entropy_bottleneck = EntropyBottleneck(zc)
        self.g_a = nn.Sequential(
            ResidualBlockWithStride(3, 2 * n, 2),
            *tcm_stage(n, c[0], hd[0], w),
            ResidualBlockWithStride(2 * n, 2 * n, 2),
            *tcm_stage(n, c[1], hd[1], w),
            ResidualBlockWithStride(2 * n, 2 * n, 2),
            *tcm_stage(n, c[2], hd[2], w),
            conv3x3(2 * n, m, stride=2),
        )
        self.g_s = nn.Sequential(
            ResidualBlockUpsample(m, 2 * n, 2),
            *tcm_stage(n, c[3], hd[3], w),
            ResidualBlockUpsample(2 * n, 2 * n, 2),
            *tcm_stage(n, c[4], hd[4], w),
            ResidualBlockUpsample(2 * n, 2 * n, 2),
            *tcm_stage(n, c[5], hd[5], w),
            subpel_conv3x3(2 * n, 3, 2),
        )
        hyper = lambda depth: tcm_stage(n, depth, cfg.hyper_head_dim, HYPER_WINDOW_SIZE)  # noqa: E731
        self.h_a = nn.Sequential(ResidualBlockWithStride(m, 2 * n, 2), *hyper(c[0]), conv3x3(2 * n, zc, stride=2))
        self.h_mean_s = nn.Sequential(ResidualBlockUpsample(zc, 2 * n, 2), *hyper(c[3]), subpel_conv3x3(2 * n, m, 2))
        self.h_scale_s = nn.Sequential(ResidualBlockUpsample(zc, 2 * n, 2), *hyper(c[3]), subpel_conv3x3(2 * n, m, 2))
        sc, hidden = cfg.slice_channels, cfg.slice_hidden
        support_width = [m + sc * cfg.support_count(i) for i in range(cfg.num_slices)]
        swatten = lambda width: nn.Sequential(  # noqa: E731 - one-element Sequential: key "atten_mean.i.0.*"
            SWAtten(width, SWATTEN_HEAD_DIM, WINDOW_SIZE, cfg.swatten_dim)
        )
        self.atten_mean = nn.ModuleList(swatten(wd) for wd in support_width)
        self.atten_scale = nn.ModuleList(swatten(wd) for wd in support_width)
        self.cc_mean_transforms = nn.ModuleList(slice_transform(wd, sc, hidden) for wd in support_width)
        self.cc_scale_transforms = nn.ModuleList(slice_transform(wd, sc, hidden) for wd in support_width)
        self.lrp_transforms = nn.ModuleList(slice_transform(wd + sc, sc, hidden) for wd in support_width)
        self.gaussian_conditional = GaussianConditional()
        #: Training option: run g_a/g_s in ``forward`` under autocast to this dtype (e.g.
        #: bfloat16). They are most of a training step's time and tolerate it; the entropy
        #: model always runs in float32. The coding paths never use it.
        self.transform_autocast: torch.dtype | None = None

    # -- stages ---------------------------------------------------------------------------
    def hyper_synthesis(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        """z_hat -> (latent_means, latent_scales) priors at y resolution."""
        return self.h_mean_s(z_hat), self.h_scale_s(z_hat)

    def support(self, decoded: list[Tensor]) -> list[Tensor]:
        """The previously decoded slices that condition the next one."""
        if self.cfg.max_support_slices < 0:
            return decoded
        return decoded[: self.cfg.max_support_slices]

    def slice_params(self, i: int, latent_means: Tensor, latent_scales: Tensor, decoded: list[Tensor]) -> SliceParams:
        """(mu, sigma) of slice ``i`` given the priors and the already decoded slices."""
        mu, scale, mean_support, _ = self._slice_params(i, latent_means, latent_scales, decoded)
        return SliceParams(mu, scale, mean_support)

    def slice_params_gated(
        self, i: int, latent_means: Tensor, latent_scales: Tensor, decoded: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(mu, sigma, mean gate) of slice ``i``: :meth:`slice_params` with the mean
        attention's output before its last 1x1 convolution (``swatten_dim`` channels) in place
        of that output (``M`` plus the support's): what a large photo's decoder keeps between a
        slice's parameters and its LRP, which finishes it with :meth:`mean_support_from`."""
        mu, scale, _, gate = self._slice_params(i, latent_means, latent_scales, decoded)
        return mu, scale, gate

    def mean_support_from(self, i: int, gate: Tensor) -> Tensor:
        """The mean attention's output (what LRP reads) from its gate (:meth:`slice_params_gated`)."""
        return self._mean_attention(i).out_conv(gate)

    def _mean_attention(self, i: int) -> SWAtten:
        block = self.atten_mean[i]
        assert isinstance(block, nn.Sequential)
        attention = block[0]
        assert isinstance(attention, SWAtten)
        return attention

    def _slice_params(
        self, i: int, latent_means: Tensor, latent_scales: Tensor, decoded: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(mu, scale, mean_support, mean gate): the mean attention is computed as its
        module's ``forward`` does (``out_conv`` of the gate), the scale branch first, so that
        its attention output is freed before the mean branch's exists (independent
        branches: the same values in either order)."""
        h, w = latent_means.shape[2:]
        support = self.support(decoded)
        scale_support = self.atten_scale[i](torch.cat([latent_scales] + support, dim=1))
        scale = self.cc_scale_transforms[i](scale_support)[:, :, :h, :w]
        del scale_support
        gate = self._mean_attention(i).gated(torch.cat([latent_means] + support, dim=1))
        mean_support = self.mean_support_from(i, gate)
        mu = self.cc_mean_transforms[i](mean_support)[:, :, :h, :w]
        return mu, scale, mean_support, gate

    def refine(self, i: int, mean_support: Tensor, y_hat_slice: Tensor) -> Tensor:
        """Latent residual prediction: y_hat + 0.5 * tanh(LRP([attention output, y_hat]))."""
        lrp = self.lrp_transforms[i](torch.cat([mean_support, y_hat_slice], dim=1))
        return y_hat_slice + 0.5 * torch.tanh(lrp)

    def entropy_copy(self, dtype: torch.dtype, device: torch.device) -> TCM:
        """A copy that computes entropy parameters only (hyper-synthesis, SWAtten and slice
        networks, LRP) in ``dtype`` on ``device``. The transforms ``g_a``, ``h_a`` and ``g_s``
        are not copied (empty placeholders take their place), so a float64 copy for the
        portable bitstream costs memory for the entropy-parameter networks alone."""
        placeholders = {id(net): nn.Identity() for net in (self.g_a, self.h_a, self.g_s)}
        clone = copy.deepcopy(self, memo=placeholders)
        return clone.to(device=device, dtype=dtype).eval()

    def _transform(self, net: nn.Module, x: Tensor) -> Tensor:
        """``net(x)``, under ``transform_autocast`` when set (the result is float32 again)."""
        if self.transform_autocast is None:
            return net(x)
        with torch.autocast(x.device.type, dtype=self.transform_autocast):
            return net(x).float()

    # -- the reference forward pass (training and evaluation) --------------------------------
    def forward(self, x: Tensor) -> dict:
        """Same outputs as the official ``TCM.forward``: x_hat (not clamped), likelihoods
        of y and z, and the entropy parameters."""
        y = self._transform(self.g_a, x)
        return self.from_latents(y, self.h_a(y))

    def from_latents(
        self, y: Tensor, z: Tensor, noisy_likelihoods: bool | None = None, noise: torch.Generator | None = None
    ) -> dict:
        """``forward`` from the latents on: what the decoder makes of (y, z), with the
        likelihoods the coder would spend bits by.

        The decoded latents that condition later slices and feed ``g_s`` are rounded
        straight through (rounded values forward, identity backward). The likelihoods are
        taken at latents plus uniform noise when ``noisy_likelihoods`` (default: in training,
        as the reference does: a smooth stand-in for the rate; drawn from ``noise`` when
        given, else the global generator), else at the rounded latents
        the codec codes, straight through so that gradients reach y and z. Encoder effort
        (:mod:`tcm_serve.codec.effort`) optimises y and z through this chain: each slice is
        conditioned on the decoded slices before it, as the decoder computes them."""
        noisy = self.training if noisy_likelihoods is None else noisy_likelihoods
        medians = self.entropy_bottleneck.medians().reshape(1, -1, 1, 1)
        z_hat = _straight_through(z, medians)
        if noisy:
            z_likelihoods = self.entropy_bottleneck.likelihood_at(z + _uniform_noise(z, noise))
        else:
            z_likelihoods = self.entropy_bottleneck.likelihood_at(z_hat)
        latent_means, latent_scales = self.hyper_synthesis(z_hat)
        decoded: list[Tensor] = []
        likelihoods, mus, scales = [], [], []
        for i, y_slice in enumerate(y.chunk(self.cfg.num_slices, 1)):
            p = self.slice_params(i, latent_means, latent_scales, decoded)
            y_hat_slice = _straight_through(y_slice, p.mu)
            if noisy:
                noisy_slice = y_slice + _uniform_noise(y_slice, noise)
                lik = self.gaussian_conditional.likelihood_at(noisy_slice, p.scale, p.mu)
            else:
                lik = self.gaussian_conditional.likelihood_at(y_hat_slice, p.scale, p.mu)
            decoded.append(self.refine(i, p.mean_support, y_hat_slice))
            likelihoods.append(lik)
            mus.append(p.mu)
            scales.append(p.scale)
        x_hat = self._transform(self.g_s, torch.cat(decoded, dim=1))
        return {
            "x_hat": x_hat,
            "likelihoods": {"y": torch.cat(likelihoods, dim=1), "z": z_likelihoods},
            "para": {"means": torch.cat(mus, dim=1), "scales": torch.cat(scales, dim=1), "y": y},
        }

    def aux_loss(self) -> Tensor:
        return self.entropy_bottleneck.aux_loss()


def _uniform_noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """U(-1/2, 1/2) noise shaped like ``like`` (the training stand-in for rounding)."""
    return torch.empty_like(like).uniform_(-0.5, 0.5, generator=generator)


def _straight_through(v: Tensor, offset: Tensor) -> Tensor:
    """``round(v - offset) + offset`` in value, the identity in gradient."""
    q = v - offset
    return q + (torch.round(q) - q).detach() + offset
