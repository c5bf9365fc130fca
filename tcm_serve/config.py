"""Service configuration: ``TCM_*`` environment variables, ``tcm serve`` flags, or code.

Every field can be set as an environment variable with the ``TCM_`` prefix (``TCM_PORT=9000``,
``TCM_QUALITIES=2,3``, ``TCM_DEVICES=cuda:0,cuda:1``) or passed to :class:`Settings` directly;
``tcm serve`` flags override both. Invalid values are refused at start-up with one line
(:class:`~tcm_serve.errors.ConfigError`), never at the first request.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .codec.container import (
    BACKEND_KINDS,
    BITSTREAMS,
    DEFAULT_BACKEND,
    DEFAULT_BITSTREAM,
    MAX_QUALITY,
    MIN_QUALITY,
    quality_problem,
)
from .codec.effort import DEFAULT_MAX_EFFORT, MAX_EFFORT
from .codec.geometry import DEFAULT_TILE, tile_problem
from .devices import parse_devices
from .errors import ConfigError
from .imageio import DEFAULT_MAX_PIXELS

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _split_list(v: Any) -> Any:
    """``"2,3"`` / ``"2 3"`` / ``"[2, 3]"`` -> ``["2", "3"]`` (pydantic converts the items)."""
    if isinstance(v, str):
        text = v.strip().strip("[]")
        return [p for p in text.replace(",", " ").split() if p]
    return v


def _one_of(value: str, allowed: tuple[str, ...], what: str) -> str:
    """``value`` trimmed and lower-cased if it is one of ``allowed``, else ValueError."""
    value = value.strip().lower()
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}")
    return value


class CodecSettings(BaseSettings):
    """What the CLI and the service share: where the models are and how they run.

    The ``tcm`` commands read these (``TCM_MODEL_STORE``, ``TCM_BACKEND``, ``TCM_BITSTREAM``,
    ``TCM_ONNX_DIR``) through :func:`load_codec_settings`, so that a bad value is refused
    with the same words everywhere and a variable means the same to ``tcm compress`` and
    ``tcm serve``; :class:`Settings` adds the service's own knobs.
    """

    model_config = SettingsConfigDict(env_prefix="TCM_", extra="ignore", validate_default=True)

    model_store: str | None = Field(None, description="model store directory (default: the bundled model_store/)")
    backend: str = Field(
        DEFAULT_BACKEND,
        description="torch (exact reference arithmetic) or onnx (ONNX Runtime, faster; docs/performance.md)",
    )
    bitstream: str = Field(
        DEFAULT_BITSTREAM,
        description="blobs /compress makes when a request names none: portable (decode on any machine; format "
        "version 2) or exact (the reference codec's strings, decodable only where made; version 1)",
    )
    onnx_dir: str | None = Field(
        None, description="where the onnx backend keeps its exported graphs (default: the model store directory)"
    )
    tile: int = Field(
        DEFAULT_TILE,
        description="core size in pixels of the tiled transforms, so that memory grows far slower with the "
        "image (a multiple of 128, at least 256; 0 codes every image whole; docs/codec.md, Tiling)",
    )

    @field_validator("tile")
    @classmethod
    def _check_tile(cls, v: int) -> int:
        problem = tile_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, v: str) -> str:
        return _one_of(v, BACKEND_KINDS, "backend")

    @field_validator("bitstream")
    @classmethod
    def _check_bitstream(cls, v: str) -> str:
        return _one_of(v, BITSTREAMS, "bitstream")


class Settings(CodecSettings):
    """All knobs of the service. See ``docs/service.md`` for what each one trades off."""

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 behind a load balancer)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: pick a free one)")
    qualities: Annotated[list[int] | None, NoDecode] = Field(
        None, description="quality levels to serve, e.g. 2,3 (default: every level in the store)"
    )
    default_quality: int | None = Field(
        None,
        ge=MIN_QUALITY,
        le=MAX_QUALITY,
        description="quality used when a request names none (default: the highest served)",
    )
    devices: str = Field(
        "auto",
        description="auto (every CUDA device, else the CPU), cpu, cuda (every CUDA device), or a list cuda:0,cuda:1",
    )
    max_batch_size: int | None = Field(
        None,
        ge=1,
        le=256,
        description="largest batch of same-size images (default: 1 on CPU, where batching is slower, 8 on CUDA)",
    )
    max_batch_delay_ms: float = Field(5.0, ge=0, le=10_000, description="how long a batch may wait to fill up")
    max_queue: int = Field(64, ge=1, description="requests waiting for a device; more are refused with 429")
    coder_threads: int = Field(2, ge=1, le=256, description="CPU threads for range coding")
    max_body_bytes: int = Field(50 * 1024 * 1024, ge=1, description="largest request body accepted (413 above)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="largest image (width x height) accepted (413 above)")
    max_effort: int = Field(
        DEFAULT_MAX_EFFORT,
        ge=0,
        le=MAX_EFFORT,
        description="highest encoder effort /compress and /compare accept (422 above): level N runs 8 x 2^(N-1) "
        "search steps, about 10 s per Kodak image at effort 1 with the bundled models on 2 cores (docs/codec.md, Encoder effort)",
    )
    compare_max_pixels: int = Field(
        4_000_000,
        ge=1,
        description="largest image /compare takes (413 above; also capped by max_pixels): it also searches JPEG, WebP "
        "and AVIF at the same size and scores every result, several times the work and memory of /compress",
    )
    api_keys_file: str | None = Field(
        None,
        description="a file of API keys, one per line: when set, requests need Authorization: Bearer <key> "
        "(except open_paths and the page's assets); read again when it changes (rotation). Unset: no keys",
    )
    open_paths: Annotated[list[str], NoDecode] = Field(
        ["/healthz", "/readyz", "/metrics"], description="paths that need no API key, e.g. /healthz,/readyz"
    )
    compare_concurrency: int = Field(
        1, ge=1, le=64, description="comparisons (/compare) running at once; more are refused with 429"
    )
    # Upper bounds: a timeout past threading.TIMEOUT_MAX (~292 years) passes "finite" and then
    # raises OverflowError in Thread.join at shutdown; a day / an hour is already absurd here.
    request_timeout_s: float = Field(60.0, gt=0, le=86_400, description="per-request deadline; 504 past it")
    shutdown_grace_s: float = Field(
        30.0, ge=0, le=3_600, description="on SIGTERM, how long in-flight requests may take to finish"
    )
    log_level: str = Field("info", description="critical, error, warning, info or debug")

    @field_validator("qualities", mode="before")
    @classmethod
    def _parse_qualities(cls, v: Any) -> Any:
        v = _split_list(v)
        return None if v == [] else v

    @field_validator("open_paths", mode="before")
    @classmethod
    def _parse_open_paths(cls, v: Any) -> Any:
        paths = _split_list(v)
        if any(not isinstance(p, str) or not p.startswith("/") for p in paths):
            raise ValueError(f"open_paths must be absolute paths such as /healthz, got {v!r}")
        return paths

    @field_validator("qualities")
    @classmethod
    def _check_qualities(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return None
        for q in v:
            problem = quality_problem(q)
            if problem:
                raise ValueError(problem)
        return sorted(set(v))

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, v: str) -> str:
        # pydantic reports ValueErrors as validation errors; a ConfigError would escape them.
        try:
            return ",".join(parse_devices(v))
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, v: str) -> str:
        return _one_of(v, LOG_LEVELS, "log level")

    @field_validator("max_batch_delay_ms", "request_timeout_s", "shutdown_grace_s")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _check_default_quality(self) -> Settings:
        if (
            self.default_quality is not None
            and self.qualities is not None
            and self.default_quality not in self.qualities
        ):
            raise ValueError(
                f"default_quality {self.default_quality} is not among the served qualities {self.qualities}"
            )
        return self

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0


def _one_line(exc: ValidationError) -> ConfigError:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
    return ConfigError(f"invalid configuration: {problems}")


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment plus ``overrides`` (``None`` values are ignored);
    validation errors become one-line :class:`ConfigError`s."""
    if any(name.upper() == "TCM_STORE" for name in os.environ):  # an old name, silently ignored otherwise
        raise ConfigError("invalid configuration: TCM_STORE was renamed TCM_MODEL_STORE (set that instead)")
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:  # the environment may hold other TCM_* variables; code must not misspell a field
        raise ConfigError(f"invalid configuration: unknown setting(s) {', '.join(unknown)}")
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise _one_line(exc) from None


def load_codec_settings() -> CodecSettings:
    """The codec settings from the environment (what the ``tcm`` commands default to)."""
    try:
        return CodecSettings()
    except ValidationError as exc:
        raise _one_line(exc) from None
