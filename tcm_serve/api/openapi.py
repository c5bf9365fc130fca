"""What the published OpenAPI schema (``/openapi.json``, ``/docs``) says beyond what FastAPI
infers from the handlers: request bodies (raw or multipart), response bodies and headers,
every error answer with its ``{"error", "detail"}`` body, and the quality levels served.

The routes (:mod:`tcm_serve.api.routes`) pass these dictionaries to their decorators;
schemathesis (tests/test_fuzz.py) checks the service against the result, so what is
documented here is what the service answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from . import headers as tcm_headers
from .body import IMAGE_TYPES, RAW_BLOB_OK, RAW_IMAGE_OK, TCM_MEDIA_TYPE
from .compare import COMPARE_SCHEMA

Doc = dict[str, Any]

ERROR_SCHEMA: Doc = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    "required": ["error", "detail"],
}

RETRY_AFTER: Doc = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_HEADER_INT: Doc = {"type": "string", "pattern": "^[0-9]+$"}
_BINARY: Doc = {"type": "string", "format": "binary"}

MODELS_SCHEMA: Doc = {
    "type": "object",
    "required": ["default_quality", "max_effort", "qualities", "devices", "max_batch_size", "ready", "models"],
    "properties": {
        "default_quality": {"type": "integer"},
        "max_effort": {
            "type": "integer",
            "description": "the highest encoder effort this service takes (TCM_MAX_EFFORT)",
        },
        "qualities": {"type": "array", "items": {"type": "integer"}},
        "devices": {"type": "array", "items": {"type": "string"}},
        "max_batch_size": {"type": "integer"},
        "ready": {"type": "boolean"},
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "quality",
                    "default",
                    "config",
                    "config_hash",
                    "weights_sha256",
                    "weights_hash",
                    "devices",
                    "loaded",
                ],
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
                    "devices": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["device", "state", "loaded"],
                            "properties": {
                                "device": {"type": "string"},
                                "state": {
                                    "type": "string",
                                    "enum": ["pending", "loading", "warming", "ready", "failed"],
                                },
                                "loaded": {"type": "boolean"},
                                "load_seconds": {"type": ["number", "null"]},
                                "warmup_seconds": {"type": ["number", "null"]},
                                "error": {"type": ["string", "null"]},
                            },
                        },
                    },
                    "loaded": {"type": "boolean"},
                },
            },
        },
    },
}

_ERROR_TEXT = {
    400: "malformed image or blob, or a malformed request",
    408: "the request body did not arrive within the request deadline (slow upload)",
    413: "body, image or decoded size over the limit",
    415: "unsupported media type or image format",
    422: "bad parameter, or a quality / model this service does not serve",
    429: "queue full: retry after Retry-After seconds",
    503: "not ready (loading) or shutting down: retry after Retry-After seconds",
    504: "the request did not finish within the deadline",
}
#: Every error a codec route can answer.
CODEC_ERRORS = (400, 408, 413, 415, 422, 429, 503, 504)


def json_doc(description: str, schema: Doc) -> Doc:
    """A response with a JSON body of ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors_doc(*codes: int) -> dict[int | str, Doc]:
    """The error responses ``codes``, each with the error body (and Retry-After on 429 / 503)."""
    doc: dict[int | str, Doc] = {c: json_doc(_ERROR_TEXT[c], ERROR_SCHEMA) for c in codes}
    for c in (429, 503):
        if c in doc:
            doc[c]["headers"] = RETRY_AFTER
    return doc


def body_doc(raw_types: tuple[str, ...], what: str) -> Doc:
    """The request body FastAPI cannot infer (the handlers read it themselves): the raw
    body in any of ``raw_types``, or multipart with a ``file`` field."""
    content: Doc = {t: {"schema": _BINARY} for t in raw_types}
    content["multipart/form-data"] = {
        "schema": {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]}
    }
    return {"requestBody": {"required": True, "description": what, "content": content}}


def _binary_doc(media_type: str, description: str, headers: Doc) -> Doc:
    """A binary response of ``media_type`` with required ``headers``."""
    return {
        "content": {media_type: {"schema": _BINARY}},
        "description": description,
        "headers": {name: {"required": True, "schema": schema} for name, schema in headers.items()},
    }


