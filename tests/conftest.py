"""Shared pytest fixtures (several test modules append here; never overwrite).

Plain constants and helpers live in ``tests/helpers.py``: tests import them from there,
never from this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import (
    CONFORMANCE,
    KIT_CHECKPOINT,
    KODAK,
    SERVICE_QUALITIES,
    SHARED,
    kit_model,
    kit_store_at,
    make_png,
    require,
    write_kit_checkpoint_with_tables,
)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require(SHARED)


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    return require(CONFORMANCE)


@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    return require(KODAK)


@pytest.fixture(scope="session")
def kit_checkpoint_with_tables(tmp_path_factory, kit_state_dict) -> Path:
    return write_kit_checkpoint_with_tables(
        tmp_path_factory.mktemp("kit_tables") / "kit-updated.pth.tar", kit_state_dict
    )


@pytest.fixture(scope="session")
def kit_store(tmp_path_factory, kit_checkpoint_with_tables) -> Path:
    """A model store holding the conformance checkpoint (with the kit's tables) as quality
    ``KIT_QUALITY``."""
    return kit_store_at(tmp_path_factory.mktemp("kit_store"), checkpoint=kit_checkpoint_with_tables)


@pytest.fixture(scope="session")
def kit_state_dict(conformance_dir):
    """The kit checkpoint's normalised state_dict (read once: 74 MB)."""
    from tcm_serve.model.checkpoint import read_state_dict

    return read_state_dict(KIT_CHECKPOINT)


@pytest.fixture(scope="session")
def kit_engine(kit_state_dict):
    """An Engine on the CPU with the kit model and the kit's entropy tables."""
    import torch

    from tcm_serve.codec.engine import Engine

    return Engine(kit_model(kit_state_dict), torch.device("cpu"))


@pytest.fixture(scope="session")
def service_store(tmp_path_factory, kit_checkpoint_with_tables) -> Path:
    """A model store holding the conformance checkpoint (with the kit's tables) as
    qualities 2 and 3."""
    return kit_store_at(tmp_path_factory.mktemp("service_store"), SERVICE_QUALITIES, kit_checkpoint_with_tables)


@pytest.fixture(scope="session")
def service_images() -> dict[str, bytes]:
    """PNG images whose padded sizes differ: 256x256, 256x256 (gray), 384x384 and 256x384."""
    return {
        "rgb200x136": make_png(136, 200, seed=1),
        "gray64": make_png(64, 64, "L", seed=2),
        "rgb300x260": make_png(260, 300, seed=3),
        "rgb140x260": make_png(140, 260, seed=4),
    }
