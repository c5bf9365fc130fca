"""The HTTP API: ``create_app(settings) -> FastAPI``.

Routes (exact paths; clients, probes and dashboards depend on them)::

    POST /compress     image (raw body or multipart field "file") -> application/x-tcm
    POST /decompress   .tcm blob (raw body or multipart field "file") -> image/png
    POST /compare      image -> JSON: the .tcm result beside JPEG/WebP/AVIF at its size
    GET  /v1/models    served quality levels: config, lambda, weights hash, devices, state
    GET  /healthz      liveness (no model work)
    GET  /readyz       200 once every model is loaded and warmed up, else 503 with the reason
    GET  /metrics      Prometheus text format
    GET  /             the web page (tcm_serve/api/static/)
    GET  /docs         OpenAPI UI (/openapi.json), assets from the fastapi-offline package

Where each part lives: the codec routes in :mod:`~tcm_serve.api.routes.codec`, the others in
:mod:`~tcm_serve.api.routes.ops`, the page and ``/docs`` in :mod:`~tcm_serve.api.pages`;
reading bodies in :mod:`~tcm_serve.api.body`; what the schema documents in
:mod:`~tcm_serve.api.openapi`; failures to responses in :mod:`~tcm_serve.api.errors`; API keys
in :mod:`~tcm_serve.api.auth`; request ids, access log and metrics in
:mod:`~tcm_serve.api.logs` and :mod:`~tcm_serve.api.metrics`.

State lives on ``app.state`` (:class:`~tcm_serve.api.state.ApiState`): ``settings``, ``pool``
(:class:`~tcm_serve.runtime.WorkerPool`), ``metrics`` and ``threads``. The lifespan starts
the pool (models load in the background, so probes answer at once) and, on shutdown,
drains it within ``shutdown_grace_s``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio
from fastapi import FastAPI

from .. import __version__
from ..config import Settings
from ..runtime.pool import WorkerPool
from .auth import ApiKeyMiddleware, ApiKeys
from .errors import install_error_handlers
from .logs import RequestContextMiddleware
from .metrics import Metrics
from .openapi import publish_served_values
from .pages import install_pages
from .routes import ROUTERS
from .state import ApiState, Threads


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the pool on startup; on shutdown, drain it within ``shutdown_grace_s`` (off the
    event loop, which keeps serving the requests that finish meanwhile)."""
    state = ApiState.of_app(app)
    state.pool.start()
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(partial(state.pool.shutdown, state.settings.shutdown_grace_s))
        state.threads.shutdown()


def _observed_pool(settings: Settings, pool: WorkerPool | None, metrics: Metrics) -> WorkerPool:
    """The pool (a new one unless given), reporting to ``metrics``, which watches its devices
    and queue."""
    if pool is None:
        pool = WorkerPool(settings, observer=metrics)
    else:
        pool.set_observer(metrics)
    metrics.watch_devices(pool.devices)
    metrics.watch_queue(pool.batcher)
    return pool


def _add_middleware(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """API keys (when configured) inside the request context, so that refusals are logged
    and counted like any other answer."""
    if settings.api_keys_file:
        app.add_middleware(ApiKeyMiddleware, keys=ApiKeys(settings.api_keys_file), open_paths=settings.open_paths)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)


def create_app(settings: Settings | None = None, pool: WorkerPool | None = None) -> FastAPI:
    """Build the app. Raises :class:`~tcm_serve.errors.ConfigError` for a bad configuration
    (store without models, unknown quality or device) before anything is served."""
    settings = settings or Settings()
    metrics = Metrics()
    pool = _observed_pool(settings, pool, metrics)
    state = ApiState(settings=settings, pool=pool, metrics=metrics, threads=Threads.for_settings(settings))
    app = FastAPI(
        title="tcm-serve",
        version=__version__,
        summary="Learned image compression (TCM, CVPR 2023) as a service",
        lifespan=lifespan,
        docs_url=None,  # served by install_pages from packaged assets: /docs works offline
        redoc_url=None,
    )
    state.install(app)
    install_error_handlers(app)
    _add_middleware(app, settings, metrics)
    for router in ROUTERS:
        app.include_router(router)
    install_pages(app)
    publish_served_values(app, lambda: state.pool.qualities, settings.max_effort)
    return app
