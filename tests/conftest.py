"""Shared pytest fixtures (several test modules append here; never overwrite)."""
from __future__ import annotations

from pathlib import Path

import pytest

#: /work/shared next to the repository checkout, and the conformance kit inside it.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CONFORMANCE = SHARED / "conformance"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    if not CONFORMANCE.is_dir():
        pytest.skip(f"conformance kit not found at {CONFORMANCE}")
    return CONFORMANCE