IMAGE_BODY = body_doc(IMAGE_TYPES + RAW_IMAGE_OK, "PNG, JPEG, WebP, BMP or TIFF image")
BLOB_BODY = body_doc(RAW_BLOB_OK, ".tcm blob")

COMPRESS_RESPONSES: dict[int | str, Doc] = {
    200: _binary_doc(
        TCM_MEDIA_TYPE,
        f"the .tcm blob; headers {', '.join(tcm_headers.COMPRESS_HEADERS)} (format version 2: portable, 1: exact)",
        {
            tcm_headers.QUALITY: _HEADER_INT,
            tcm_headers.BPP: {"type": "string", "pattern": r"^[0-9]+\.[0-9]+$"},
            tcm_headers.WIDTH: _HEADER_INT,
            tcm_headers.HEIGHT: _HEADER_INT,
            tcm_headers.FORMAT_VERSION: {"type": "string", "enum": ["1", "2"]},
            tcm_headers.EFFORT: _HEADER_INT,
        },
    ),
    **errors_doc(*CODEC_ERRORS),
}

COMPARE_RESPONSES: dict[int | str, Doc] = {
    200: json_doc(
        "the .tcm result and each classic codec's file closest to its size: bytes, bpp, ratio, PSNR, "
        "MS-SSIM, and every decoded image as PNG (base64)",
        COMPARE_SCHEMA,
    ),
    **errors_doc(*CODEC_ERRORS),
}

DECOMPRESS_RESPONSES: dict[int | str, Doc] = {
    200: _binary_doc(
        "image/png",
        f"the PNG; headers {', '.join(tcm_headers.DECOMPRESS_HEADERS)}",
        {name: _HEADER_INT for name in tcm_headers.DECOMPRESS_HEADERS},
    ),
    **errors_doc(*CODEC_ERRORS),
}

MODELS_RESPONSES: dict[int | str, Doc] = {
    200: json_doc("served quality levels, their identity and per-device state", MODELS_SCHEMA),
}

HEALTHZ_RESPONSES: dict[int | str, Doc] = {
    200: json_doc("alive", {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}),
    503: json_doc("a worker failed to load its models, or keeps dying", ERROR_SCHEMA),
}

READYZ_RESPONSES: dict[int | str, Doc] = {
    200: json_doc(
        "ready",
        {
            "type": "object",
            "required": ["status", "models_loaded"],
            "properties": {"status": {"const": "ready"}, "models_loaded": {"type": "integer"}},
        },
    ),
    503: {
        **json_doc("not ready: loading, failed, replacing a worker, or shutting down", ERROR_SCHEMA),
        "headers": RETRY_AFTER,
    },
}

METRICS_RESPONSES: dict[int | str, Doc] = {
    200: {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
}

#: The routes whose ``quality`` and ``effort`` parameters are narrowed to what is served.
_QUALITY_ROUTES = ("/compress", "/compare")


def _route_params(schema: Doc, name: str) -> list[Doc]:
    return [
        p
        for route in _QUALITY_ROUTES
        for p in schema["paths"][route]["post"].get("parameters", [])
        if p.get("name") == name
    ]


def served_values_in_schema(schema: Doc, qualities: list[int], max_effort: int) -> Doc:
    """Narrow ``quality`` from 1..255 to the levels this service serves and ``effort`` from
    the codec's levels to this service's limit (``TCM_MAX_EFFORT``), so that the published
    schema says which values succeed (any other is a 422)."""
    for param in _route_params(schema, "quality"):
        param["schema"] = {
            "anyOf": [{"type": "integer", "enum": list(qualities)}, {"type": "null"}],
            "description": param["schema"].get("description", ""),
            "title": "Quality",
        }
    for param in _route_params(schema, "effort"):
        param["schema"] = {**param["schema"], "maximum": max_effort}
    return schema


def publish_served_values(app: FastAPI, qualities: Callable[[], list[int]], max_effort: int) -> None:
    """Make ``app.openapi()`` (built once, on first use) say which quality levels are served
    and how much effort is taken: the levels are known only once the pool has read the
    model store."""
    generate = app.openapi

    def openapi() -> Doc:
        if app.openapi_schema is None:
            app.openapi_schema = served_values_in_schema(generate(), qualities(), max_effort)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
