"""Encoder effort: spend encode time to find better latents for one image, the decoder fixed.

The analysis transform ``g_a`` is an amortised guess: one network pass that must do for every
image. For the image at hand, gradient steps on its own latents ``y`` and ``z`` against the
model's rate-distortion objective (``lambda * 255^2 * MSE + bpp``, the one it was trained
with) find latents that cost fewer bits, reconstruct better, or both (Campos et al., "Content
Adaptive Optimization for Neural Image Compression", 2019; Yang, Bamler, Mandt, "Improving
Inference for Neural Image Compression", NeurIPS 2020).

Why a blob made with effort decodes everywhere a blob made without it does: effort changes
only *which* ``y`` and ``z`` the encoder hands to the coder. The coder then runs the usual
path (:meth:`~tcm_serve.codec.engine.Engine.analyse_latents`): ``z`` is rounded, the
entropy parameters are computed from the rounded ``z`` and the decoded slices exactly as
the decoder will, on the portable (float64) or exact path. Nothing in the format changes and
nothing records the effort.

The optimisation runs the float32 model through the whole slice chain
(:meth:`~tcm_serve.model.tcm.TCM.from_latents`): each slice's entropy parameters depend on
the slices decoded before it, so moving slice 0 changes the cost of every later slice, and
the gradient must see that. Rounding is straight-through (rounded values forward, identity
backward) and the search keeps the best latents it has scored as coded, so effort never
ends worse, by the model's own estimate, than where ``g_a`` started.

Memory: gradients through ``g_s`` hold its activations for the whole image (a training
step's memory), so effort is refused above :data:`MAX_EFFORT_PIXELS`.

This module holds the effort levels and their checks and imports without torch (settings
and the CLI's options read it); the search itself is :mod:`tcm_serve.codec.search`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, ImageTooLargeError

#: Optimisation steps per effort level (level 0: ``g_a``'s latents as they are). Chosen by
#: measurement (docs/codec.md "Encoder effort"): each level doubles the encode work.
EFFORT_STEPS: tuple[int, ...] = (0, 8, 16, 32, 64, 128)
MAX_EFFORT = len(EFFORT_STEPS) - 1
#: The service's default limit (``TCM_MAX_EFFORT``): a Kodak image at effort 1 holds a CPU
#: worker for about 10 s with the bundled models, and each level doubles that.
DEFAULT_MAX_EFFORT = 1
#: Adam's step size at the start; it decays to zero on a cosine over the steps. Larger ones
#: raise the rate faster than they lower the distortion (docs/codec.md "Encoder effort").
LEARNING_RATE = 0.01
#: How many times a search scores its latents as coded (evenly spaced; the last at the end).
SCORES = 4
#: Memory of a search per padded pixel, an upper bound: the gradient pass holds ``g_s``'s
#: activations for the whole image, measured at 3.5 KiB per pixel for the bundled models, 8
#: for official-small and 11.5-14 for official-large (random weights, Kodak-sized images).
EFFORT_BYTES_PER_PIXEL = 14 * 1024
#: Largest padded image (pixels) effort runs on: 448 KiP (a Kodak image is 384 KiP, e.g.
#: 768x576 fits), so that a search of the largest model, 6.1 GiB, stays within the memory
#: one tiled window is budgeted (docs/deploy.md, "Sizing"; tests/test_deploy.py checks it).
MAX_EFFORT_PIXELS = 448 * 1024


@dataclass(frozen=True)
class LatentSearch:
    """How hard the encoder looks for one image's latents: ``steps`` gradient steps on the
    rate-distortion objective with ``lmbda`` (the model's training lambda)."""

    steps: int
    lmbda: float
    lr: float = LEARNING_RATE
    #: ``time.monotonic()`` past which the search stops early with the best latents so far
    #: (the service passes its request deadline: nobody waits for the answer after it).
    deadline: float | None = None

    @classmethod
    def for_level(
        cls, level: int, lmbda: float | None, metric: str = "mse", deadline: float | None = None
    ) -> LatentSearch | None:
        """The search for effort ``level`` (0..:data:`MAX_EFFORT`), or ``None`` for level 0.
        ``lmbda`` and ``metric`` are the model's own (its manifest entry): the search
        minimises what the model was trained to, and a model without a lambda, or trained
        for another metric than MSE, is refused (:class:`ConfigError`)."""
        problem = effort_problem(level)
        if problem:
            raise ValueError(problem)
        if level == 0:
            return None
        if lmbda is None or not lmbda > 0:
            raise ConfigError(
                "encoder effort needs the model's training lambda, and the store's manifest gives none for this "
                "model: give it one (tcm models import --lambda) or compress with effort 0"
            )
        if metric != "mse":
            raise ConfigError(f"encoder effort supports models trained for MSE; this one was trained for {metric}")
        return cls(EFFORT_STEPS[level], float(lmbda), deadline=deadline)


def effort_problem(level: object) -> str | None:
    """Why ``level`` is not an effort level (0..:data:`MAX_EFFORT`), or ``None``."""
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= MAX_EFFORT:
        return f"effort must be an integer from 0 to {MAX_EFFORT}, got {level!r}"
    return None


def check_effort_size(height: int, width: int) -> None:
    """Refuse (:class:`ImageTooLargeError`) a padded image too large to search latents for."""
    if height * width > MAX_EFFORT_PIXELS:
        raise ImageTooLargeError(
            f"encoder effort runs on images of at most {MAX_EFFORT_PIXELS} padded pixels; this one has "
            f"{height}x{width} = {height * width}: compress it with effort 0"
        )
