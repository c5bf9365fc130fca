"""Python client for the tcm-serve HTTP API (httpx; sync :class:`TcmClient`, async
:class:`AsyncTcmClient`).

::

    with TcmClient("http://127.0.0.1:8000") as c:
        blob = c.compress("photo.png", quality=3)     # bytes or a path -> .tcm bytes
        png = c.decompress(blob)                      # -> PNG bytes
        c.models(); c.health(); c.ready()

Every error answer of the service is raised as the :class:`~tcm_serve.errors.TcmError`
subclass named by its ``error`` code (``ImageError`` for ``bad_image``, ``QueueFullError``
for ``queue_full``, ...), with the server's ``detail`` as the message and ``status`` (the
HTTP status) and ``retry_after`` (seconds, for 429/503) as attributes. Transport failures
(connection refused, timeouts) raise :class:`ConnectionFailedError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from . import errors as core_errors
from .api import exceptions as http_errors  # noqa: F401  (defines the HTTP-level codes _error_classes maps)
from .api import headers as tcm_headers
from .errors import TcmError
from .runtime import errors as service_errors

ImageInput = bytes | bytearray | memoryview | str | os.PathLike


class ConnectionFailedError(service_errors.ServiceError):
    """The service could not be reached or did not answer in time."""

    code = "connection_failed"


class RemoteError(service_errors.ServiceError):
    """An error answer whose code this client does not know."""

    code = "remote_error"


def _error_classes() -> dict[str, type[TcmError]]:
    """code -> class over the whole hierarchy; for a code two classes share, the more
    specific meaning wins: ``too_large`` -> ImageTooLargeError, ``unsupported_media_type``
    -> UnsupportedImageFormatError (both are also subclasses callers catch as ImageError)."""
    out: dict[str, type[TcmError]] = {}
    todo = [TcmError]
    while todo:
        cls = todo.pop()
        out.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    out["too_large"] = core_errors.ImageTooLargeError
    out["unsupported_media_type"] = core_errors.UnsupportedImageFormatError
    return out


def error_from_response(response: httpx.Response) -> TcmError:
    """The TcmError an error response stands for."""
    code, detail = None, None
    try:
        body = response.json()
        if isinstance(body, dict):
            code, detail = body.get("error"), body.get("detail")
    except ValueError:
        pass
    if not isinstance(code, str):
        code = "internal" if response.status_code >= 500 else "remote_error"
    if not isinstance(detail, str) or not detail:
        detail = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    cls = _error_classes().get(code, RemoteError)
    try:
        exc = cls(detail) if not issubclass(cls, service_errors.RetryableError) else cls(detail, 1)
    except TypeError:  # a subclass with another constructor signature
        exc = RemoteError(detail)
    exc.status = response.status_code  # type: ignore[attr-defined]
    if cls is RemoteError:
        exc.code = code
    retry = response.headers.get("retry-after")
    exc.retry_after = int(retry) if retry and retry.isdigit() else None  # type: ignore[attr-defined]
    return exc


@dataclass
class CompressResult:
    blob: bytes
    quality: int
    bpp: float
    width: int
    height: int


def _input_bytes(data: ImageInput, what: str = "image") -> bytes:
    """Bytes as given, or a path's contents: both methods take either."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(f"expected bytes or a file path for the {what}, got {type(data).__name__}")
    try:
        return Path(data).read_bytes()
    except OSError as exc:
        error = core_errors.ImageError if what == "image" else core_errors.FormatError
        raise error(f"cannot read {what} file {data}: {exc.strerror or exc}") from None


