"""Failures only the HTTP layer raises: the request itself, not the work it asks for.

They live here, beside the routes that raise them, rather than in
:mod:`tcm_serve.runtime.errors` (whose classes the worker pool and the batcher raise). This
module imports neither FastAPI nor torch: the Python client (:mod:`tcm_serve.client`) maps
error codes to these classes and needs httpx only. Their HTTP status is decided in one
table, :data:`tcm_serve.api.errors.STATUS`.
"""

from __future__ import annotations

from ..runtime.errors import ServiceError

__all__ = [
    "BadRequestError",
    "ClientClosedError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
]


class BadRequestError(ServiceError):
    """The request itself is malformed (e.g. a multipart body without a ``file`` field)."""

    code = "bad_request"


class RequestTooLargeError(ServiceError):
    """The request body is larger than ``max_body_bytes``."""

    code = "too_large"


class UnsupportedMediaTypeError(ServiceError):
    """The request's Content-Type is not one the endpoint accepts."""

    code = "unsupported_media_type"


class UnauthorizedError(ServiceError):
    """The request carries no API key, or one the service does not accept (HTTP 401)."""

    code = "unauthorized"


class ClientClosedError(ServiceError):
    """The client went away before its request body had arrived (recorded as 499, nginx's
    "client closed request"): not the service's failure, so neither a 5xx nor a logged bug.
    Nobody receives the response."""

    code = "client_closed"


class RequestTimeoutError(ServiceError):
    """The client did not finish sending its body within ``request_timeout_s`` (HTTP 408).

    The request holds a queue place while its body arrives, so a slow upload must not
    keep it for ever: past the deadline the place is given back and the request refused."""

    code = "request_timeout"
