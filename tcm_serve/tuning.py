"""Process-level tuning for CPU inference: keep glibc malloc from returning big buffers.

TCM's transforms allocate and free buffers of tens to hundreds of MB per layer (window
attention scores, activations at 1/2 resolution). glibc serves every allocation above its
mmap threshold with a fresh ``mmap`` and gives it back with ``munmap`` on free, so each
forward pass touches those pages anew: hundreds of thousands of minor page faults and a
large share of kernel time per image (measured in docs/performance.md). jemalloc would
fix it but is not pip-installable; glibc's own knobs do, at run time, via ``mallopt``:

* ``M_MMAP_MAX = 0``: never serve allocations with ``mmap``; the heap grows instead and
  freed blocks are reused by the next layer;
* ``M_TRIM_THRESHOLD`` = 1 GiB: do not hand freed heap memory back to the kernel (so the
  process keeps its peak memory: fine for a codec process, and what makes reuse work);
* ``M_TOP_PAD`` = 64 MiB: grow the heap in large steps.

This changes no arithmetic (conformance stays byte-exact). ``TCM_MALLOC_TUNING=0`` turns
it off; on a C library other than glibc it does nothing.

The price of a heap that never shrinks is fragmentation: a long-lived buffer of a whole
large image (a tiled transform's assembled output, the latent state of the slice chain)
placed between per-layer scratch buffers splits the free space, and the heap grows past
what is live. :func:`empty_outside_heap` puts such buffers in their own anonymous
mappings, which are faulted in once (they are written once) and returned to the kernel
when freed (measured on a 12 MP photo, official-small layout: docs/codec.md, "Tiling").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import mmap
import os
import threading
from typing import Any

import torch

# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

_SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 64 << 20))
_lock = threading.Lock()
_state: bool | None = None


@functools.cache
def _glibc_function(name: str) -> Any:
    """The C library's function ``name``, or None where there is none (not glibc)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def tune_malloc() -> bool:
    """Apply the settings once per process; returns whether they are in effect."""
    global _state
    with _lock:
        if _state is not None:
            return _state
        _state = False
        if os.environ.get("TCM_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
            return False
        mallopt = _glibc_function("mallopt")
        if mallopt is None:  # not glibc (musl, macOS): nothing to tune
            return False
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        _state = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
        return _state


def release_free_memory() -> None:
    """Give the heap's free pages back to the kernel (``malloc_trim``): between the stages of
    a large image, so that one stage's freed scratch is not resident while the next one's
    buffers are mapped. Costs a page fault per reused page afterwards, so it is for stage
    boundaries of tiled images, not for every request. A no-op off glibc."""
    trim = _glibc_function("malloc_trim")
    if trim is not None:
        trim(0)


#: CPU buffers at least this large are mapped outside the heap by :func:`empty_outside_heap`
#: (smaller ones fragment little and are cheaper from the heap).
OUTSIDE_HEAP_BYTES = 32 << 20


def empty_outside_heap(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor for a long-lived buffer that grows with the image: in an
    anonymous memory mapping of its own on the CPU when it is at least
    :data:`OUTSIDE_HEAP_BYTES` (unmapped when the tensor is freed), else ``torch.empty``."""
    nbytes = math.prod(shape) * dtype.itemsize
    if device.type != "cpu" or nbytes < OUTSIDE_HEAP_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(region, dtype=dtype).view(shape)  # the tensor keeps the mapping alive
