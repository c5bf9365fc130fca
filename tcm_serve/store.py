"""The model store: a directory of checkpoints plus ``manifest.json`` describing them.

Layout::

    model_store/
      manifest.json        {"format": 1, "models": [ {entry}, ... ]}
      q3-<sha256[:12]>.pt  state_dict (tables filled), one per quality level

The entropy tables (the z and y CDF tables and the scale table) are stored in each weights
file, built once at import: they are data of the model, covered by its SHA-256 and so by
the ``weights_hash`` of every blob, and never recomputed at load (a recomputation can
differ between CPUs).

Each entry: ``quality`` (1..255, unique), ``file``, ``arch`` (TCM constructor arguments),
``preset`` (name or null), ``lambda``, ``metric``, ``sha256`` of the file, ``source``
(where the weights came from), and optionally ``training`` (how a model we trained was
made: config, lambda, data, steps) and ``evaluation`` (measured results, e.g. Kodak bpp
and PSNR from ``tcm eval``). Loading verifies the SHA-256 and refuses a mismatch: a
corrupted or swapped weights file would otherwise decode every stored image wrongly.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .codec.container import MAX_QUALITY, MIN_QUALITY, quality_problem

# The coder tables are stored with the weights: building them needs the range coder's
# quantiser (codec.rans), so the store uses codec.tables, which depends on the model and
# the coder only (never on the store or the engine).
from .codec.tables import prepare_entropy_tables
from .errors import CheckpointError, ConfigError, ModelNotFoundError, StoreError
from .files import atomic_write_text, atomic_writer
from .model.checkpoint import TABLE_BUFFERS, load_into, read_state_dict
from .model.config import PRESETS, TCMConfig
from .model.tcm import TCM

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_STORE = Path(__file__).resolve().parents[1] / "model_store"


@dataclass(frozen=True)
class ModelEntry:
    quality: int
    file: str
    arch: TCMConfig
    preset: str | None
    lmbda: float | None
    metric: str
    sha256: str
    source: str
    training: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None

    @property
    def weights_hash(self) -> bytes:
        """8-byte identity of the weights stored in every .tcm header."""
        return bytes.fromhex(self.sha256)[:8]

    def to_json(self) -> dict[str, Any]:
        return {
            "quality": self.quality,
            "file": self.file,
            "arch": self.arch.to_dict(),
            "preset": self.preset,
            "lambda": self.lmbda,
            "metric": self.metric,
            "sha256": self.sha256,
            "source": self.source,
            **({"training": self.training} if self.training is not None else {}),
            **({"evaluation": self.evaluation} if self.evaluation is not None else {}),
        }

    @classmethod
    def from_json(cls, d: Any) -> ModelEntry:
        if not isinstance(d, dict):
            raise StoreError("manifest entry is not an object")
        try:
            q = d["quality"]
            if not isinstance(q, int) or quality_problem(q):
                raise StoreError(f"manifest entry has invalid quality {q!r} ({MIN_QUALITY}..{MAX_QUALITY})")
            sha = str(d["sha256"]).lower()
            if len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
                raise StoreError(f"manifest entry for quality {q} has an invalid sha256")
            file = str(d["file"])
            if Path(file).name != file:
                raise StoreError(f"manifest entry for quality {q}: file must be a plain file name, got {file!r}")
            lam = d.get("lambda")
            if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 < lam < 10):
                raise StoreError(f"manifest entry for quality {q} has an invalid lambda {lam!r} (a number in (0, 10))")
            return cls(
                quality=q,
                file=file,
                arch=TCMConfig.from_dict(d["arch"]),
                preset=d.get("preset"),
                lmbda=None if lam is None else float(lam),
                metric=str(d.get("metric", "mse")),
                sha256=sha,
                source=str(d.get("source", "")),
                training=_optional_object(d, "training", q),
                evaluation=_optional_object(d, "evaluation", q),
            )
        except KeyError as exc:
            raise StoreError(f"manifest entry is missing field {exc.args[0]!r}") from None
        except ConfigError as exc:
            raise StoreError(f"manifest entry has a bad architecture: {exc}") from None


def _optional_object(d: dict, key: str, quality: int) -> dict[str, Any] | None:
    value = d.get(key)
    if value is not None and not isinstance(value, dict):
        raise StoreError(f"manifest entry for quality {quality}: {key!r} must be an object")
    return value


def round_to_half(model: torch.nn.Module) -> None:
    """Round every parameter through float16 in place (buffers keep float32).

    Done before the entropy tables are built, so the tables match exactly the weights a
    half-precision file gives back when it is loaded and cast to float32.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            h = p.data.half()
            if not torch.isfinite(h).all():
                raise CheckpointError(f"parameter {name!r} does not fit in float16; import without --half")
            p.data.copy_(h.float())


