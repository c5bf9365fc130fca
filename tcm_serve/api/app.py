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

State lives on ``app.state``: ``settings``, ``pool`` (:class:`~tcm_serve.runtime.WorkerPool`)
and ``metrics``. The lifespan starts the pool (models load in the background, so probes
answer at once) and, on shutdown, drains it within ``shutdown_grace_s``.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Literal, Optional

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from ..codec.container import BITSTREAMS, unpack
from ..config import Settings
from ..imageio import decode_image, encode_png
from ..runtime.batcher import Job
from ..runtime.errors import (
    BadParameterError,
    BadRequestError,
    ClientClosedError,
    DeadlineExceededError,
    QueueFullError,
    RequestTimeoutError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)
from ..runtime.pool import WorkerPool
from .auth import ApiKeyMiddleware, ApiKeys
from .compare import COMPARE_SCHEMA, CodedResult, comparison_json
from .pages import install_pages
from .errors import error_response, install_error_handlers
from .logs import RequestContext, RequestContextMiddleware
from .metrics import Metrics

TCM_MEDIA_TYPE = "application/x-tcm"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/tiff")
RAW_IMAGE_OK = ("application/octet-stream",)
RAW_BLOB_OK = (TCM_MEDIA_TYPE, "application/octet-stream")

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    "required": ["error", "detail"],
}


_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"}}
}
_HEADER_INT = {"type": "string", "pattern": "^[0-9]+$"}

_MODELS_SCHEMA = {
    "type": "object",
    "required": ["default_quality", "qualities", "devices", "max_batch_size", "ready", "models"],
    "properties": {
        "default_quality": {"type": "integer"},
        "qualities": {"type": "array", "items": {"type": "integer"}},
        "devices": {"type": "array", "items": {"type": "string"}},
        "max_batch_size": {"type": "integer"},
        "ready": {"type": "boolean"},
        "models": {"type": "array", "items": {
            "type": "object",
            "required": ["quality", "default", "config", "config_hash", "weights_sha256", "weights_hash", "devices", "loaded"],
            "properties": {
                "quality": {"type": "integer"},
                "default": {"type": "boolean"},
                "preset": {"type": ["string", "null"]},
                "config": {"type": "object"},
                "config_hash": {"type": "string"},
                "lambda": {"type": ["number", "null"]},
                "metric": {"type": "string"},
                "weights_sha256": {"type": "string"},
                "weights_hash": {"type": "string"},
                "source": {"type": "string"},
                "devices": {"type": "array", "items": {
                    "type": "object",
                    "required": ["device", "state", "loaded"],
                    "properties": {
                        "device": {"type": "string"},
                        "state": {"type": "string", "enum": ["pending", "loading", "warming", "ready", "failed"]},
                        "loaded": {"type": "boolean"},
                        "load_seconds": {"type": ["number", "null"]},
                        "warmup_seconds": {"type": ["number", "null"]},
                        "error": {"type": ["string", "null"]},
                    },
                }},
                "loaded": {"type": "boolean"},
            },
        }},
    },
}


