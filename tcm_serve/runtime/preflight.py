"""Start-up checks of the served models' weights files, before the service listens.

The worker pool loads its models in the background (probes answer at once), so a broken
weights file would otherwise only show as a readiness that never turns green. ``tcm serve``
runs :func:`verify_entries` first and refuses to start with one line naming the file and
what is wrong with it:

* the file is missing (or not a regular file);
* its SHA-256 differs from the manifest's (truncated, corrupted, or swapped for another);
* it does not hold a state_dict of the manifest's architecture (missing/unexpected keys,
  wrong shapes or dtypes, NaN/inf values): a manifest edited by hand, or a file written
  for another preset.

The weights are memory-mapped, not copied, and the architecture is built on the CPU once
per entry; the worker then loads them again on its device (a second or two per model on
the conformance model, measured in docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import CheckpointError, StoreError
from ..store import MANIFEST, ModelEntry, ModelStore, sha256_file


def verify_entry(store: ModelStore, entry: ModelEntry) -> None:
    """Raise :class:`StoreError` (one line: file, quality, mismatch) unless ``entry``'s file
    is present, has the manifest's SHA-256 and fits the manifest's architecture."""
    import torch

    from ..model.checkpoint import check_state_dict, normalise_state_dict
    from ..model.tcm import TCM

    path = store.root / entry.file
    where = f"weights file {path} (quality {entry.quality} in {store.root / MANIFEST})"
    if not path.is_file():
        raise StoreError(f"{where} is missing")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise StoreError(
            f"{where} fails its checksum: the manifest says sha256 {entry.sha256[:16]}..., the file has "
            f"{actual[:16]}... ({path.stat().st_size:,} bytes): corrupted, truncated or replaced"
        )
    try:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a non-checkpoint
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"cannot read it as a checkpoint: {first[:200]}") from None
        check_state_dict(TCM(entry.arch), normalise_state_dict(raw))
    except CheckpointError as exc:
        raise StoreError(f"{where} does not match its architecture in the manifest: {exc}") from None


def verify_entries(store: ModelStore, entries: Iterable[ModelEntry]) -> None:
    """:func:`verify_entry` for each entry, in order (the first problem is reported)."""
    for entry in entries:
        verify_entry(store, entry)
