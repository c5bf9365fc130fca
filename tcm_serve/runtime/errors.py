"""Failures the service adds to the :mod:`tcm_serve.errors` hierarchy (all :class:`TcmError`s).

The HTTP status of every error class, these and the codec's, is decided in one table:
:data:`tcm_serve.api.errors.STATUS`.
"""
from __future__ import annotations

from ..errors import TcmError


class ServiceError(TcmError):
    """Base class of the service's own request failures."""

    code = "service_error"


class BadRequestError(ServiceError):
    """The request itself is malformed (e.g. a multipart body without a ``file`` field)."""

    code = "bad_request"


class BadParameterError(ServiceError):
    """A query parameter is invalid or names something the service does not serve."""

    code = "bad_parameter"


class RequestTooLargeError(ServiceError):
    """The request body is larger than ``max_body_bytes``."""

    code = "too_large"


class UnsupportedMediaTypeError(ServiceError):
    """The request's Content-Type is not one the endpoint accepts."""

    code = "unsupported_media_type"


class UnauthorizedError(ServiceError):
    """The request carries no API key, or one the service does not accept (HTTP 401)."""

    code = "unauthorized"


class RetryableError(ServiceError):
    """The service cannot take the request now; ``retry_after`` seconds is a fair wait."""

    code = "unavailable"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class QueueFullError(RetryableError):
    """Every queue slot is taken: back off and retry (HTTP 429)."""

    code = "queue_full"


class NotReadyError(RetryableError):
    """Models are still loading / warming up, or failed to load (HTTP 503)."""

    code = "not_ready"


class ShuttingDownError(RetryableError):
    """The service is draining for shutdown and takes no new work (HTTP 503)."""

    code = "shutting_down"


class WorkerDiedError(RetryableError):
    """The device worker running this request died (it is being replaced): retry (HTTP 503)."""

    code = "worker_failed"


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


class DeadlineExceededError(ServiceError):
    """The request did not finish within ``request_timeout_s`` (HTTP 504)."""

    code = "deadline_exceeded"


class InternalError(ServiceError):
    """An unexpected failure inside the service: a bug (HTTP 500)."""

    code = "internal"