def _json_doc(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _served_qualities_in_schema(schema: dict[str, Any], qualities: list[int]) -> dict[str, Any]:
    """Narrow ``quality`` from 1..255 to the levels this service actually serves, so that the
    published schema says which values succeed (any other is a 422)."""
    params = [p for route in ("/compress", "/compare") for p in schema["paths"][route]["post"].get("parameters", [])]
    for param in params:
        if param.get("name") == "quality":
            param["schema"] = {
                "anyOf": [{"type": "integer", "enum": list(qualities)}, {"type": "null"}],
                "description": param["schema"].get("description", ""),
                "title": "Quality",
            }
    return schema


def _errors_doc(*codes: int) -> dict[int, dict[str, Any]]:
    text = {
        400: "malformed image or blob, or a malformed request",
        408: "the request body did not arrive within the request deadline (slow upload)",
        413: "body, image or decoded size over the limit",
        415: "unsupported media type or image format",
        422: "bad parameter, or a quality / model this service does not serve",
        429: "queue full: retry after Retry-After seconds",
        503: "not ready (loading) or shutting down: retry after Retry-After seconds",
        504: "the request did not finish within the deadline",
    }
    doc = {c: {"description": text[c], "content": {"application/json": {"schema": _ERROR_SCHEMA}}} for c in codes}
    for c in (429, 503):
        if c in doc:
            doc[c]["headers"] = _RETRY_AFTER
    return doc


def _body_doc(raw_types: tuple[str, ...], what: str) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    content: dict[str, Any] = {t: binary for t in raw_types}
    content["multipart/form-data"] = {
        "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}, "required": ["file"]}
    }
    return {"requestBody": {"required": True, "description": what, "content": content}}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes (before reading, when Content-Length says so)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise BadRequestError(f"invalid Content-Length {declared!r}") from None
        if n > limit:
            raise RequestTooLargeError(f"request body is {n:,} bytes, over the limit of {limit:,} bytes")
    buf = bytearray()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise RequestTooLargeError(f"request body is over the limit of {limit:,} bytes")
    except ClientDisconnect:
        raise ClientClosedError(f"the client disconnected after sending {len(buf):,} bytes of the body") from None
    return bytes(buf)


async def _multipart_file(request: Request, body: bytes, limit: int) -> bytes:
    """The ``file`` field of a multipart body that was already read (and size-checked)."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    from starlette.formparsers import MultiPartException
    from starlette.exceptions import HTTPException

    req = Request(request.scope, replay)
    try:
        form = await req.form(max_files=4, max_fields=16, max_part_size=limit)
    except (MultiPartException, HTTPException) as exc:
        raise BadRequestError(f"malformed multipart body: {getattr(exc, 'message', None) or getattr(exc, 'detail', exc)}") from None
    try:
        field = form.get("file")
        if field is None:
            raise BadRequestError("multipart body has no 'file' field")
        if not isinstance(field, UploadFile):
            raise BadRequestError("multipart field 'file' must be a file upload (with a filename)")
        return await field.read()
    finally:
        await form.close()


async def _payload(request: Request, raw_ok: tuple[str, ...], raw_prefix: str | None, limit: int, what: str) -> bytes:
    mt = _media_type(request)
    if mt == "multipart/form-data":
        return await _multipart_file(request, await _read_body(request, limit), limit)
    if mt == "" or mt in raw_ok or (raw_prefix is not None and mt.startswith(raw_prefix)):
        return await _read_body(request, limit)
    raise UnsupportedMediaTypeError(
        f"Content-Type {mt!r} is not accepted here: send {what} as the raw body "
        f"({', '.join(raw_ok)}{', ' + raw_prefix + '*' if raw_prefix else ''}) or as multipart field 'file'"
    )


def _only_query(request: Request, known: frozenset[str]) -> None:
    """Refuse query parameters the endpoint does not take: a typo such as ``qualty=1``
    would otherwise be ignored and the image coded at the default quality."""
    unknown = sorted(set(request.query_params.keys()) - known)
    if unknown:
        expected = ", ".join(sorted(known)) or "none"
        raise BadParameterError(f"unknown query parameter(s) {', '.join(unknown)} (this endpoint takes: {expected})")


_COMPRESS_QUERY = frozenset({"quality", "drop_alpha", "bitstream"})
_COMPARE_QUERY = frozenset({"quality", "drop_alpha"})
_DECOMPRESS_QUERY: frozenset[str] = frozenset()


async def _payload_by(deadline: float, request: Request, *args: Any) -> bytes:
    """:func:`_payload`, refused (408) if the body has not arrived by ``deadline``: the
    request holds a queue place while it reads, and a slow client must not keep it."""
    try:
        return await asyncio.wait_for(_payload(request, *args), timeout=max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise RequestTimeoutError("the request body did not arrive within the request deadline") from None


async def _await_job(pool: WorkerPool, job: Job, ctx: RequestContext):
    fut = asyncio.wrap_future(job.future)
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout=max(0.0, job.deadline - time.monotonic()))
    except asyncio.TimeoutError:
        pool.cancel(job)
        raise DeadlineExceededError(
            f"the request did not finish within {pool.settings.request_timeout_s:g} s"
        ) from None
    except asyncio.CancelledError:
        pool.cancel(job)
        raise
    finally:
        ctx.timings.update(job.timings)
        if job.batch_size:
            ctx.batch_size = job.batch_size


def create_app(settings: Settings | None = None, pool: WorkerPool | None = None) -> FastAPI:
    """Build the app. Raises :class:`~tcm_serve.errors.ConfigError` for a bad configuration
    (store without models, unknown quality or device) before anything is served."""
    settings = settings or Settings()
    metrics = Metrics()
    if pool is None:
        pool = WorkerPool(settings, observer=metrics)
    else:
        pool.observer = metrics
        pool.batcher._on_depth = metrics.queue_depth
    metrics.watch_devices(pool.devices)
    metrics.watch_queue(pool.batcher)
    # Image decoding and PNG encoding run off the event loop on a bounded pool, so that many
    # simultaneous uploads cannot decode more images at once than there are cores to do it.
    image_io = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="tcm-image-io")
    # Comparisons (POST /compare) run on their own threads, never ahead of image decoding.
    compare_worker = ThreadPoolExecutor(settings.compare_concurrency, thread_name_prefix="tcm-compare")
    compare_slots = threading.BoundedSemaphore(settings.compare_concurrency)

    async def in_io_thread(fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(image_io, partial(fn, *args, **kwargs))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(partial(pool.shutdown, settings.shutdown_grace_s))
            image_io.shutdown(wait=False)
            compare_worker.shutdown(wait=False)

    app = FastAPI(
        title="tcm-serve",
        version="0.1.0",
        summary="Learned image compression (TCM, CVPR 2023) as a service",
        lifespan=lifespan,
        docs_url=None,  # served below from packaged assets: /docs works offline
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.pool = pool
    app.state.metrics = metrics
    install_error_handlers(app)
    if settings.api_keys_file:  # inside the request context: refusals are logged and counted
        app.add_middleware(ApiKeyMiddleware, keys=ApiKeys(settings.api_keys_file), open_paths=settings.open_paths)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)

    def ctx_of(request: Request) -> RequestContext:
        return request.state.ctx

    async def read_image(request: Request, ctx: RequestContext, deadline: float, drop_alpha: bool, max_pixels: int):
        """The request's image, decoded under ``max_pixels`` and the request deadline."""
        data = await _payload_by(deadline, request, RAW_IMAGE_OK, "image/", settings.max_body_bytes, "the image")
        t0 = time.monotonic()
        decoding = in_io_thread(
            decode_image, data, max_pixels=max_pixels, max_bytes=settings.max_body_bytes, drop_alpha=drop_alpha
        )
        try:
            # under the deadline too: a pathological file (e.g. a progressive JPEG with
            # thousands of scans) must not hold the queue place past it
            image = await asyncio.wait_for(decoding, timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise DeadlineExceededError(
                f"the image did not decode within the request deadline ({settings.request_timeout_s:g} s)"
            ) from None
        io_s = time.monotonic() - t0
        ctx.timings["image_io"] = io_s
        metrics.stage("image_io", io_s)
        return image

    @app.post(
        "/compress",
        response_class=Response,
        summary="Compress an image to a .tcm blob",
        responses={
            200: {"content": {TCM_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                  "description": "the .tcm blob; headers X-TCM-Quality, X-TCM-Bpp, X-TCM-Width, X-TCM-Height, "
                                 "X-TCM-Format-Version (2: portable, 1: exact)",
                  "headers": {
                      "X-TCM-Quality": {"required": True, "schema": _HEADER_INT},
                      "X-TCM-Bpp": {"required": True, "schema": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+$"}},
                      "X-TCM-Width": {"required": True, "schema": _HEADER_INT},
                      "X-TCM-Height": {"required": True, "schema": _HEADER_INT},
                      "X-TCM-Format-Version": {"required": True, "schema": {"type": "string", "enum": ["1", "2"]}},
                  }},
            **_errors_doc(400, 408, 413, 415, 422, 429, 503, 504),
        },
        openapi_extra=_body_doc(IMAGE_TYPES + RAW_IMAGE_OK, "PNG, JPEG, WebP, BMP or TIFF image"),
    )
    async def compress(
        request: Request,
        quality: Optional[int] = Query(None, ge=1, le=255, description="quality level (default: the service's default)"),
        drop_alpha: bool = Query(False, description="discard an alpha channel instead of refusing the image"),
        bitstream: Optional[Literal[BITSTREAMS]] = Query(  # type: ignore[valid-type]
            None,
            description="portable: decodes on any machine, thread count and backend (format version 2); exact: the "
            "reference codec's strings byte for byte, decodable only where the entropy parameters are reproduced bit "
            "for bit (version 1, for conformance work). Default: the service's (TCM_BITSTREAM, else portable)",
        ),
    ) -> Response:
        ctx = ctx_of(request)
        _only_query(request, _COMPRESS_QUERY)
        q = pool.check_quality(quality)
        ctx.quality = q
        # The queue place is taken before the body is read and decoded, so a burst past the
        # queue's capacity is refused (429) without spending a core on each refused image.
        with pool.reserve() as slot:
            deadline = ctx.start + settings.request_timeout_s
            image = await read_image(request, ctx, deadline, drop_alpha, settings.max_pixels)
            job = pool.submit_compress(image, q, deadline, slot, bitstream)
        result = await _await_job(pool, job, ctx)
        metrics.bpp.labels(str(q)).observe(result.bpp)
        return Response(
            result.blob,
            media_type=TCM_MEDIA_TYPE,
            headers={
                "X-TCM-Quality": str(q),
                "X-TCM-Bpp": f"{result.bpp:.6f}",
                "X-TCM-Width": str(image.width),
                "X-TCM-Height": str(image.height),
                "X-TCM-Format-Version": str(result.header.version),
            },
        )

    @app.post(
        "/compare",
        summary="Compress an image and compare it with JPEG, WebP and AVIF at the same size",
        responses={
            200: _json_doc(
                "the .tcm result and each classic codec's file closest to its size: bytes, bpp, ratio, PSNR, "
                "MS-SSIM, and every decoded image as PNG (base64)", COMPARE_SCHEMA,
            ),
            **_errors_doc(400, 408, 413, 415, 422, 429, 503, 504),
        },
        openapi_extra=_body_doc(IMAGE_TYPES + RAW_IMAGE_OK, "PNG, JPEG, WebP, BMP or TIFF image"),
    )
    async def compare(
        request: Request,
        quality: Optional[int] = Query(None, ge=1, le=255, description="quality level (default: the service's default)"),
        drop_alpha: bool = Query(False, description="discard an alpha channel instead of refusing the image"),
    ) -> Response:
        ctx = ctx_of(request)
        _only_query(request, _COMPARE_QUERY)
        q = pool.check_quality(quality)
        ctx.quality = q
        deadline = ctx.start + settings.request_timeout_s
        # At most compare_concurrency comparisons at once (each holds several times the
        # memory and CPU of a /compress), refused before the body is read.
        if not compare_slots.acquire(blocking=False):
            raise QueueFullError(
                f"{settings.compare_concurrency} comparison(s) already running (compare_concurrency): retry shortly",
                retry_after=5,
            )
        try:
            # both queue places up front: a full queue refuses before any model work
            with pool.reserve() as compress_slot, pool.reserve() as decompress_slot:
                image = await read_image(
                    request, ctx, deadline, drop_alpha, min(settings.max_pixels, settings.compare_max_pixels)
                )
                t0 = time.monotonic()
                job = pool.submit_compress(image, q, deadline, compress_slot, "portable")
                compressed = await _await_job(pool, job, ctx)
                compress_s = time.monotonic() - t0
                t0 = time.monotonic()
                job = pool.submit_decompress(compressed.blob, compressed.header, deadline, decompress_slot)
                decoded = await _await_job(pool, job, ctx)
                decompress_s = time.monotonic() - t0

            def check_time() -> None:
                if time.monotonic() > deadline:
                    raise DeadlineExceededError(f"the comparison did not finish within {settings.request_timeout_s:g} s")

            result = CodedResult(image, q, compressed, decoded, compress_s, decompress_s)
            running = asyncio.get_running_loop().run_in_executor(compare_worker, comparison_json, result, check_time)
            try:
                body = await asyncio.wait_for(running, timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:  # the worker stops at its next check_time
                check_time()
                raise
        finally:
            compare_slots.release()
        return Response(body, media_type="application/json")

    @app.post(
        "/decompress",
        response_class=Response,
        summary="Decompress a .tcm blob to a PNG (grayscale stays grayscale)",
        responses={
            200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                  "description": "the PNG; headers X-TCM-Quality, X-TCM-Width, X-TCM-Height",
                  "headers": {
                      "X-TCM-Quality": {"required": True, "schema": _HEADER_INT},
                      "X-TCM-Width": {"required": True, "schema": _HEADER_INT},
                      "X-TCM-Height": {"required": True, "schema": _HEADER_INT},
                  }},
            **_errors_doc(400, 408, 413, 415, 422, 429, 503, 504),
        },
        openapi_extra=_body_doc(RAW_BLOB_OK, ".tcm blob"),
    )
    async def decompress(request: Request) -> Response:
        ctx = ctx_of(request)
        _only_query(request, _DECOMPRESS_QUERY)
        with pool.reserve() as slot:  # a queue place before the body is read (see compress)
            deadline = ctx.start + settings.request_timeout_s
            data = await _payload_by(deadline, request, RAW_BLOB_OK, None, settings.max_body_bytes, "the .tcm blob")
            header = (await in_io_thread(unpack, data)).header  # FormatError -> 400 before any queueing
            ctx.quality = header.quality if header.quality in pool.qualities else None
            job = pool.submit_decompress(data, header, deadline, slot)
        out = await _await_job(pool, job, ctx)
        t0 = time.monotonic()
        png = await in_io_thread(encode_png, out.pixels)
        io_s = time.monotonic() - t0
        ctx.timings["image_io"] = io_s
        metrics.stage("image_io", io_s)
        return Response(
            png,
            media_type="image/png",
            headers={
                "X-TCM-Quality": str(header.quality),
                "X-TCM-Width": str(header.width),
                "X-TCM-Height": str(header.height),
            },
        )

    @app.get(
        "/v1/models",
        summary="Served quality levels and their state",
        responses={200: _json_doc("served quality levels, their identity and per-device state", _MODELS_SCHEMA)},
    )
    async def models() -> dict[str, Any]:
        return {
            "default_quality": pool.default_quality,
            "qualities": pool.qualities,
            "devices": [str(d) for d in pool.devices],
            "max_batch_size": pool.max_batch_size,
            "ready": pool.ready,
            "models": pool.models_info(),
        }

    @app.get(
        "/healthz",
        summary="Liveness: the process and its workers are alive",
        responses={
            200: _json_doc("alive", {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}),
            503: _json_doc("a worker failed to load its models, or keeps dying", _ERROR_SCHEMA),
        },
    )
    async def healthz():
        problem = pool.alive_problem()
        if problem:
            return error_response(503, "unhealthy", problem)
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: every model loaded and warmed up",
        responses={
            200: _json_doc("ready", {"type": "object", "required": ["status", "models_loaded"], "properties": {
                "status": {"const": "ready"}, "models_loaded": {"type": "integer"}}}),
            503: {**_json_doc("not ready: loading, failed, replacing a worker, or shutting down", _ERROR_SCHEMA),
                  "headers": _RETRY_AFTER},
        },
    )
    async def readyz():
        if pool.ready:
            return {"status": "ready", "models_loaded": sum(len(w.slots) for w in pool.workers)}
        return error_response(503, "not_ready", pool.not_ready_reason() or "not ready", {"Retry-After": "2"})

    # HEAD on the probes (some load balancers and uptime checkers send HEAD): the same
    # status; the server drops the body. Kept out of the schema, which documents bodies.
    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):
        app.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"description": "Prometheus text exposition format",
                         "content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    install_pages(app)

    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _served_qualities_in_schema(generate_openapi(), pool.qualities)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
