"""Optional API keys: ``Authorization: Bearer <key>`` on every route that does codec work.

Off unless ``api_keys_file`` is set (``make serve`` on loopback needs none); the shipped
deployments set it (a Kubernetes Secret or a compose secret). The file holds one key per
line (blank lines and ``#`` comments ignored); several keys at once let a key be rotated
without downtime: add the new one, move clients over, remove the old one. The file is read
again when it changes (a mounted Secret is updated in place), at most once a second.

Keys are compared in constant time, and against every key, so neither the timing of one
comparison nor which key matched leaks. Paths in ``open_paths`` (by default the probes and
``/metrics``) and the page's and documentation's assets need no key.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ConfigError
from .errors import response_for
from .exceptions import UnauthorizedError

log = logging.getLogger("tcm.api")

#: Needed by a browser before it has a key: the page, its assets, the API documentation.
ALWAYS_OPEN = ("/", "/docs", "/openapi.json")
ALWAYS_OPEN_PREFIXES = ("/static/",)
#: Shortest key accepted: a guessable key is no key.
MIN_KEY_LENGTH = 16
_RECHECK_S = 1.0


def _read_keys(path: Path) -> tuple[bytes, ...]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the API keys file {path}: {exc.strerror or exc}") from None
    keys = tuple(
        line.strip().encode() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")
    )
    if not keys:
        raise ConfigError(f"the API keys file {path} holds no key (one per line)")
    short = [k for k in keys if len(k) < MIN_KEY_LENGTH]
    if short:
        raise ConfigError(f"the API keys file {path} holds a key shorter than {MIN_KEY_LENGTH} characters")
    return keys


class ApiKeys:
    """The keys of one file, read again when the file changes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._keys = _read_keys(self.path)
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime, st.st_size

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < _RECHECK_S:
            return
        with self._lock:
            self._checked = now
            stamp = self._file_stamp()
            if stamp is None or stamp == self._stamp:
                return
            try:
                self._keys = _read_keys(self.path)
                self._stamp = stamp
                log.info(f"API keys reloaded from {self.path} ({len(self._keys)} key(s))")
            except ConfigError as exc:  # a half-written file: keep serving with the old keys
                log.error(f"API keys not reloaded, the old ones stay in use: {exc}")

    def accepts(self, presented: str) -> bool:
        """True if ``presented`` is one of the keys (compared with every key, in constant time)."""
        self._refresh()
        candidate = presented.encode()
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(key, candidate)
        return ok


class ApiKeyMiddleware:
    """ASGI middleware: refuse requests without a valid key (401, the JSON error body)."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, open_paths: Iterable[str]) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = frozenset(open_paths) | frozenset(ALWAYS_OPEN)

    def _open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(ALWAYS_OPEN_PREFIXES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._open(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        scheme, _, presented = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            problem = "this service needs an API key: send the header Authorization: Bearer <key>"
        elif not self.keys.accepts(presented.strip()):
            problem = "the API key is not valid (it may have been rotated out)"
        else:
            await self.app(scope, receive, send)
            return
        response = response_for(UnauthorizedError(problem))
        response.headers["WWW-Authenticate"] = 'Bearer realm="tcm-serve"'
        ctx = scope.get("state", {}).get("ctx")
        if ctx is not None:
            ctx.error = UnauthorizedError.code
        await response(scope, receive, send)
