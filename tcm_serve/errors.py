"""Every failure tcm-serve reports on purpose, in one place.

Each exception carries a one-line, user-facing message and a stable machine-readable
``code``. The CLI prints ``str(exc)`` on one line and exits non-zero; the HTTP API maps
each class to a status code in a single table. Anything *not* derived from
:class:`TcmError` is a bug.
"""

from __future__ import annotations


class TcmError(Exception):
    """Base class: an expected failure with a one-line message."""

    code: str = "error"

    def __init__(self, message: str) -> None:
        # Keep messages on one line whatever the caller passed in.
        super().__init__(" ".join(str(message).split()))


# --- .tcm container / bitstream -------------------------------------------------------
class FormatError(TcmError):
    """The bytes are not a valid .tcm blob (bad magic, truncated, CRC mismatch, ...)."""

    code = "malformed_blob"


class UnsupportedVersionError(FormatError):
    """A well-formed header with a format version this build cannot read."""

    code = "unsupported_version"


class BitstreamError(FormatError):
    """The entropy-coded payload could not be decoded (corrupt or truncated stream)."""

    code = "corrupt_bitstream"


class DriftError(FormatError):
    """Decoded symbols do not match the encoder's checksum.

    This is what happens when the entropy parameters computed by the decoder differ from
    the encoder's (other hardware / kernels): rather than return a silently wrong image we
    refuse.
    """

    code = "entropy_parameter_drift"


# --- models and checkpoints ----------------------------------------------------------
class ModelNotFoundError(TcmError):
    """The model (quality level or identity) named by a request or blob is not in the store."""

    code = "model_not_found"


class BackendMismatchError(ModelNotFoundError):
    """The blob's entropy parameters were computed by a backend this decoder does not run.

    Backends (PyTorch or ONNX Runtime, CPU or CUDA) differ in the last bits of the entropy
    parameters; decoding with another one can read the wrong symbols, so it is refused.
    """

    code = "backend_mismatch"


class CheckpointError(TcmError):
    """A checkpoint file cannot be read or does not match the architecture."""

    code = "bad_checkpoint"


class StoreError(TcmError):
    """The model store is missing, malformed, or its files fail their checksums."""

    code = "bad_store"


class ConfigError(TcmError):
    """An architecture or service configuration value is invalid."""

    code = "bad_config"


# --- images ----------------------------------------------------------------------------
class ImageError(TcmError):
    """The image bytes cannot be decoded or use an unsupported feature (e.g. alpha)."""

    code = "bad_image"


class UnsupportedImageFormatError(ImageError):
    """The image container format is not on the allowlist."""

    code = "unsupported_media_type"


class ImageTooLargeError(ImageError):
    """The image exceeds the configured pixel or byte limit."""

    code = "too_large"


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` is a failed allocation: Python's MemoryError, torch's CUDA
    OutOfMemoryError, or the plain RuntimeError torch's CPU allocator raises ("can't
    allocate memory"). Such a failure belongs to the request's size, not to a bug."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
