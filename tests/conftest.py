"""Shared pytest fixtures (several test modules append here; never overwrite).

The conformance kit and the Kodak images live in ``../shared`` beside the repository
(override with ``TCM_SHARED_DIR``). They are required: a missing kit fails the tests
loudly instead of skipping the proofs of conformance.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

#: ../shared next to the repository checkout, and the conformance kit inside it.
SHARED = Path(os.environ.get("TCM_SHARED_DIR") or Path(__file__).resolve().parents[1].parent / "shared")
CONFORMANCE = SHARED / "conformance"
KODAK = SHARED / "data" / "kodak"
KIT_CHECKPOINT = CONFORMANCE / "tcm-small-conformance.pth.tar"
KIT_VECTORS = ("coffee-136x200", "coffee-140x260")
#: Quality level under which test stores hold the kit checkpoint.
KIT_QUALITY = 3


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data not found at {path} (set TCM_SHARED_DIR to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED)


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    return _require(CONFORMANCE)


@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    return _require(KODAK)


@pytest.fixture(scope="session")
def kit_store(tmp_path_factory) -> Path:
    """A model store holding the conformance checkpoint as quality ``KIT_QUALITY``."""
    from service.model.config import preset
    from service.store import ModelStore

    root = tmp_path_factory.mktemp("kit_store")
    ModelStore(root).import_checkpoint(
        _require(KIT_CHECKPOINT), KIT_QUALITY, preset("conformance-small"), lmbda=0.013, source="conformance kit"
    )
    return root


@pytest.fixture(scope="session")
def kit_state_dict(conformance_dir):
    """The kit checkpoint's normalised state_dict (read once: 74 MB)."""
    from service.model.checkpoint import read_state_dict

    return read_state_dict(KIT_CHECKPOINT)


@pytest.fixture(scope="session")
def kit_engine(kit_state_dict):
    """An Engine on the CPU with the kit model and its entropy tables."""
    import torch

    from service.codec.engine import Engine
    from service.model.checkpoint import load_into
    from service.model.config import preset
    from service.model.tcm import TCM

    model = TCM(preset("conformance-small"))
    load_into(model, kit_state_dict)
    return Engine(model, torch.device("cpu"))
