"""The service's runtime: device workers, dynamic batching, range-coding threads.

The worker pool (and with it torch) is imported on first use of its name, so that
``tcm_serve.runtime.errors`` (the runtime's refusals, which the Python client maps answers
back to) imports without torch: ``import tcm_serve.client`` needs httpx only.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .batcher import Batcher, Job

__all__ = ["Batcher", "Job", "WorkerPool"]


def __getattr__(name: str) -> Any:
    if name == "WorkerPool":
        return import_module(".pool", __name__).WorkerPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
