"""The API's routes, one :class:`~fastapi.APIRouter` per concern; handlers read what they
share from ``request.app.state`` (:class:`~tcm_serve.api.state.ApiState`).

The order of :data:`ROUTERS` is the order of the paths in the published schema.
"""

from __future__ import annotations

from fastapi import APIRouter

from . import codec, ops

ROUTERS: tuple[APIRouter, ...] = (codec.router, ops.router)

__all__ = ["ROUTERS"]
