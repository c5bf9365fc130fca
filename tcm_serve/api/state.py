"""What the handlers share, created once per app and kept on ``app.state``.

``app.state.settings``, ``app.state.pool`` (:class:`~tcm_serve.runtime.WorkerPool`) and
``app.state.metrics`` are the app's public handles (tests, the CLI and operators' scripts use
them); ``app.state.threads`` holds the threads the handlers hand blocking work to. Handlers
read all of it through :meth:`ApiState.of`, typed, from ``request.app.state``: one place
names the attributes, so nothing else spells them.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from fastapi import FastAPI
from starlette.requests import Request

from ..config import Settings
from ..runtime.pool import WorkerPool
from .metrics import Metrics

T = TypeVar("T")


@dataclass(frozen=True)
class Threads:
    """Blocking work off the event loop, on bounded pools.

    Image decoding and PNG encoding run on ``image_io`` (as many threads as cores), so that
    many simultaneous uploads cannot decode more images at once than there are cores to do
    it. Comparisons (``POST /compare``) run on threads of their own, never ahead of image
    decoding, and at most ``compare_concurrency`` at once (``compare_slots``): each holds
    several times the memory and CPU of a ``/compress``."""

    image_io: ThreadPoolExecutor
    compare: ThreadPoolExecutor
    compare_slots: threading.BoundedSemaphore

    @classmethod
    def for_settings(cls, settings: Settings) -> Threads:
        return cls(
            image_io=ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="tcm-image-io"),
            compare=ThreadPoolExecutor(settings.compare_concurrency, thread_name_prefix="tcm-compare"),
            compare_slots=threading.BoundedSemaphore(settings.compare_concurrency),
        )

    async def image_io_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on an image-I/O thread."""
        return await asyncio.get_running_loop().run_in_executor(self.image_io, partial(fn, *args, **kwargs))

    def shutdown(self) -> None:
        """Stop taking work; running calls finish on their own (the pool has drained)."""
        self.image_io.shutdown(wait=False)
        self.compare.shutdown(wait=False)


@dataclass(frozen=True)
class ApiState:
    """The typed view of ``app.state`` that handlers and the lifespan use."""

    settings: Settings
    pool: WorkerPool
    metrics: Metrics
    threads: Threads

    def install(self, app: FastAPI) -> None:
        """Keep this state on ``app.state`` (the one place that writes it)."""
        app.state.settings = self.settings
        app.state.pool = self.pool
        app.state.metrics = self.metrics
        app.state.threads = self.threads

    @classmethod
    def of_app(cls, app: FastAPI) -> ApiState:
        s = app.state
        return cls(settings=s.settings, pool=s.pool, metrics=s.metrics, threads=s.threads)

    @classmethod
    def of(cls, request: Request) -> ApiState:
        """The state of the app serving ``request``."""
        return cls.of_app(request.app)
