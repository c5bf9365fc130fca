"""The HTTP API (FastAPI): :func:`create_app`.

``create_app`` (and with it FastAPI and torch) is imported on first use of the name, so that
:mod:`tcm_serve.api.exceptions` (the HTTP-level errors the Python client maps answers to)
imports without them: ``import tcm_serve.client`` needs httpx only.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        return getattr(import_module(".app", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
