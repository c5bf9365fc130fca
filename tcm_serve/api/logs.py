"""Structured logs: one JSON object per line, and one line per HTTP request.

The access line (logger ``tcm.access``) carries the request id (the client's
``X-Request-ID`` when it is sane, else a new one; echoed in the response), method, route,
status, body bytes in and out, total time and the time of each stage in milliseconds,
plus quality, batch size and the error code where there is one.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .metrics import Metrics

access_log = logging.getLogger("tcm.access")

#: Routes with their own metric label; any other path counts as "other" (bounded cardinality).
ROUTES = frozenset(
    {
        "/compress",
        "/decompress",
        "/compare",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
        "/docs",
        "/openapi.json",
        "/",
    }
)
CODEC_ROUTES = frozenset({"/compress", "/decompress", "/compare"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


def configure_logging(level: str = "info", stream=None) -> None:
    """JSON lines on stderr for every logger (uvicorn's included)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # replaced by tcm.access


@dataclass
class RequestContext:
    id: str
    start: float  # time.monotonic()
    quality: int | None = None
    error: str | None = None
    batch_size: int | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


class RequestContextMiddleware:
    """Pure ASGI middleware: request id, in-flight gauge, request metrics and the access log."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for k, v in scope.get("headers", ()):
            if k == b"x-request-id":
                text = v.decode("latin-1")
                rid = text if _REQUEST_ID.match(text) else None
                break
        ctx = RequestContext(id=rid or uuid.uuid4().hex[:16], start=time.monotonic())
        scope.setdefault("state", {})["ctx"] = ctx
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        counts = {"in": 0, "out": 0}
        status = {"code": 500}

        async def receive_counting():
            message = await receive()
            if message["type"] == "http.request":
                counts["in"] += len(message.get("body", b""))
            return message

        async def send_tagged(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", ctx.id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                counts["out"] += len(message.get("body", b""))
            await send(message)

        in_flight = self.metrics.in_flight.labels(route) if route in CODEC_ROUTES else None
        if in_flight is not None:
            in_flight.inc()
        try:
            await self.app(scope, receive_counting, send_tagged)
        finally:
            if in_flight is not None:
                in_flight.dec()
            elapsed = time.monotonic() - ctx.start
            code = status["code"]
            q = "" if ctx.quality is None else str(ctx.quality)
            m = self.metrics
            m.requests.labels(route, q, str(code)).inc()
            m.duration.labels(route).observe(elapsed)
            if route in CODEC_ROUTES:
                m.body_bytes.labels(route, "in").inc(counts["in"])
                m.body_bytes.labels(route, "out").inc(counts["out"])
            # Probes and scrapes that succeed log at DEBUG (every few seconds from every
            # load balancer); everything else at INFO.
            quiet = route in ("/healthz", "/readyz", "/metrics") and code < 400
            if access_log.isEnabledFor(logging.DEBUG if quiet else logging.INFO):
                fields = {
                    "id": ctx.id,
                    "method": scope.get("method"),
                    "route": route,
                    "path": path if route == "other" else None,
                    "status": code,
                    "bytes_in": counts["in"],
                    "bytes_out": counts["out"],
                    "duration_ms": round(elapsed * 1000, 2),
                    "timings_ms": {k: round(v * 1000, 2) for k, v in ctx.timings.items()},
                    "quality": ctx.quality,
                    "batch_size": ctx.batch_size,
                    "error": ctx.error,
                }
                access_log.log(
                    logging.DEBUG if quiet else logging.INFO,
                    "request",
                    extra={"fields": {k: v for k, v in fields.items() if v is not None}},
                )
