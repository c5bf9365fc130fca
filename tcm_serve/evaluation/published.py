"""The official TCM rate-distortion points, as published by the paper's authors.

Read from ``rd-published.json`` in the conformance kit (transcribed verbatim from the
LIC_TCM repository's RD_data.md)::

    {"models": {"Small": "N=64", ...},
     "results": {"Small": {"Kodak": {"PSNR": [...], "Bitrate": [...]}, "CLIC Pro": {...}}, ...}}

Their bitrate counts only the two entropy-coded strings (no container) and their PSNR is
computed on the network's float output, so they sit a little above what a file-size,
8-bit measurement of the same model gives. They are a reference line on the plot and in
the BD-rate table, only for the dataset they were measured on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

FILE_NAME = "rd-published.json"


@dataclass(frozen=True)
class PublishedCurve:
    model: str  # "Small", "Middle", "Large"
    width: str  # "N=64"
    dataset: str  # "Kodak"
    bpp: tuple[float, ...]
    psnr: tuple[float, ...]

    @property
    def name(self) -> str:
        return f"tcm-{self.model.lower()}-paper"

    @property
    def label(self) -> str:
        return f"TCM {self.model} ({self.width}), published on {self.dataset}"


def default_path() -> Path | None:
    """The kit's copy: ``$TCM_SHARED_DIR/conformance``, else ``../shared/conformance`` beside the repo."""
    candidates = []
    if os.environ.get("TCM_SHARED_DIR"):
        candidates.append(Path(os.environ["TCM_SHARED_DIR"]) / "conformance" / FILE_NAME)
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "conformance" / FILE_NAME)
    return next((p for p in candidates if p.is_file()), None)


def load(path: str | os.PathLike) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read published RD points {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"published RD points {path} are not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
        raise ConfigError(f"published RD points {path} have no 'results' object")
    return doc


def datasets(doc: dict) -> list[str]:
    """Dataset names present for any model, in file order."""
    seen: list[str] = []
    for per_model in doc["results"].values():
        for name in per_model if isinstance(per_model, dict) else ():
            if name not in seen:
                seen.append(name)
    return seen


def match_dataset(doc: dict, folder: str | os.PathLike) -> str | None:
    """The published dataset a folder is (its name, case-insensitively, e.g. ``kodak``)."""
    stem = Path(folder).resolve().name.lower()
    return next((d for d in datasets(doc) if d.lower() == stem), None)


def curves(doc: dict, dataset: str) -> list[PublishedCurve]:
    """Every model's curve for ``dataset`` (sorted by rate); ConfigError if malformed."""
    out = []
    widths = doc.get("models", {}) if isinstance(doc.get("models"), dict) else {}
    for model, per_model in doc["results"].items():
        entry = per_model.get(dataset) if isinstance(per_model, dict) else None
        if entry is None:
            continue
        try:
            pairs = sorted(zip((float(b) for b in entry["Bitrate"]), (float(p) for p in entry["PSNR"]), strict=True))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"published RD points for {model}/{dataset} are malformed: {exc}") from None
        out.append(
            PublishedCurve(
                model, str(widths.get(model, "")), dataset, tuple(b for b, _ in pairs), tuple(p for _, p in pairs)
            )
        )
    if not out:
        raise ConfigError(f"the published RD points have no dataset {dataset!r} (have: {', '.join(datasets(doc))})")
    return out