def read_training_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``training`` record that ``tcm train`` leaves in its checkpoints, if any."""
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - read_state_dict reports unreadable files; this is best effort
        return None
    rec = obj.get("training") if isinstance(obj, dict) else None
    if not isinstance(rec, dict):
        return None
    out = dict(rec)
    if isinstance(obj.get("step"), int):
        out["steps_done"] = obj["step"]
    return out


def resolve_store(path: str | os.PathLike[str] | None) -> Path:
    """The store directory: ``path`` (``--store``, or the ``model_store`` setting that
    ``TCM_MODEL_STORE`` sets), else the bundled ``model_store/``."""
    return Path(path) if path else DEFAULT_STORE


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (weights files are tens of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ModelStore:
    """Reads and writes a store directory. Cheap to construct; loads models on demand."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # -- manifest ------------------------------------------------------------------------
    def entries(self) -> list[ModelEntry]:
        path = self.root / MANIFEST
        if not self.root.is_dir():
            raise StoreError(f"model store {self.root} does not exist")
        if not path.is_file():
            return []
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {path}: {exc}") from None
        if (
            not isinstance(data, dict)
            or data.get("format") != MANIFEST_FORMAT
            or not isinstance(data.get("models"), list)
        ):
            raise StoreError(f"{path} is not a format-{MANIFEST_FORMAT} manifest")
        entries = [ModelEntry.from_json(d) for d in data["models"]]
        qualities = [e.quality for e in entries]
        if len(set(qualities)) != len(qualities):
            raise StoreError(f"{path} lists a quality level twice")
        return sorted(entries, key=lambda e: e.quality)

    def entry(self, quality: int) -> ModelEntry:
        for e in self.entries():
            if e.quality == quality:
                return e
        have = ", ".join(str(e.quality) for e in self.entries()) or "none"
        raise ModelNotFoundError(f"quality {quality} is not in the model store {self.root} (available: {have})")

    def _write_manifest(self, entries: list[ModelEntry]) -> None:
        doc = {"format": MANIFEST_FORMAT, "models": [e.to_json() for e in sorted(entries, key=lambda e: e.quality)]}
        text = json.dumps(doc, indent=2) + "\n"
        atomic_write_text(self.root / MANIFEST, text)

    # -- loading -------------------------------------------------------------------------
    def load_model(self, entry: ModelEntry, verify: bool = True) -> TCM:
        """Build the architecture and load the weights (CPU, eval mode)."""
        path = self.root / entry.file
        if not path.is_file():
            raise StoreError(f"weights file {path} for quality {entry.quality} is missing")
        if verify:
            actual = sha256_file(path)
            if actual != entry.sha256:
                raise StoreError(
                    f"weights file {entry.file} fails its checksum (manifest {entry.sha256[:12]}..., file {actual[:12]}...)"
                )
        model = TCM(entry.arch)
        try:
            state = read_state_dict(path)
            load_into(model, state)
        except CheckpointError as exc:
            raise StoreError(f"quality {entry.quality}: {exc}") from None
        missing = [k for k in TABLE_BUFFERS if state[k].numel() == 0]
        if missing:
            # Tables are data of the model, covered by its hash: rebuilding them at load
            # would give other tables on another CPU (the z table's float32 computation
            # differs between CPUs by one count in some entries) and undecodable blobs.
            raise StoreError(
                f"weights file {entry.file} for quality {entry.quality} has no entropy tables ({missing[0]} is "
                "empty); re-import the checkpoint with tcm models import, which builds and stores them"
            )
        return model.eval()

    def annotate(self, quality: int, evaluation: dict[str, Any]) -> ModelEntry:
        """Record measured results (e.g. Kodak bpp/PSNR) in an entry of the manifest."""
        from dataclasses import replace

        entries = self.entries()
        target = self.entry(quality)
        updated = replace(target, evaluation=evaluation)
        self._write_manifest([updated if e.quality == quality else e for e in entries])
        return updated

    # -- importing -----------------------------------------------------------------------
    def import_checkpoint(
        self,
        checkpoint: str | os.PathLike,
        quality: int,
        arch: TCMConfig,
        preset: str | None = None,
        lmbda: float | None = None,
        metric: str = "mse",
        source: str | None = None,
        replace: bool = False,
        half: bool = False,
        training: dict[str, Any] | None = None,
    ) -> ModelEntry:
        """Check a checkpoint against ``arch``, build its entropy tables, and add it.

        ``half`` stores parameters as float16 (half the file; cast back at load).
        ``training`` defaults to the record ``tcm train`` leaves in its checkpoints."""
        problem = quality_problem(quality)
        if problem:
            raise StoreError(problem)
        self.root.mkdir(parents=True, exist_ok=True)
        entries = [e for e in self.entries()]
        if any(e.quality == quality for e in entries) and not replace:
            raise StoreError(f"quality {quality} already exists in {self.root} (use --replace to overwrite it)")
        model = TCM(arch)
        load_into(model, read_state_dict(checkpoint))
        if half:
            round_to_half(model)
        prepare_entropy_tables(model)
        params = {name for name, _ in model.named_parameters()}
        state = {
            k: (v.detach().half() if half and k in params else v.detach()).cpu().contiguous()
            for k, v in model.state_dict().items()
        }
        if training is None:
            training = read_training_record(checkpoint)
        if training is not None:
            training = {k: v for k, v in training.items() if k != "arch"}  # the entry records it already
        if lmbda is None and training and isinstance(training.get("lmbda"), (int, float)):
            lmbda = float(training["lmbda"])
        tmp_name = f".import-q{quality}.pt"
        with atomic_writer(self.root / tmp_name) as f:
            torch.save(state, f)
        digest = sha256_file(self.root / tmp_name)
        name = f"q{quality}-{digest[:12]}.pt"
        os.replace(self.root / tmp_name, self.root / name)
        entry = ModelEntry(
            quality=quality,
            file=name,
            arch=arch,
            preset=preset if preset else next((k for k, v in PRESETS.items() if v == arch), None),
            lmbda=lmbda,
            metric=metric,
            sha256=digest,
            source=source or f"imported from {Path(checkpoint).name}",
            training=training,
        )
        old = [e for e in entries if e.quality == quality]
        self._write_manifest([e for e in entries if e.quality != quality] + [entry])
        for e in old:
            if e.file != name and not any(o.file == e.file for o in entries if o.quality != quality):
                (self.root / e.file).unlink(missing_ok=True)
        return entry
