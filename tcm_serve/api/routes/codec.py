"""The codec routes: ``POST /compress``, ``POST /decompress`` and ``POST /compare``.

Each takes its queue place before it reads its body (a burst past the queue's capacity is
refused, 429, without a core spent decoding each refused image), reads and decodes under
the request deadline, and hands the model work to the worker pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from ...codec.container import BITSTREAMS, MAX_QUALITY, MIN_QUALITY, unpack
from ...codec.effort import MAX_EFFORT
from ...imageio import DecodedImage, decode_image, encode_png
from ...runtime.batcher import Job
from ...runtime.errors import DeadlineExceededError, QueueFullError
from ...runtime.pool import WorkerPool
from .. import headers as tcm_headers
from ..body import RAW_BLOB_OK, RAW_IMAGE_OK, TCM_MEDIA_TYPE, only_query, payload_by
from ..compare import CodedResult, comparison_json
from ..logs import RequestContext
from ..openapi import BLOB_BODY, COMPARE_RESPONSES, COMPRESS_RESPONSES, DECOMPRESS_RESPONSES, IMAGE_BODY
from ..state import ApiState

router = APIRouter()

Quality = Annotated[
    int | None,
    Query(ge=MIN_QUALITY, le=MAX_QUALITY, description="quality level (default: the service's default)"),
]
Effort = Annotated[
    int,
    Query(
        ge=0,
        le=MAX_EFFORT,
        description="encoder effort: optimise the image's latents for fewer bits at better quality, each level "
        "level N running 8 x 2^(N-1) search steps; every decoder decodes the result (0: none; the service's limit is "
        "TCM_MAX_EFFORT, 422 above; images up to MAX_EFFORT_PIXELS padded pixels, 413 above)",
    ),
]
DropAlpha = Annotated[bool, Query(description="discard an alpha channel instead of refusing the image")]
Bitstream = Annotated[
    Literal[BITSTREAMS] | None,  # type: ignore[valid-type]
    Query(
        description="portable: decodes on any machine, thread count and backend (format version 2); exact: the "
        "reference codec's strings byte for byte, decodable only where the entropy parameters are reproduced bit "
        "for bit (version 1, for conformance work). Default: the service's (TCM_BITSTREAM, else portable)",
    ),
]

#: The query parameters each route takes (any other is refused: see :func:`only_query`).
_COMPRESS_QUERY = frozenset({"quality", "drop_alpha", "bitstream", "effort"})
_COMPARE_QUERY = frozenset({"quality", "drop_alpha", "effort"})
_DECOMPRESS_QUERY: frozenset[str] = frozenset()
#: Share of a comparison's remaining time its compress job may take when it searches
#: (effort > 0): a search runs until its job's deadline, and the decode and the classic
#: codecs' searches still need the rest.
COMPARE_SEARCH_SHARE = 0.5


def _ctx(request: Request) -> RequestContext:
    """The request's context, set by :class:`~tcm_serve.api.logs.RequestContextMiddleware`."""
    return request.state.ctx


def _time_left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


async def _await_job(pool: WorkerPool, job: Job, ctx: RequestContext) -> Any:
    """The job's result (a compress job's ``Compressed``, a decompress job's
    ``Decompressed``) by its deadline, else 504; a request that is cancelled or too late
    takes its job off the queue, and the job's timings go to the access log either way."""
    fut = asyncio.wrap_future(job.future)
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout=_time_left(job.deadline))
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


def _record_image_io(state: ApiState, ctx: RequestContext, seconds: float) -> None:
    ctx.timings["image_io"] = seconds
    state.metrics.stage("image_io", seconds)


async def _read_image(
    request: Request, state: ApiState, deadline: float, drop_alpha: bool, max_pixels: int
) -> DecodedImage:
    """The request's image, decoded under ``max_pixels`` and the request deadline."""
    settings = state.settings
    data = await payload_by(deadline, request, RAW_IMAGE_OK, "image/", settings.max_body_bytes, "the image")
    t0 = time.monotonic()
    decoding = state.threads.image_io_call(
        decode_image, data, max_pixels=max_pixels, max_bytes=settings.max_body_bytes, drop_alpha=drop_alpha
    )
    try:
        # under the deadline too: a pathological file (e.g. a progressive JPEG with
        # thousands of scans) must not hold the queue place past it
        image = await asyncio.wait_for(decoding, timeout=_time_left(deadline))
    except asyncio.TimeoutError:
        raise DeadlineExceededError(
            f"the image did not decode within the request deadline ({settings.request_timeout_s:g} s)"
        ) from None
    _record_image_io(state, _ctx(request), time.monotonic() - t0)
    return image


@router.post(
    "/compress",
    response_class=Response,
    summary="Compress an image to a .tcm blob",
    responses=COMPRESS_RESPONSES,
    openapi_extra=IMAGE_BODY,
)
async def compress(
    request: Request,
    quality: Quality = None,
    drop_alpha: DropAlpha = False,
    bitstream: Bitstream = None,
    effort: Effort = 0,
) -> Response:
    state, ctx = ApiState.of(request), _ctx(request)
    only_query(request, _COMPRESS_QUERY)
    pool = state.pool
    q = pool.check_quality(quality)
    pool.check_effort(effort)  # before the body is read
    ctx.quality = q
    # The queue place is taken before the body is read and decoded, so a burst past the
    # queue's capacity is refused (429) without spending a core on each refused image.
    with pool.reserve() as slot:
        deadline = ctx.start + state.settings.request_timeout_s
        image = await _read_image(request, state, deadline, drop_alpha, state.settings.max_pixels)
        job = pool.submit_compress(image, q, deadline, slot, bitstream, effort)
    result = await _await_job(pool, job, ctx)
    state.metrics.bpp.labels(str(q)).observe(result.bpp)
    return Response(
        result.blob,
        media_type=TCM_MEDIA_TYPE,
        headers={
            tcm_headers.QUALITY: str(q),
            tcm_headers.BPP: f"{result.bpp:.6f}",
            tcm_headers.WIDTH: str(image.width),
            tcm_headers.HEIGHT: str(image.height),
            tcm_headers.FORMAT_VERSION: str(result.header.version),
            tcm_headers.EFFORT: str(effort),
        },
    )


