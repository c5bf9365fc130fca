"""The one place where failures become HTTP responses: ``{"error": code, "detail": message}``.

:data:`STATUS` maps every error class to its status; a class not listed takes the status of
its nearest listed base class (so a new ``ImageError`` subclass is a 400, never a 500).
Anything that is not a :class:`~tcm_serve.errors.TcmError` is a bug: 500 ``internal``, logged
with its traceback, and its message is not shown to the client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    CheckpointError,
    ConfigError,
    FormatError,
    ImageError,
    ImageTooLargeError,
    ModelNotFoundError,
    StoreError,
    TcmError,
    UnsupportedImageFormatError,
)
from ..runtime.errors import (
    BadParameterError,
    DeadlineExceededError,
    InternalError,
    NotReadyError,
    QueueFullError,
    RetryableError,
    ServiceError,
    ShuttingDownError,
)
from .exceptions import (
    BadRequestError,
    ClientClosedError,
    RequestTimeoutError,
    RequestTooLargeError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)

log = logging.getLogger("tcm.api")

STATUS: dict[type[BaseException], int] = {
    # the request's content
    FormatError: 400,  # malformed .tcm blob, corrupt bitstream, drift, unknown version
    ImageError: 400,  # undecodable / truncated image, alpha without drop_alpha, ...
    BadRequestError: 400,
    ImageTooLargeError: 413,  # too many pixels (or bytes) in an image or a blob
    RequestTooLargeError: 413,
    UnsupportedImageFormatError: 415,  # GIF, PDF, HEIF, ...
    UnsupportedMediaTypeError: 415,  # Content-Type the endpoint does not take
    RequestTimeoutError: 408,  # the body did not arrive in time (slow upload)
    ClientClosedError: 499,  # the client disconnected mid-upload (nobody reads the answer)
    UnauthorizedError: 401,  # no API key, or not a valid one (tcm_serve/api/auth.py)
    BadParameterError: 422,
    ModelNotFoundError: 422,  # quality not served / blob from a model this service lacks
    # the service's state
    QueueFullError: 429,
    NotReadyError: 503,
    ShuttingDownError: 503,
    RetryableError: 503,
    DeadlineExceededError: 504,
    # the service itself (never the client's fault)
    ConfigError: 500,
    StoreError: 500,
    CheckpointError: 500,
    InternalError: 500,
    ServiceError: 500,
    TcmError: 500,
}

HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def status_for(exc: BaseException) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def response_for(exc: BaseException, request: Request | None = None) -> JSONResponse:
    """The JSON response for any exception (TcmError or a bug)."""
    ctx = getattr(getattr(request, "state", None), "ctx", None) if request is not None else None
    if isinstance(exc, TcmError):
        status = status_for(exc)
        if ctx is not None:
            ctx.error = exc.code
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RetryableError) else None
        if status >= 500 and status not in (503, 504):
            log.error("server error: %s", exc, exc_info=exc)
        return error_response(status, exc.code, str(exc), headers)
    log.error("unhandled exception (a bug)", exc_info=exc)
    if ctx is not None:
        ctx.error = "internal"
    return error_response(500, "internal", f"internal error ({type(exc).__name__}); see the server log")


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ()) if p not in ("query", "body", "path", "header")]
        parts.append(f"{'.'.join(loc) or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request parameters"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TcmError)
    async def _tcm_error(request: Request, exc: TcmError):
        return response_for(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        ctx = getattr(request.state, "ctx", None)
        if ctx is not None:
            ctx.error = BadParameterError.code
        return error_response(422, BadParameterError.code, _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = HTTP_CODES.get(exc.status_code, "http_error")
        ctx = getattr(request.state, "ctx", None)
        if ctx is not None:
            ctx.error = code
        return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        return response_for(exc, request)
