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


# -- the HTTP service (tests/test_api.py, test_server.py, test_batching.py) ---------------------
#: Quality levels under which service test stores hold the kit checkpoint (exercises routing).
SERVICE_QUALITIES = (2, 3)


@pytest.fixture(scope="session")
def service_store(tmp_path_factory) -> Path:
    """A model store holding the conformance checkpoint as qualities 2 and 3."""
    from service.model.config import preset
    from service.store import ModelStore

    root = tmp_path_factory.mktemp("service_store")
    store = ModelStore(root)
    for q in SERVICE_QUALITIES:
        store.import_checkpoint(
            _require(KIT_CHECKPOINT), q, preset("conformance-small"), lmbda=0.013, source="conformance kit"
        )
    return root


def make_png(height: int, width: int, mode: str = "RGB", seed: int = 0) -> bytes:
    """A small synthetic photo-like PNG (smooth gradients plus noise), deterministic."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width, 1), yy * 255 // max(height, 1), (xx + yy) % 256], axis=-1)
    pixels = np.clip(base + rng.integers(-24, 25, size=base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def service_images() -> dict[str, bytes]:
    """PNG images whose padded sizes differ: 256x256, 256x256 (gray), 384x384 and 256x384."""
    return {
        "rgb200x136": make_png(136, 200, seed=1),
        "gray64": make_png(64, 64, "L", seed=2),
        "rgb300x260": make_png(260, 300, seed=3),
        "rgb140x260": make_png(140, 260, seed=4),
    }


def cpu_allocation_error() -> RuntimeError:
    """The error torch's CPU allocator really raises (a plain RuntimeError, "can't allocate
    memory"): asking for 4 EiB, past any address space, is refused at once everywhere."""
    import torch

    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as exc:
        return exc
    raise AssertionError("the allocator accepted 4 EiB")
