"""The service's runtime: device workers, dynamic batching, range-coding threads.

The worker pool (and with it torch) is imported on first use of one of its names, so that
``tcm_serve.runtime.errors`` (the HTTP-level errors the Python client maps answers to) imports
without torch: ``import tcm_serve.client`` needs httpx only.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .batcher import Batcher, Job

__all__ = ["Batcher", "Job", "WorkerPool", "decompress_batch", "resolve_devices"]
_FROM_POOL = ("WorkerPool", "decompress_batch", "resolve_devices")


def __getattr__(name: str) -> Any:
    if name in _FROM_POOL:
        return getattr(import_module(".pool", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
