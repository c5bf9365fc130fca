"""Architecture configuration of a TCM model and the named presets.

The fields are exactly the constructor arguments of the official ``TCM`` class, so any
configuration the official code accepts (e.g. the conformance kit's N=32, 2-slice model)
can be expressed, and ``--arch-json`` files use the same names.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

#: Channels of y. The hyperprior and slice networks of the official class hard-code 320.
LATENT_CHANNELS = 320
#: Channels of z (hard-coded in the official class).
HYPER_CHANNELS = 192
#: Window size of the main transforms and of SWAtten.
WINDOW_SIZE = 8
#: Hyperprior transformer: fixed head size and window.
HYPER_HEAD_DIM = 32
HYPER_WINDOW_SIZE = 4
#: SWAtten: inner width and head size.
SWATTEN_INTER_DIM = 128
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", tuple(int(v) for v in self.config))
        object.__setattr__(self, "head_dim", tuple(int(v) for v in self.head_dim))
        self.validate()

    # -- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        """Reject configurations that the official class would build but that cannot run,
        with a message that says why (see the conformance README's notes on N and M)."""
        if self.M != LATENT_CHANNELS:
            raise ConfigError(f"M must be {LATENT_CHANNELS} (the official hyperprior and slice networks hard-code it), got {self.M}")
        if len(self.config) != 6 or any(v < 0 for v in self.config):
            raise ConfigError(f"config must list 6 non-negative block counts, got {list(self.config)}")
        if len(self.head_dim) != 6 or any(v <= 0 for v in self.head_dim):
            raise ConfigError(f"head_dim must list 6 positive head sizes, got {list(self.head_dim)}")
        if self.N <= 0 or self.N % HYPER_HEAD_DIM:
            raise ConfigError(f"N must be a positive multiple of {HYPER_HEAD_DIM} (hyperprior head size), got {self.N}")
        for hd in self.head_dim:
            if self.N % hd:
                raise ConfigError(f"N={self.N} is not divisible by head_dim entry {hd}")
        if self.num_slices <= 0 or LATENT_CHANNELS % self.num_slices:
            raise ConfigError(f"num_slices must divide {LATENT_CHANNELS}, got {self.num_slices}")
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
        return LATENT_CHANNELS // self.num_slices

    def support_count(self, slice_index: int) -> int:
        """How many previously decoded slices condition slice ``slice_index``."""
        if self.max_support_slices < 0:
            return slice_index
        return min(slice_index, self.max_support_slices)

    # -- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = list(self.config)
        d["head_dim"] = list(self.head_dim)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TCMConfig":
        if not isinstance(data, dict):
            raise ConfigError("architecture must be a JSON object of TCM constructor arguments")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown architecture field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid architecture: {exc}") from None

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def config_hash(self) -> bytes:
        """8-byte identity of the architecture, stored in every .tcm header."""
        return hashlib.sha256(self.canonical_json().encode()).digest()[:8]


PRESETS: dict[str, TCMConfig] = {
    # The released models (N=64 "small": all six MSE lambdas; N=128 "large").
    "official-small": TCMConfig(N=64),
    "official-large": TCMConfig(N=128),
    # Layout of the conformance kit's checkpoint (small enough to test with).
    "conformance-small": TCMConfig(N=32, num_slices=2),
}


def preset(name: str) -> TCMConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})") from None

