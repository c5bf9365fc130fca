"""Device specs: what ``--device``, ``--devices`` and ``TCM_DEVICES`` accept, and the
``torch.device``\\ s they stand for.

One home for every device rule, in three steps that run at different times:

* :func:`parse_device` / :func:`parse_devices` check and normalise the text. They need no
  torch, so :mod:`tcm_serve.config` refuses a bad ``TCM_DEVICES`` at start-up without
  importing it;
* :func:`resolve_device` / :func:`resolve_devices` turn a spec into ``torch.device``\\ s on
  this machine (``auto`` looks for CUDA; ``cuda`` without a usable GPU says why);
* :func:`set_reproducible_kernels` sets torch's process-wide flags for codec work on a
  device. It is separate from parsing on purpose: the caller that is about to run the
  codec on a device (a service worker starting, a CLI command loading its model) calls it.

Every failure is a one-line :class:`~tcm_serve.errors.ConfigError`.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

#: The logger of the device choice the service makes (``auto``): the runtime's.
log = logging.getLogger("tcm.runtime")

#: Specs that name a kind of device rather than one device; each stands alone.
DEVICE_WORDS = ("auto", "cpu", "cuda")
_CUDA_INDEX = re.compile(r"cuda:[0-9]+")


def _is_device_name(name: str) -> bool:
    """True for a normalised name this module knows: a word of :data:`DEVICE_WORDS` or ``cuda:N``."""
    return name in DEVICE_WORDS or _CUDA_INDEX.fullmatch(name) is not None


# -- parsing (no torch) ---------------------------------------------------------------------------
def parse_device(spec: str | None) -> str:
    """One device for a CLI command, normalised: ``auto`` (also for None or blank), ``cpu``,
    ``cuda`` or ``cuda:N``."""
    name = (spec or "auto").strip().lower()
    if not _is_device_name(name):
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")
    return name


def parse_devices(spec: str) -> tuple[str, ...]:
    """The service's devices, normalised: ``auto``, ``cpu`` or ``cuda`` alone, or a
    comma-separated list of ``cuda:N`` (spaces and case ignored)."""
    names = [p for p in spec.replace(" ", "").lower().split(",") if p]
    if not names:
        raise ConfigError("devices must not be empty")
    for name in names:
        if name in DEVICE_WORDS and len(names) > 1:
            raise ConfigError(f"{name!r} cannot be combined with other devices")
        if not _is_device_name(name):
            raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or a list like cuda:0,cuda:1)")
    return tuple(names)


# -- resolution (torch) ---------------------------------------------------------------------------
def cuda_unavailable_reason() -> str:
    """Why torch sees no CUDA device, in one line (a CPU-only torch build, a driver too old
    for it, no device visible to the process, ...): a GPU deployment that falls back or
    fails must say what to fix."""
    import torch

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    try:
        torch.cuda.init()
    except Exception as exc:  # noqa: BLE001 - torch words the driver and device problems itself
        return " ".join(str(exc).split())[:300] or type(exc).__name__
    if torch.cuda.device_count() == 0:
        return "no CUDA device is visible to this process (the pod's GPU request, CUDA_VISIBLE_DEVICES)"
    return "torch.cuda.is_available() is false"


def _torch_device(name: str) -> torch.device:
    """The ``torch.device`` of a parsed name other than ``auto``, refused if this machine
    lacks it (so a request for a GPU fails at start instead of at the first image)."""
    import torch

    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"device {name!r} does not exist ({count} CUDA device(s))")
    return device


def resolve_device(spec: str | None = "auto") -> torch.device:
    """One device for a CLI command: ``auto`` is the first CUDA device if there is one, else
    the CPU; ``cpu``, ``cuda`` and ``cuda:N`` as named."""
    import torch

    name = parse_device(spec)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return _torch_device(name)


def _auto_devices() -> tuple[str, ...]:
    """What ``auto`` means here (every CUDA device, else the CPU), logged with the reason
    when it is the CPU."""
    import torch

    if torch.cuda.is_available():
        log.info(f"devices auto: {torch.cuda.device_count()} CUDA device(s), serving on the GPU")
        return ("cuda",)
    log.info(
        f"devices auto: serving on the CPU because {cuda_unavailable_reason()} "
        "(set TCM_DEVICES=cuda where a GPU is expected, to fail instead)"
    )
    return ("cpu",)


def _every_cuda_device() -> tuple[str, ...]:
    """``cuda`` for the service: every CUDA device, or a ConfigError saying why there is none."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"devices 'cuda' requested but CUDA is not available: {cuda_unavailable_reason()}")
    return tuple(f"cuda:{i}" for i in range(torch.cuda.device_count()))


def resolve_devices(spec: str) -> list[torch.device]:
    """The service's devices (see :func:`parse_devices`): ``auto`` is every CUDA device, else
    the CPU (logged, with the reason); ``cuda`` is every CUDA device and fails, saying why,
    without one, so that a GPU deployment never serves at CPU speed."""
    names = parse_devices(spec)
    if names == ("auto",):
        names = _auto_devices()
    if names == ("cuda",):
        names = _every_cuda_device()
    devices = [_torch_device(name) for name in names]
    if len(set(devices)) != len(devices):
        raise ConfigError(f"device list {spec!r} names a device twice")
    return devices


# -- configuring a device for work ----------------------------------------------------------------
def set_reproducible_kernels(device: torch.device) -> None:
    """Make torch compute the same entropy parameters on every run on ``device``: encoder
    and decoder must agree to the last bit, so no TF32 and no autotuned (run-to-run
    varying) convolution algorithms. The flags are process-wide; the CPU needs none."""
    if device.type != "cuda":
        return
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
