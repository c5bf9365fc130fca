"""Constants and helpers the tests share (imported as ``from helpers import ...``).

The conformance kit and the Kodak images live in ``../shared`` beside the repository
(override with ``TCM_SHARED_DIR``). They are required: a missing kit fails the tests
loudly instead of skipping the proofs of conformance. Fixtures are in ``conftest.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

#: ../shared next to the repository checkout, and the conformance kit inside it.
SHARED = Path(os.environ.get("TCM_SHARED_DIR") or Path(__file__).resolve().parents[1].parent / "shared")


CONFORMANCE = SHARED / "conformance"


KODAK = SHARED / "data" / "kodak"


KIT_CHECKPOINT = CONFORMANCE / "tcm-small-conformance.pth.tar"


KIT_VECTORS = ("coffee-136x200", "coffee-140x260")


#: Quality level under which test stores hold the kit checkpoint.
KIT_QUALITY = 3


#: How close (relative) the reference's float32 sigma may lie to a scale-table boundary for
#: another CPU's float32 sigma to land on the other side of it. The kit saw float32 entropy
#: parameters differ by ~2.4e-7 between thread counts; a non-AVX-512 AMD EPYC moves two of
#: coffee-140x260's 122,880 y indexes, whose reference sigmas sit 4e-7 and 1e-7 (relative)
#: from a boundary. 1e-5 is ~80 float32 ulps: wide enough for any CPU, far too narrow to
#: excuse a real error (a wrong index is typically off by many percent of sigma).
CLOSE_CALL_REL = 1e-5


def reference_close_calls(vector: str) -> np.ndarray:
    """Positions (in the y symbol list) where the reference's own sigma is a close call:
    within :data:`CLOSE_CALL_REL` of a scale-table entry, so that the version-1 (exact)
    table index there depends on the CPU's last float32 bits (why format version 2 exists)."""
    internals = np.load(CONFORMANCE / "vectors" / vector / "compress_internals.npz")
    table = np.load(CONFORMANCE / "cdf_tables.npz")["gaussian_conditional.scale_table"].astype(np.float64)
    slices = sorted(k for k in internals.files if k.startswith("compress_scale_slice"))
    sigma = np.concatenate([internals[k].reshape(-1) for k in slices]).astype(np.float64)
    sigma = np.maximum(sigma, 0.11)
    nearest = np.abs(sigma[:, None] - table[None, :]).min(axis=1)
    return np.nonzero(nearest <= CLOSE_CALL_REL * sigma)[0]


def index_drift(ours: np.ndarray, vector: str) -> np.ndarray:
    """Where this CPU's exact (version-1) y indexes differ from the reference's, after
    checking that each such position is a reference close call (anything else fails)."""
    ref = np.load(CONFORMANCE / "vectors" / vector / "compress_internals.npz")["y_indexes"]
    differ = np.nonzero(ours != ref)[0]
    stray = np.setdiff1d(differ, reference_close_calls(vector))
    assert stray.size == 0, f"{vector}: y indexes differ from the reference away from any close call at {stray[:10]}"
    assert np.abs(ours[differ].astype(int) - ref[differ]).max(initial=0) <= 1
    return differ


def require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data not found at {path} (set TCM_SHARED_DIR to the shared/ folder)")
    return path


def kit_tables() -> dict:
    """The kit's reference entropy tables (``cdf_tables.npz``) as tensors by state_dict key.

    Why the tests load them instead of building tables from the kit checkpoint: the
    reference's own float32 computation of the z (EntropyBottleneck) table differs between
    CPUs by one count in a few hundred entries (kit README), so tables built here give other
    z strings than the kit's on another CPU. Tables are data of a model (the store keeps
    them in the weights file); strings are compared with the kit's tables loaded.
    """
    import numpy as np
    import torch

    from tcm_serve.model.checkpoint import TABLE_BUFFERS

    ref = np.load(require(CONFORMANCE / "cdf_tables.npz"))
    return {key: torch.from_numpy(ref[key].copy()) for key in TABLE_BUFFERS}


def write_kit_checkpoint_with_tables(path: Path, state: dict | None = None) -> Path:
    """The kit checkpoint with the kit's reference tables filled in (as after update())."""
    import torch

    from tcm_serve.model.checkpoint import read_state_dict

    state = read_state_dict(require(KIT_CHECKPOINT)) if state is None else state
    torch.save({"state_dict": {**state, **kit_tables()}}, path)
    return path


def kit_store_at(root: Path, qualities: tuple[int, ...] = (KIT_QUALITY,), checkpoint: Path | None = None) -> Path:
    """A model store at ``root`` holding the kit checkpoint, with the kit's tables, under
    each of ``qualities`` (also used by tests/golden/make_golden.py)."""
    from tcm_serve.model.config import preset
    from tcm_serve.store import ModelStore

    root.mkdir(parents=True, exist_ok=True)
    made = checkpoint is None
    checkpoint = checkpoint or write_kit_checkpoint_with_tables(root / ".kit-with-tables.pth.tar")
    for q in qualities:
        ModelStore(root).import_checkpoint(
            checkpoint, q, preset("conformance-small"), lmbda=0.013, source="conformance kit"
        )
    if made:
        checkpoint.unlink()
    return root


def kit_model(kit_state_dict):
    """The kit model on the CPU with the kit's reference tables (see :func:`kit_tables`)."""
    from tcm_serve.model.checkpoint import load_into
    from tcm_serve.model.config import preset
    from tcm_serve.model.tcm import TCM

    model = TCM(preset("conformance-small"))
    load_into(model, {**kit_state_dict, **kit_tables()})
    return model


# -- the HTTP service (tests/test_api.py, test_server.py, test_batching.py) ---------------------
#: Quality levels under which service test stores hold the kit checkpoint (exercises routing).
SERVICE_QUALITIES = (2, 3)


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


def cpu_allocation_error() -> RuntimeError:
    """The error torch's CPU allocator really raises (a plain RuntimeError, "can't allocate
    memory"): asking for 4 EiB, past any address space, is refused at once everywhere."""
    import torch

    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as exc:
        return exc
    raise AssertionError("the allocator accepted 4 EiB")
