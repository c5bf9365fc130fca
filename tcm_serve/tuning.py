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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

_SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 64 << 20))
_lock = threading.Lock()
_state: bool | None = None


def tune_malloc() -> bool:
    """Apply the settings once per process; returns whether they are in effect."""
    global _state
    with _lock:
        if _state is not None:
            return _state
        _state = False
        if os.environ.get("TCM_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
            return False
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        _state = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
        return _state
