"""Failures the service's runtime adds to the :mod:`tcm_serve.errors` hierarchy (all
:class:`TcmError`s): what the worker pool and the batcher raise, and the HTTP layer too.

Failures only the HTTP layer raises (a malformed request, a body too large or too slow, a
missing API key) live in :mod:`tcm_serve.api.exceptions`. The HTTP status of every error
class, these, those and the codec's, is decided in one table:
:data:`tcm_serve.api.errors.STATUS`.
"""

from __future__ import annotations

from ..errors import TcmError


class ServiceError(TcmError):
    """Base class of the service's own request failures."""

    code = "service_error"


class BadParameterError(ServiceError):
    """A query parameter is invalid or names something the service does not serve."""

    code = "bad_parameter"


class RetryableError(ServiceError):
    """The service cannot take the request now; ``retry_after`` seconds is a fair wait."""

    code = "unavailable"
    #: The wait a client is told when the raiser has no better estimate (each subclass says
    #: how long its condition usually lasts); the one home of these numbers.
    default_retry_after = 1

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(self.default_retry_after if retry_after is None else retry_after))


class QueueFullError(RetryableError):
    """Every queue slot is taken: back off and retry (HTTP 429)."""

    code = "queue_full"


class NotReadyError(RetryableError):
    """Models are still loading / warming up, or failed to load (HTTP 503)."""

    code = "not_ready"
    default_retry_after = 2  # a warm-up or a reload takes seconds


class ShuttingDownError(RetryableError):
    """The service is draining for shutdown and takes no new work (HTTP 503)."""

    code = "shutting_down"
    default_retry_after = 1  # another replica (or the restarted one) takes the retry


class WorkerDiedError(RetryableError):
    """The device worker running this request died (it is being replaced): retry (HTTP 503)."""

    code = "worker_failed"
    default_retry_after = 2  # a replacement worker loads its models first


class DeadlineExceededError(ServiceError):
    """The request did not finish within ``request_timeout_s`` (HTTP 504)."""

    code = "deadline_exceeded"


class InternalError(ServiceError):
    """An unexpected failure inside the service: a bug (HTTP 500)."""

    code = "internal"
