"""Architecture configuration of a TCM model and the named presets.

The first fields are exactly the constructor arguments of the official ``TCM`` class, so
any configuration the official code accepts (e.g. the conformance kit's N=32, 2-slice
model) can be expressed, and ``--arch-json`` files use the same names.

The remaining fields are widths the official class hard-codes (z channels, the slice
networks' hidden widths, SWAtten's inner width, the hyperprior's attention head size).
Their defaults reproduce the official model exactly; the ``lite`` preset shrinks them so
a TCM can be trained and run on a small CPU. A field left at its default is omitted from
the canonical JSON, so adding fields never changes the identity of existing models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

#: Channels of y in the official models (the official class hard-codes it in the hyperprior
#: and slice networks, so there M must equal it).
LATENT_CHANNELS = 320
#: Window size of the main transforms and of SWAtten (fixed: the padding rule assumes it).
WINDOW_SIZE = 8
#: Window of the hyperprior's transformer blocks.
HYPER_WINDOW_SIZE = 4
#: SWAtten's attention head size.
SWATTEN_HEAD_DIM = 16


@dataclass(frozen=True)
class TCMConfig:
    """Constructor arguments of the official TCM class (``drop_path_rate`` only matters in
    training, and every released model uses 0)."""

    N: int = 128
    M: int = LATENT_CHANNELS
    config: tuple[int, ...] = (2, 2, 2, 2, 2, 2)
    head_dim: tuple[int, ...] = (8, 16, 32, 32, 16, 8)
    num_slices: int = 5
    max_support_slices: int = 5
    drop_path_rate: float = 0.0
    # -- widths the official class hard-codes (defaults = official) ---------------------------
    hyper_channels: int = 192
    slice_hidden: tuple[int, ...] = (224, 128)
    swatten_dim: int = 128
    hyper_head_dim: int = 32

    def __post_init__(self) -> None:
        # Types first: a width of 64.0 (or "64") from a JSON file would otherwise reach
        # torch as a float and fail with a traceback, or be truncated silently (64.5 -> 64).
        for name in _INT_FIELDS:
            if not _is_int(getattr(self, name)):
                raise ConfigError(f"{name} must be an integer, got {getattr(self, name)!r}")
        for name in _INT_LIST_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(_is_int(v) for v in value):
                raise ConfigError(f"{name} must be a list of integers, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.drop_path_rate, bool) or not isinstance(self.drop_path_rate, (int, float)):
            raise ConfigError(f"drop_path_rate must be a number, got {self.drop_path_rate!r}")
        self.validate()

    # -- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        """Reject configurations that the official class would build but that cannot run,
        with a message that says why (see the conformance README's notes on N and M)."""
        if self.M <= 0:
            raise ConfigError(f"M must be positive, got {self.M}")
        if self.hyper_channels <= 0 or self.swatten_dim <= 0 or self.swatten_dim % (2 * SWATTEN_HEAD_DIM):
            raise ConfigError(
                f"hyper_channels must be positive and swatten_dim a positive multiple of {2 * SWATTEN_HEAD_DIM}, "
                f"got {self.hyper_channels} and {self.swatten_dim}"
            )
        if len(self.slice_hidden) != 2 or any(v <= 0 for v in self.slice_hidden):
            raise ConfigError(f"slice_hidden must list 2 positive widths, got {list(self.slice_hidden)}")
        if len(self.config) != 6 or any(v < 0 for v in self.config):
            raise ConfigError(f"config must list 6 non-negative block counts, got {list(self.config)}")
        if len(self.head_dim) != 6 or any(v <= 0 for v in self.head_dim):
            raise ConfigError(f"head_dim must list 6 positive head sizes, got {list(self.head_dim)}")
        if self.hyper_head_dim <= 0 or self.N <= 0 or self.N % self.hyper_head_dim:
            raise ConfigError(f"N must be a positive multiple of hyper_head_dim ({self.hyper_head_dim}), got {self.N}")
        for hd in self.head_dim:
            if self.N % hd:
                raise ConfigError(f"N={self.N} is not divisible by head_dim entry {hd}")
        if self.num_slices <= 0 or self.M % self.num_slices:
            raise ConfigError(f"num_slices must divide M={self.M}, got {self.num_slices}")
        for i in range(self.num_slices):
            if min(i, self.max_support_slices) != min(i, 5) and self.max_support_slices >= 0:
                raise ConfigError(
                    "max_support_slices must give min(i, mss) == min(i, 5) for every slice "
                    f"(the slice networks' widths assume it), got {self.max_support_slices}"
                )
        if self.max_support_slices < 0 and self.num_slices > 6:
            raise ConfigError("max_support_slices < 0 (all previous slices) needs num_slices <= 6")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    # -- derived -----------------------------------------------------------------------
    @property
    def slice_channels(self) -> int:
        return self.M // self.num_slices

    def support_count(self, slice_index: int) -> int:
        """How many previously decoded slices condition slice ``slice_index``."""
        if self.max_support_slices < 0:
            return slice_index
        return min(slice_index, self.max_support_slices)

    # -- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Constructor arguments as JSON-ready values; extended widths only where they differ
        from the official ones (so official configs serialise exactly as before)."""
        d = asdict(self)
        for key in ("config", "head_dim", "slice_hidden"):
            d[key] = list(d[key])
        for key, default in EXTENDED_DEFAULTS.items():
            if d[key] == (list(default) if isinstance(default, tuple) else default):
                del d[key]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TCMConfig:
        if not isinstance(data, dict):
            raise ConfigError("architecture must be a JSON object of TCM constructor arguments")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown architecture field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid architecture: {exc}") from None

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def config_hash(self) -> bytes:
        """8-byte identity of the architecture, stored in every .tcm header."""
        return hashlib.sha256(self.canonical_json().encode()).digest()[:8]


_INT_FIELDS = ("N", "M", "num_slices", "max_support_slices", "hyper_channels", "swatten_dim", "hyper_head_dim")
_INT_LIST_FIELDS = ("config", "head_dim", "slice_hidden")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: The hard-coded widths of the official class, which the extended fields default to.
EXTENDED_DEFAULTS: dict[str, Any] = {
    "hyper_channels": 192,
    "slice_hidden": (224, 128),
    "swatten_dim": 128,
    "hyper_head_dim": 32,
}

PRESETS: dict[str, TCMConfig] = {
    # The released models (N=64 "small": all six MSE lambdas; N=128 "large").
    "official-small": TCMConfig(N=64),
    "official-large": TCMConfig(N=128),
    # Layout of the conformance kit's checkpoint (small enough to test with).
    "conformance-small": TCMConfig(N=32, num_slices=2),
    # CPU-sized TCM for the bundled store (measurements behind the choice: docs/training.md).
    # Same structure (TCM blocks with plain and shifted windows in every stage, hyperprior
    # with TCM blocks, 5 slices with SWAtten and LRP), narrower everywhere: 5.0 M parameters
    # against 45 M, about 1/8 of official-small's time per Kodak image.
    "lite": TCMConfig(
        N=16,
        M=160,
        config=(2, 2, 2, 2, 2, 2),
        head_dim=(8, 8, 8, 8, 8, 8),
        num_slices=5,
        max_support_slices=5,
        hyper_channels=96,
        slice_hidden=(64, 48),
        swatten_dim=32,
        hyper_head_dim=8,
    ),
}


def preset(name: str) -> TCMConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})") from None
