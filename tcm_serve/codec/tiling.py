"""Tiled networks: the networks' working memory bounded by the tile, not the image.

The transforms ``g_a`` (image -> y, 1/16) and ``g_s`` (y -> image) hold activations of the
whole image at up to half resolution with 2N channels: gigabytes for a phone photo. The
entropy-parameter networks (hyper-synthesis, SWAtten and slice networks, LRP) run at 1/16
resolution but in float64 on the portable path, with hundreds of channels: gigabytes again
at 24-48 megapixels. All of them are local operators (convolutions and window attention), so
each part of the output depends only on nearby input. Here the output is cut into *cores* (a
grid of at most ``tile`` x ``tile`` pixels) and each core is computed from a *window* of input:
the core plus a *halo* on every side, cropped away afterwards.

Two kinds of tiling, with different rules:

* **Transforms** (:meth:`Tiling.analysis`, :meth:`Tiling.synthesis`): the halo is smaller than
  the networks' reach, so a tiled transform differs slightly from the whole one near the
  cores' borders (measured in docs/codec.md, "Tiling": PSNR and bpp unchanged to 0.01 dB and
  0.1% with the default halo). That never affects decodability: the decoder's entropy
  parameters come from z and the decoded y slices alone, never from ``g_a`` or ``g_s``.
  Tiling ``g_a`` changes which latent the encoder picks; tiling ``g_s`` changes how the decoder
  reconstructs pixels. A blob made with any tile size decodes with any other, and nothing
  about tiling is in the header.
* **Entropy parameters** (:class:`TiledEntropyStages`, portable path only): the halo covers the
  networks' whole reach (:data:`ENTROPY_HALO`), so a tiled network computes the same sums as
  the whole one, in another order: float64 results that agree to ~1e-15, which the portable
  format's tolerance absorbs as it absorbs another CPU's kernels. Encoder and decoder may
  tile differently (or not at all) and still agree on every table index.

Window placement keeps the arithmetic of the untiled networks wherever the halo reaches:
every window starts and ends on a multiple of :data:`~tcm_serve.codec.geometry.ALIGN` pixels,
so the window attention's partitions (8x8 windows at 1/2 to 1/16 resolution, 4x4 at 1/32, and
the same shifted by half a window) line up with the ones the whole image gets, and every
window is a size the networks accept. The entropy networks' windows are cut short at the
image's edges (less work for their wide halo). The transforms' windows are cut short too when
they run one at a time (the CPU): an image of 2-4 windows does 20-40% less work than with
windows of one size, which a batch (:data:`GPU_TILE_BATCH`, a GPU) needs and gets, moved
inward at the edges (:meth:`Tiling.plan`; time and memory of both in docs/codec.md,
"Tiling"). An image whose padded size fits one window is computed whole, exactly as untiled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..model.config import TCMConfig
from ..model.tcm import SliceParams
from ..tuning import empty_outside_heap, release_free_memory
from .backends import EncodedSlice, TorchStages, encode_slice
from .geometry import ALIGN, DEFAULT_HALO, DEFAULT_TILE, NO_TILING, Y_STRIDE, Z_STRIDE, tile_problem

#: Windows per network call on a GPU: the tiles of one image run as a batch there (on the
#: CPU, one at a time: batching gains nothing and multiplies the memory).
GPU_TILE_BATCH = 4
#: Core size of the tiled entropy-parameter networks, pixels. Images up to
#: ``ENTROPY_TILE + 2 * halo`` (3840 at the official layouts' halo) a side compute them whole.
ENTROPY_TILE = 3072
#: Their halo for the official layouts (:func:`entropy_halo`).
ENTROPY_HALO = 384


def entropy_halo(cfg: TCMConfig) -> int:
    """A halo, pixels, that covers the entropy networks' whole reach, with a window's margin.

    The hyper-synthesis reaches about 4 positions at 1/32 (its upsampling block and output
    convolution) plus 2 per TCM block of its stage (``config[3]`` of them: 3x3 convolutions and
    4x4 attention windows, plain or shifted), 32 pixels each: 256 pixels for the official
    layouts. SWAtten and the slice networks have the same depth in every layout; with tiles on
    the attention grid they reach less than 256 pixels. Measured for lite and the official
    layouts (``config[3]`` = 2): tiled and whole agree to 1e-12 with a halo of 256 and not with
    128; tests/test_tiling.py checks that and a deeper hyper stage with this halo."""
    hyper = 32 * (4 + 2 * cfg.config[3])
    slices = 256
    reach = max(hyper, slices) + ALIGN  # a window's margin
    return -(-reach // ALIGN) * ALIGN


@dataclass(frozen=True)
class Span:
    """One axis of a tile, pixels: the input window ``[start, end)`` and the core
    ``[core_start, core_end)`` it is computed for."""

    start: int
    end: int
    core_start: int
    core_end: int


def plan_axis(length: int, tile: int, halo: int, equal: bool = False) -> list[Span]:
    """Cut one padded axis of ``length`` pixels into as few cores of at most ``tile`` pixels as
    will do, of near-equal sizes in whole :data:`ALIGN` units, each computed in a window of
    the core plus ``halo`` pixels on each side. Windows are cut at the axis's ends, or, when
    ``equal``, all get the largest core's size, moved inward at the ends. One span over the
    whole axis when it fits one window."""
    if length <= tile + 2 * halo:
        return [Span(0, length, 0, length)]
    units = length // ALIGN
    n = -(-units // (tile // ALIGN))
    base, extra = divmod(units, n)
    largest = (base + (extra > 0)) * ALIGN
    spans, core = [], 0
    for k in range(n):
        end = core + (base + (k < extra)) * ALIGN
        if equal:
            start = min(max(core - halo, 0), length - largest - 2 * halo)
            spans.append(Span(start, start + largest + 2 * halo, core, end))
        else:
            spans.append(Span(max(core - halo, 0), min(end + halo, length), core, end))
        core = end
    return spans


@dataclass(frozen=True)
class TilePlan:
    """How a padded image of ``height`` x ``width`` pixels is cut: cores of at most ``tile``
    pixels (0: whole) with ``halo`` pixels around; ``equal``: windows of one size."""

    height: int
    width: int
    tile: int = DEFAULT_TILE
    halo: int = DEFAULT_HALO
    equal: bool = False

    def __post_init__(self) -> None:
        problem = tile_problem(self.tile)
        if problem:
            raise ValueError(problem)
        if self.halo < ALIGN or self.halo % ALIGN:  # so that a window is at least MIN_PADDED
            raise ValueError(f"halo must be a positive multiple of {ALIGN} pixels, got {self.halo}")

    @cached_property
    def rows(self) -> list[Span]:
        return self._axis(self.height)

    @cached_property
    def cols(self) -> list[Span]:
        return self._axis(self.width)

    def _axis(self, length: int) -> list[Span]:
        if self.tile == NO_TILING:
            return [Span(0, length, 0, length)]
        return plan_axis(length, self.tile, self.halo, self.equal)

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def is_whole(self) -> bool:
        """One window covers the image: it is computed exactly as without tiling."""
        return self.count == 1

    def tiles(self) -> Iterator[tuple[Span, Span]]:
        for r in self.rows:
            for c in self.cols:
                yield r, c


Outputs = Tensor | tuple[Tensor, ...]


@dataclass
class DecoderParams:
    """A slice's parameters on the decoder, and what its LRP needs: the mean attention's
    output (``mean_support``) or, for a tiled image, its gate (``mean_gate``)."""

    mu: Tensor
    scale: Tensor
    mean_support: Tensor | None = None
    mean_gate: Tensor | None = None


#: What a tiled transform's windows run inside (a context manager factory).
Scope = Callable[[], AbstractContextManager[None]]


def run_tiled(
    fn: Callable[..., Outputs],
    inputs: Sequence[Tensor],
    strides: Sequence[int],
    out_stride: int,
    plan: TilePlan,
    batch: int = 1,
) -> Outputs:
    """``fn(*inputs)`` computed core by core, ``batch`` windows per call (windows must then
    have one size: ``plan.equal``).

    ``inputs`` are (B, C, H, W) tensors of one image grid; one element of input ``i`` spans
    ``strides[i]`` pixels a side (1 for an image, 16 for y, 64 for z), one element of each
    output ``out_stride``. ``fn`` returns one tensor or a tuple. The result is the cores'
    outputs assembled, the halos dropped; for a whole plan, ``fn(*inputs)`` itself.
    """
    if plan.is_whole:
        return fn(*inputs)
    tiles = list(plan.tiles())
    step = max(1, batch)
    outs: list[Tensor] = []
    single = False
    for b in range(inputs[0].shape[0]):
        for first in range(0, len(tiles), step):
            chunk = tiles[first : first + step]
            windows = [_windows(x[b : b + 1], chunk, s) for x, s in zip(inputs, strides)]
            result = fn(*windows)
            single = isinstance(result, Tensor)
            parts = (result,) if isinstance(result, Tensor) else result
            if not outs:
                outs = [_assembled(p, inputs[0].shape[0], plan, out_stride) for p in parts]
            for out, part in zip(outs, parts):
                for k, (r, c) in enumerate(chunk):
                    out[b, :, _core(r, out_stride), _core(c, out_stride)] = part[
                        k, :, _inner(r, out_stride), _inner(c, out_stride)
                    ]
            del result, parts, windows
    return outs[0] if single else tuple(outs)


def _assembled(part: Tensor, batch: int, plan: TilePlan, stride: int) -> Tensor:
    """The whole output that cores are written into: outside the heap (tcm_serve/tuning.py)."""
    shape = (batch, part.shape[1], plan.height // stride, plan.width // stride)
    return empty_outside_heap(shape, part.dtype, part.device)


def _window(x: Tensor, r: Span, c: Span, stride: int) -> Tensor:
    return x[:, :, r.start // stride : r.end // stride, c.start // stride : c.end // stride]


def _windows(x: Tensor, chunk: Sequence[tuple[Span, Span]], stride: int) -> Tensor:
    """The windows of ``chunk`` as one batch; a lone window is a view, not a copy."""
    if len(chunk) == 1:
        return _window(x, *chunk[0], stride)
    return torch.cat([_window(x, r, c, stride) for r, c in chunk])


def _core(s: Span, stride: int) -> slice:
    """Where a core goes in the output."""
    return slice(s.core_start // stride, s.core_end // stride)


def _inner(s: Span, stride: int) -> slice:
    """Where a core is in its window's output."""
    return slice((s.core_start - s.start) // stride, (s.core_end - s.start) // stride)


@dataclass(frozen=True)
class Tiling:
    """An engine's tiling of the transforms: core size and halo (pixels), windows per call.
    Windows run as a batch (``batch`` > 1, a GPU) only if they have one size, which costs
    work: the windows are moved inward at the image's edges and overlap more. One at a time
    (the CPU), they are cut at the edges instead: for a 2048x1536 image 4.1 M window pixels
    instead of 5.2 M, and the tiled transforms take about the time of whole ones."""

    tile: int = DEFAULT_TILE
    halo: int = DEFAULT_HALO
    batch: int = 1

    @classmethod
    def for_device(cls, tile: int, device: torch.device) -> Tiling:
        """``tile``-pixel cores with the default halo, batched as suits ``device``."""
        return cls(tile, DEFAULT_HALO, GPU_TILE_BATCH if device.type == "cuda" else 1)

    def plan(self, height: int, width: int) -> TilePlan:
        """The plan for a padded image of ``height`` x ``width`` pixels."""
        return TilePlan(height, width, self.tile, self.halo, equal=self.batch > 1)

    def analysis(self, g_a: Callable[[Tensor], Tensor], x: Tensor, scope: Scope | None = None) -> Tensor:
        """``g_a(x)`` by tiles: a padded image batch -> y. A tiled image's windows run inside
        ``scope()`` (e.g. :func:`~tcm_serve.model.scratch.banded_transformers`), and its freed
        scratch is returned to the kernel afterwards (the entropy stage's buffers come next)."""
        plan = self.plan(*x.shape[2:])
        with nullcontext() if plan.is_whole or scope is None else scope():
            out = run_tiled(g_a, [x], [1], Y_STRIDE, plan, self.batch)
        assert isinstance(out, Tensor)
        if not plan.is_whole:
            release_free_memory()
        return out

    def synthesis(self, g_s: Callable[[Tensor], Tensor], y_hat: Tensor, scope: Scope | None = None) -> Tensor:
        """``g_s(y_hat)`` by tiles: latents -> padded image batch. For a tiled image, the
        entropy stage's freed scratch is returned to the kernel first, and the windows run
        inside ``scope()``."""
        h, w = y_hat.shape[2:]
        plan = self.plan(h * Y_STRIDE, w * Y_STRIDE)
        if not plan.is_whole:
            release_free_memory()
        with nullcontext() if plan.is_whole or scope is None else scope():
            out = run_tiled(g_s, [y_hat], [Y_STRIDE], 1, plan, self.batch)
        assert isinstance(out, Tensor)
        return out


#: No tiling: every image's transforms run whole.
WHOLE = Tiling(tile=NO_TILING)


class TiledEntropyStages:
    """A :class:`~tcm_serve.codec.backends.Stages` whose entropy-parameter networks (hyper-
    synthesis, slice parameters, LRP) run by tiles whose halo covers their whole reach, so
    they compute what the whole networks do (see the module's docstring). Everything else is
    the wrapped stages'. Used on the portable path, where float64 makes these networks the
    largest memory user for big images."""

    def __init__(self, inner: TorchStages, tile: int = ENTROPY_TILE, halo: int = ENTROPY_HALO) -> None:
        self.inner = inner
        self.name = inner.name
        self.tile = tile
        self.halo = halo

    # -- the wrapped stages' own ----------------------------------------------------------------
    def g_a(self, x: Tensor) -> Tensor:
        return self.inner.g_a(x)

    def h_a(self, y: Tensor) -> Tensor:
        return self.inner.h_a(y)

    def g_s(self, y_hat: Tensor) -> Tensor:
        return self.inner.g_s(y_hat)

    def current_threads(self) -> int:
        return self.inner.current_threads()

    def thread_count_matters(self) -> bool:
        return self.inner.thread_count_matters()

    def threads(self, k: int) -> AbstractContextManager[None]:
        return self.inner.threads(k)

    # -- tiled --------------------------------------------------------------------------------

    def _plan(self, y_like: Tensor) -> TilePlan:
        h, w = y_like.shape[2:]
        return TilePlan(h * Y_STRIDE, w * Y_STRIDE, self.tile, self.halo)

    def hyper_synthesis(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        h, w = z_hat.shape[2:]
        plan = TilePlan(h * Z_STRIDE, w * Z_STRIDE, self.tile, self.halo)
        out = run_tiled(self.inner.hyper_synthesis, [z_hat], [Z_STRIDE], Y_STRIDE, plan)
        assert isinstance(out, tuple)
        return out[0], out[1]

    def slice_params(self, i: int, latent_means: Tensor, latent_scales: Tensor, decoded: list[Tensor]) -> SliceParams:
        def params(means: Tensor, scales: Tensor, *dec: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            p = self.inner.slice_params(i, means, scales, list(dec))
            return p.mu, p.scale, p.mean_support

        inputs = [latent_means, latent_scales, *decoded]
        out = run_tiled(params, inputs, [Y_STRIDE] * len(inputs), Y_STRIDE, self._plan(latent_means))
        assert isinstance(out, tuple)
        return SliceParams(*out)

    def encode_slice(
        self, i: int, latent_means: Tensor, latent_scales: Tensor, decoded: list[Tensor], y_slice: Tensor, refine: bool
    ) -> EncodedSlice:
        """:func:`~tcm_serve.codec.backends.encode_slice` tile by tile: the slice networks, the
        rounding and LRP per window, so that the attention output LRP reads (``mean_support``,
        hundreds of channels) never exists for the whole image. LRP's few convolutions reach
        well inside the halo's margin (tests/test_tiling.py checks the result against whole)."""

        def step(means: Tensor, scales: Tensor, y: Tensor, *dec: Tensor) -> tuple[Tensor, ...]:
            e = encode_slice(self.inner, i, means, scales, list(dec), y, refine)
            return (e.scale, e.y_q) if e.refined is None else (e.scale, e.y_q, e.refined)

        inputs = [latent_means, latent_scales, y_slice, *decoded]
        out = run_tiled(step, inputs, [Y_STRIDE] * len(inputs), Y_STRIDE, self._plan(latent_means))
        assert isinstance(out, tuple)
        return EncodedSlice(out[0], out[1], out[2] if refine else None)

    def decoder_params(
        self, i: int, latent_means: Tensor, latent_scales: Tensor, decoded: list[Tensor]
    ) -> DecoderParams:
        """The decoder's parameters of slice ``i``. For a tiled image the mean attention's
        output (``M`` plus the support's channels in float64, the decoder's largest buffer
        while the slice is range-decoded) is not kept whole: its gate is (``swatten_dim``
        channels), and :meth:`refine_from_gate` applies the last 1x1 convolution per tile."""
        plan = self._plan(latent_means)
        if plan.is_whole:
            p = self.inner.slice_params(i, latent_means, latent_scales, decoded)
            return DecoderParams(p.mu, p.scale, mean_support=p.mean_support)

        def params(means: Tensor, scales: Tensor, *dec: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return self.inner.slice_params_gated(i, means, scales, list(dec))

        inputs = [latent_means, latent_scales, *decoded]
        out = run_tiled(params, inputs, [Y_STRIDE] * len(inputs), Y_STRIDE, plan)
        assert isinstance(out, tuple)
        return DecoderParams(out[0], out[1], mean_gate=out[2])

    def refine_from_gate(self, i: int, gate: Tensor, y_hat_slice: Tensor) -> Tensor:
        """LRP of slice ``i`` tile by tile, each tile's attention output made from the kept
        gate by the module's own 1x1 convolution (:meth:`decoder_params`)."""

        def lrp(g: Tensor, y_hat: Tensor) -> Tensor:
            return self.inner.refine(i, self.inner.mean_support_from(i, g), y_hat)

        out = run_tiled(lrp, [gate, y_hat_slice], [Y_STRIDE, Y_STRIDE], Y_STRIDE, self._plan(gate))
        assert isinstance(out, Tensor)
        return out

    def refine(self, i: int, mean_support: Tensor, y_hat_slice: Tensor) -> Tensor:
        def lrp(support: Tensor, y_hat: Tensor) -> Tensor:
            return self.inner.refine(i, support, y_hat)

        out = run_tiled(lrp, [mean_support, y_hat_slice], [Y_STRIDE, Y_STRIDE], Y_STRIDE, self._plan(mean_support))
        assert isinstance(out, Tensor)
        return out