@asynccontextmanager
async def _compare_slot(state: ApiState) -> AsyncIterator[None]:
    """One of the ``compare_concurrency`` comparison places, refused (429) before the body
    is read when all are taken."""
    if not state.threads.compare_slots.acquire(blocking=False):
        raise QueueFullError(
            f"{state.settings.compare_concurrency} comparison(s) already running (compare_concurrency): retry shortly",
            retry_after=5,
        )
    try:
        yield
    finally:
        state.threads.compare_slots.release()


def _check_deadline(deadline: float, timeout_s: float) -> None:
    """Raise 504 once ``deadline`` has passed (the comparison calls this between encodes)."""
    if time.monotonic() > deadline:
        raise DeadlineExceededError(f"the comparison did not finish within {timeout_s:g} s")


async def _code_and_decode(
    request: Request, state: ApiState, q: int, effort: int, deadline: float, drop_alpha: bool
) -> CodedResult:
    """The image, compressed at ``q`` and ``effort`` (portable; a search gets
    :data:`COMPARE_SEARCH_SHARE` of the time left) and decoded again, with the time of each."""
    pool, settings, ctx = state.pool, state.settings, _ctx(request)
    # both queue places up front: a full queue refuses before any model work
    with pool.reserve() as compress_slot, pool.reserve() as decompress_slot:
        max_pixels = min(settings.max_pixels, settings.compare_max_pixels)
        image = await _read_image(request, state, deadline, drop_alpha, max_pixels)
        t0 = time.monotonic()
        search_by = t0 + COMPARE_SEARCH_SHARE * _time_left(deadline) if effort else deadline
        job = pool.submit_compress(image, q, search_by, compress_slot, "portable", effort)
        compressed = await _await_job(pool, job, ctx)
        compress_s = time.monotonic() - t0
        t0 = time.monotonic()
        job = pool.submit_decompress(compressed.blob, compressed.header, deadline, decompress_slot)
        decoded = await _await_job(pool, job, ctx)
        decompress_s = time.monotonic() - t0
    return CodedResult(image, q, effort, compressed, decoded, compress_s, decompress_s)


async def _comparison_body(
    state: ApiState, result: CodedResult, check_time: Callable[[], None], deadline: float
) -> bytes:
    """The comparison's JSON, made on a compare thread under the request deadline."""
    running = asyncio.get_running_loop().run_in_executor(state.threads.compare, comparison_json, result, check_time)
    try:
        return await asyncio.wait_for(running, timeout=_time_left(deadline))
    except asyncio.TimeoutError:  # the worker stops at its next check_time
        check_time()
        raise


@router.post(
    "/compare",
    summary="Compress an image and compare it with JPEG, WebP and AVIF at the same size",
    responses=COMPARE_RESPONSES,
    openapi_extra=IMAGE_BODY,
)
async def compare(
    request: Request, quality: Quality = None, drop_alpha: DropAlpha = False, effort: Effort = 0
) -> Response:
    state, ctx = ApiState.of(request), _ctx(request)
    only_query(request, _COMPARE_QUERY)
    q = state.pool.check_quality(quality)
    state.pool.check_effort(effort)  # before the body is read
    ctx.quality = q
    deadline = ctx.start + state.settings.request_timeout_s
    check_time = partial(_check_deadline, deadline, state.settings.request_timeout_s)
    async with _compare_slot(state):
        result = await _code_and_decode(request, state, q, effort, deadline, drop_alpha)
        body = await _comparison_body(state, result, check_time, deadline)
    return Response(body, media_type="application/json")


@router.post(
    "/decompress",
    response_class=Response,
    summary="Decompress a .tcm blob to a PNG (grayscale stays grayscale)",
    responses=DECOMPRESS_RESPONSES,
    openapi_extra=BLOB_BODY,
)
async def decompress(request: Request) -> Response:
    state, ctx = ApiState.of(request), _ctx(request)
    only_query(request, _DECOMPRESS_QUERY)
    pool, settings = state.pool, state.settings
    with pool.reserve() as slot:  # a queue place before the body is read (see compress)
        deadline = ctx.start + settings.request_timeout_s
        data = await payload_by(deadline, request, RAW_BLOB_OK, None, settings.max_body_bytes, "the .tcm blob")
        header = (await state.threads.image_io_call(unpack, data)).header  # FormatError -> 400 before any queueing
        ctx.quality = header.quality if header.quality in pool.qualities else None
        job = pool.submit_decompress(data, header, deadline, slot)
    out = await _await_job(pool, job, ctx)
    t0 = time.monotonic()
    png = await state.threads.image_io_call(encode_png, out.pixels)
    _record_image_io(state, ctx, time.monotonic() - t0)
    return Response(
        png,
        media_type="image/png",
        headers={
            tcm_headers.QUALITY: str(header.quality),
            tcm_headers.WIDTH: str(header.width),
            tcm_headers.HEIGHT: str(header.height),
        },
    )