def _compress_request(
    image: ImageInput, quality: int | None, drop_alpha: bool, bitstream: str | None, effort: int = 0
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if effort:
        params["effort"] = effort
    if quality is not None:
        params["quality"] = quality
    if drop_alpha:
        params["drop_alpha"] = "true"
    if bitstream is not None:
        params["bitstream"] = bitstream
    return {
        "content": _input_bytes(image),
        "params": params,
        "headers": {"content-type": "application/octet-stream"},
    }


_TCM_MAGIC = b"\x89TCM"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _not_tcm_serve(r: httpx.Response, why: str) -> RemoteError:
    """A 2xx/3xx answer that is not what tcm-serve sends (a wrong --url, a proxy's page):
    refused, so that nobody saves an HTML page as their decompressed image."""
    exc = RemoteError(f"{r.request.method} {r.request.url}: the server did not answer like tcm-serve ({why})")
    exc.status = r.status_code  # type: ignore[attr-defined]
    exc.retry_after = None  # type: ignore[attr-defined]
    return exc


def _compress_result(r: httpx.Response) -> CompressResult:
    if not r.content.startswith(_TCM_MAGIC):
        raise _not_tcm_serve(r, f"the body is not a .tcm blob; content-type {r.headers.get('content-type', 'none')!r}")
    try:
        return CompressResult(
            blob=r.content,
            quality=int(r.headers[tcm_headers.QUALITY]),  # httpx's headers ignore case
            bpp=float(r.headers[tcm_headers.BPP]),
            width=int(r.headers[tcm_headers.WIDTH]),
            height=int(r.headers[tcm_headers.HEIGHT]),
        )
    except KeyError as exc:
        raise _not_tcm_serve(r, f"header {exc.args[0]!r} is missing") from None
    except ValueError as exc:
        raise _not_tcm_serve(r, f"bad X-TCM header: {exc}") from None


def _png(r: httpx.Response) -> bytes:
    if not r.content.startswith(_PNG_MAGIC):
        raise _not_tcm_serve(r, f"the body is not a PNG; content-type {r.headers.get('content-type', 'none')!r}")
    return r.content


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _not_tcm_serve(r, "the body is not a JSON object")
    return body


def _check(r: httpx.Response) -> httpx.Response:
    if r.status_code >= 400:
        raise error_from_response(r)
    if not 200 <= r.status_code < 300:  # redirects are not followed: a wrong scheme or path is an error
        where = r.headers.get("location")
        raise _not_tcm_serve(r, f"HTTP {r.status_code} {r.reason_phrase}" + (f", redirect to {where}" if where else ""))
    return r


def _auth(api_key: str | None) -> dict[str, str]:
    """The Authorization header for ``api_key``, else ``$TCM_API_KEY``, else none."""
    key = api_key if api_key is not None else os.environ.get("TCM_API_KEY", "")
    return {"Authorization": f"Bearer {key.strip()}"} if key and key.strip() else {}


def _http_client(cls: type, base_url: str, **kw: Any) -> Any:
    """An httpx client; a malformed URL is a one-line error, not httpx's InvalidURL."""
    try:
        return cls(base_url=base_url.rstrip("/"), **kw)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise core_errors.ConfigError(f"invalid service URL {base_url!r}: {exc}") from None


class TcmClient:
    """Synchronous client. ``transport`` lets tests plug in e.g. ``httpx.MockTransport``."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
    ) -> None:
        """``api_key``: sent as ``Authorization: Bearer <key>`` (services with keys; default
        ``$TCM_API_KEY``)."""
        self._http = _http_client(httpx.Client, base_url, timeout=timeout, transport=transport, headers=_auth(api_key))

    def __enter__(self) -> TcmClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, url: str, **kw) -> httpx.Response:
        try:
            return _check(self._http.request(method, url, **kw))
        except httpx.TimeoutException as exc:
            raise ConnectionFailedError(f"{method} {url}: timed out ({exc})") from None
        except httpx.TransportError as exc:
            raise ConnectionFailedError(f"{method} {url}: {exc or type(exc).__name__}") from None

    def compress_full(
        self,
        image: ImageInput,
        quality: int | None = None,
        drop_alpha: bool = False,
        bitstream: str | None = None,
        effort: int = 0,
    ) -> CompressResult:
        """``bitstream``: ``portable`` or ``exact`` (default: the service's); ``effort``: encoder
        effort, up to the service's ``TCM_MAX_EFFORT`` (docs/service.md)."""
        return _compress_result(
            self._send("POST", "/compress", **_compress_request(image, quality, drop_alpha, bitstream, effort))
        )

    def compress(
        self,
        image: ImageInput,
        quality: int | None = None,
        drop_alpha: bool = False,
        bitstream: str | None = None,
        effort: int = 0,
    ) -> bytes:
        """Image bytes or path -> .tcm blob."""
        return self.compress_full(image, quality, drop_alpha, bitstream, effort).blob

    def decompress(self, blob: ImageInput) -> bytes:
        """.tcm blob (bytes or path) -> PNG bytes."""
        content = _input_bytes(blob, ".tcm")
        return _png(self._send("POST", "/decompress", content=content, headers={"content-type": "application/x-tcm"}))

    def models(self) -> dict[str, Any]:
        return _json(self._send("GET", "/v1/models"))

    def health(self) -> dict[str, Any]:
        return _json(self._send("GET", "/healthz"))

    def ready(self) -> dict[str, Any]:
        return _json(self._send("GET", "/readyz"))


class AsyncTcmClient:
    """Asynchronous client with the same methods as :class:`TcmClient` (awaitable)."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key: str | None = None,
    ) -> None:
        self._http = _http_client(
            httpx.AsyncClient, base_url, timeout=timeout, transport=transport, headers=_auth(api_key)
        )

    async def __aenter__(self) -> AsyncTcmClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, url: str, **kw) -> httpx.Response:
        try:
            return _check(await self._http.request(method, url, **kw))
        except httpx.TimeoutException as exc:
            raise ConnectionFailedError(f"{method} {url}: timed out ({exc})") from None
        except httpx.TransportError as exc:
            raise ConnectionFailedError(f"{method} {url}: {exc or type(exc).__name__}") from None

    async def compress_full(
        self,
        image: ImageInput,
        quality: int | None = None,
        drop_alpha: bool = False,
        bitstream: str | None = None,
        effort: int = 0,
    ) -> CompressResult:
        request = _compress_request(image, quality, drop_alpha, bitstream, effort)
        return _compress_result(await self._send("POST", "/compress", **request))

    async def compress(
        self,
        image: ImageInput,
        quality: int | None = None,
        drop_alpha: bool = False,
        bitstream: str | None = None,
        effort: int = 0,
    ) -> bytes:
        return (await self.compress_full(image, quality, drop_alpha, bitstream, effort)).blob

    async def decompress(self, blob: ImageInput) -> bytes:
        content = _input_bytes(blob, ".tcm")
        r = await self._send("POST", "/decompress", content=content, headers={"content-type": "application/x-tcm"})
        return _png(r)

    async def models(self) -> dict[str, Any]:
        return _json(await self._send("GET", "/v1/models"))

    async def health(self) -> dict[str, Any]:
        return _json(await self._send("GET", "/healthz"))

    async def ready(self) -> dict[str, Any]:
        return _json(await self._send("GET", "/readyz"))
