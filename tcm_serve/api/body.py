"""Reading a request: its body (raw or multipart), under a size limit and a deadline, and
its query string, refused when it names a parameter the endpoint does not take.

The codec routes take their input either as the raw body or as the multipart field
``file`` (what an HTML form or ``curl -F`` sends); every way the reading fails is a
:class:`~tcm_serve.errors.TcmError` (400, 408, 413, 415, 422 or 499), never a 500.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

from ..runtime.errors import BadParameterError
from .exceptions import (
    BadRequestError,
    ClientClosedError,
    RequestTimeoutError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)

TCM_MEDIA_TYPE = "application/x-tcm"
#: Image types documented for the raw body (any ``image/*`` is read; decoding decides).
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/tiff")
RAW_IMAGE_OK = ("application/octet-stream",)
RAW_BLOB_OK = (TCM_MEDIA_TYPE, "application/octet-stream")
MULTIPART = "multipart/form-data"


def media_type(request: Request) -> str:
    """The Content-Type without its parameters, lower-cased ("" when there is none)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _declared_length(headers: Mapping[str, str], limit: int) -> None:
    """Refuse a body whose Content-Length is over ``limit`` before reading a byte of it."""
    declared = headers.get("content-length")
    if declared is None:
        return
    try:
        n = int(declared)
    except ValueError:
        raise BadRequestError(f"invalid Content-Length {declared!r}") from None
    if n > limit:
        raise RequestTooLargeError(f"request body is {n:,} bytes, over the limit of {limit:,} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes (before reading, when Content-Length says
    so; while reading otherwise, so a chunked upload cannot fill the memory either)."""
    _declared_length(request.headers, limit)
    buf = bytearray()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise RequestTooLargeError(f"request body is over the limit of {limit:,} bytes")
    except ClientDisconnect:
        raise ClientClosedError(f"the client disconnected after sending {len(buf):,} bytes of the body") from None
    return bytes(buf)


def _replayed(request: Request, body: bytes) -> Request:
    """The request again, its (already read and size-checked) body replayed once, so that
    Starlette's form parser reads it without touching the connection."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, replay)


async def multipart_file(request: Request, body: bytes, limit: int) -> bytes:
    """The ``file`` field of a multipart body that was already read (and size-checked)."""
    try:
        form = await _replayed(request, body).form(max_files=4, max_fields=16, max_part_size=limit)
    except (MultiPartException, HTTPException) as exc:
        reason = getattr(exc, "message", None) or getattr(exc, "detail", exc)
        raise BadRequestError(f"malformed multipart body: {reason}") from None
    try:
        field = form.get("file")
        if field is None:
            raise BadRequestError("multipart body has no 'file' field")
        if not isinstance(field, UploadFile):
            raise BadRequestError("multipart field 'file' must be a file upload (with a filename)")
        return await field.read()
    finally:
        await form.close()


async def payload(request: Request, raw_ok: tuple[str, ...], raw_prefix: str | None, limit: int, what: str) -> bytes:
    """The request's input: the multipart field ``file``, or the raw body when its
    Content-Type is none, one of ``raw_ok`` or starts with ``raw_prefix``; any other type
    is refused (415) before the body is read."""
    mt = media_type(request)
    if mt == MULTIPART:
        return await multipart_file(request, await read_body(request, limit), limit)
    if mt == "" or mt in raw_ok or (raw_prefix is not None and mt.startswith(raw_prefix)):
        return await read_body(request, limit)
    raise UnsupportedMediaTypeError(
        f"Content-Type {mt!r} is not accepted here: send {what} as the raw body "
        f"({', '.join(raw_ok)}{', ' + raw_prefix + '*' if raw_prefix else ''}) or as multipart field 'file'"
    )


async def payload_by(
    deadline: float, request: Request, raw_ok: tuple[str, ...], raw_prefix: str | None, limit: int, what: str
) -> bytes:
    """:func:`payload`, refused (408) if the body has not arrived by ``deadline``: the
    request holds a queue place while it reads, and a slow client must not keep it."""
    reading = payload(request, raw_ok, raw_prefix, limit, what)
    try:
        return await asyncio.wait_for(reading, timeout=max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise RequestTimeoutError("the request body did not arrive within the request deadline") from None


def only_query(request: Request, known: frozenset[str]) -> None:
    """Refuse query parameters the endpoint does not take: a typo such as ``qualty=1``
    would otherwise be ignored and the image coded at the default quality."""
    unknown = sorted(set(request.query_params.keys()) - known)
    if unknown:
        expected = ", ".join(sorted(known)) or "none"
        raise BadParameterError(f"unknown query parameter(s) {', '.join(unknown)} (this endpoint takes: {expected})")
