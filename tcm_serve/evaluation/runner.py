"""Code a dataset with every codec and setting, measure, average, compare.

Everything here is real coding: our models go through the same path as ``tcm compress``
and ``tcm decompress`` (:func:`~tcm_serve.codec.pipeline.compress_images` to a ``.tcm`` blob,
:func:`~tcm_serve.codec.pipeline.decompress_blob` through a fresh store resolver, i.e. a
second, independent model load as a receiver would do), and the baselines write and read
real files through Pillow. Rate is ``8 * file bytes / (W * H)`` for every codec; the
distortion is measured between the original and the decoded 8-bit image.

Averages are the field's: per setting, the mean over images of bpp, of PSNR (mean of the
per-image PSNRs, not the PSNR of the mean MSE) and of MS-SSIM.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TcmError
from ..imageio import IMAGE_SUFFIXES, DecodedImage, read_image
from . import baselines
from .bdrate import DEFAULT_BD_METHOD, BDError, BDPackageMissing, bd_rate, package
from .metrics import MS_SSIM_MIN_SIDE, ms_ssim, psnr

#: Codec name of our models in every table.
OURS = "tcm"


def ours_at(effort: int) -> str:
    """The codec name of our models at encoder effort ``effort``: ``tcm`` for none, else
    ``tcm-e1``, ``tcm-e2``, ... (each effort level is its own curve)."""
    return OURS if effort == 0 else f"{OURS}-e{effort}"


def is_ours(codec: str) -> bool:
    return codec == OURS or codec.startswith(f"{OURS}-e")


Progress = Callable[[str], None]


class EvalError(TcmError):
    """A dataset, store or option that an evaluation cannot run with."""

    code = "bad_evaluation"


@dataclass(frozen=True)
class Dataset:
    root: Path
    names: tuple[str, ...]
    images: tuple[DecodedImage, ...]

    def __len__(self) -> int:
        return len(self.names)


def load_dataset(root: str | os.PathLike, limit: int | None = None, *, holdout: bool = False) -> Dataset:
    """The images directly inside ``root`` in name order (the first ``limit`` of them); with
    ``holdout``, the training hold-out under ``root`` instead (:func:`load_holdout`)."""
    folder = Path(root)
    if not folder.is_dir():
        raise EvalError(f"dataset {folder} is not a directory")
    if holdout:
        return load_holdout(folder, limit)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EvalError(f"dataset {folder} holds no images ({'/'.join(sorted(IMAGE_SUFFIXES))})")
    if limit is not None:
        files = files[:limit]
    images = []
    for f in files:
        try:
            images.append(read_image(f))
        except TcmError as exc:
            raise type(exc)(f"{f}: {exc}") from None
    return Dataset(folder, tuple(f.name for f in files), tuple(images))


def load_holdout(root: Path, limit: int | None = None) -> Dataset:
    """The held-out photos of a training set (``training/photos.py``), found as ``tcm train``
    walks it and each prepared as it prepares a photo (EXIF orientation, integer downscale to
    a short side of 1024), named by their path under ``root``."""
    from ..training.photos import HOLDOUT_RULE, MAX_SIDE, dataset_files, held_out, prepare_photo

    files = held_out(dataset_files(root))
    if not files:
        raise EvalError(f"no held-out image under {root} (rule: {HOLDOUT_RULE})")
    if limit is not None:
        files = files[:limit]
    images = tuple(DecodedImage(prepare_photo(f, MAX_SIDE), "RGB", "holdout") for f in files)  # ImageError: one line
    return Dataset(root, tuple(f.relative_to(root).as_posix() for f in files), images)


@dataclass(frozen=True)
class Measurement:
    """One image coded at one setting."""

    codec: str
    setting: str
    quality: int
    image: str
    width: int
    height: int
    bytes: int
    bpp: float
    psnr: float
    ms_ssim: float | None  # None: image too small for five scales
    payload_bpp: float | None  # ours only: the two entropy-coded strings, no container
    encode_s: float
    decode_s: float


@dataclass(frozen=True)
class Summary:
    """Means over the images of one codec setting."""

    codec: str
    setting: str
    quality: int
    images: int
    bpp: float
    psnr: float
    ms_ssim: float | None
    payload_bpp: float | None
    encode_s: float
    decode_s: float


@dataclass(frozen=True)
class Curve:
    """A codec's rate-distortion points (mean bpp, mean PSNR), by increasing rate."""

    name: str
    label: str
    kind: str  # "ours", "baseline" or "published"
    bpp: tuple[float, ...]
    psnr: tuple[float, ...]


@dataclass(frozen=True)
class BDRow:
    test: str
    anchor: str
    bd_rate: float | None  # percent, negative = test needs fewer bits
    bd_psnr: float | None  # dB, positive = test better at equal rate
    psnr_range: tuple[float, float] | None
    note: str | None = None


@dataclass
class Report:
    dataset: Dataset
    measurements: list[Measurement] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    published: list[Curve] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)
    bd_method: str = DEFAULT_BD_METHOD  # interpolation of the BD-rates (bdrate.BD_METHODS)

    def summaries(self) -> list[Summary]:
        return summarise(self.measurements)

    def curves(self) -> list[Curve]:
        return curves_of(self.summaries(), self.labels) + self.published


# -- measuring -----------------------------------------------------------------------------
def measure(
    codec: str,
    setting: str,
    quality: int,
    name: str,
    original: np.ndarray,
    decoded: np.ndarray,
    nbytes: int,
    encode_s: float,
    decode_s: float,
    payload_bpp: float | None = None,
) -> Measurement:
    if decoded.shape != original.shape:
        raise EvalError(f"{codec} {setting} decoded {name} to shape {decoded.shape}, expected {original.shape}")
    h, w = original.shape[:2]
    can_ms = min(h, w) >= MS_SSIM_MIN_SIDE
    return Measurement(
        codec,
        setting,
        quality,
        name,
        w,
        h,
        nbytes,
        8.0 * nbytes / (w * h),
        psnr(original, decoded),
        ms_ssim(original, decoded) if can_ms else None,
        payload_bpp,
        encode_s,
        decode_s,
    )


def code_baseline(
    name: str, qualities: Sequence[int], data: Dataset, progress: Progress | None = None
) -> list[Measurement]:
    """Encode and decode every image at every quality with a Pillow codec."""
    codec = baselines.CODECS[name]
    out = []
    for q in qualities:
        for img_name, img in zip(data.names, data.images):
            if progress:
                progress(f"{name} q{q} {img_name}")
            t0 = time.perf_counter()
            blob = codec.encode(img.pixels, q)
            t1 = time.perf_counter()
            decoded = codec.decode(blob, img.pixels.shape[2])
            t2 = time.perf_counter()
            out.append(measure(name, f"q{q}", q, img_name, img.pixels, decoded, len(blob), t1 - t0, t2 - t1))
    return out


def code_store(
    store,
    qualities: Sequence[int],
    device,
    data: Dataset,
    progress: Progress | None = None,
    efforts: Sequence[int] = (0,),
) -> list[Measurement]:
    """Compress every image to a .tcm blob with each quality level at each encoder effort
    (codec :func:`ours_at`), then decompress it."""
    from ..codec.pipeline import compress_images, decompress_blob, load_model, store_resolver

    out = []
    for q in qualities:
        if progress:
            progress(f"{OURS} q{q}: loading the model")
        lm = load_model(store, q, device)
        resolve = store_resolver(store, device)  # the receiver's own copy of the model
        for effort in efforts:
            codec = ours_at(effort)
            for img_name, img in zip(data.names, data.images):
                if progress:
                    progress(f"{codec} q{q} {img_name}")
                t0 = time.perf_counter()
                (comp,) = compress_images(lm, [img], effort=effort)
                t1 = time.perf_counter()
                resolve(comp.header)  # load (once) outside the decode timing
                t2 = time.perf_counter()
                dec = decompress_blob(comp.blob, resolve)
                t3 = time.perf_counter()
                nbytes, encode_s, decode_s = len(comp.blob), t1 - t0, t3 - t2
                out.append(
                    measure(codec, f"q{q}", q, img_name, img.pixels, dec.pixels, nbytes, encode_s, decode_s, comp.bpp)
                )
        del lm, resolve
    return out


# -- averaging and comparing ---------------------------------------------------------------
def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarise(measurements: Sequence[Measurement]) -> list[Summary]:
    """Per (codec, setting), in first-seen order: the means over its images."""
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.codec, m.setting), []).append(m)
    out = []
    for (codec, setting), ms in groups.items():
        ms_ssims = [m.ms_ssim for m in ms]
        out.append(
            Summary(
                codec,
                setting,
                ms[0].quality,
                len(ms),
                float(np.mean([m.bpp for m in ms])),
                float(np.mean([m.psnr for m in ms])),
                _mean(ms_ssims) if all(v is not None for v in ms_ssims) else None,
                _mean([m.payload_bpp for m in ms]),
                float(np.mean([m.encode_s for m in ms])),
                float(np.mean([m.decode_s for m in ms])),
            )
        )
    return out


def curves_of(summaries: Sequence[Summary], labels: dict[str, str]) -> list[Curve]:
    by_codec: dict[str, list[Summary]] = {}
    for s in summaries:
        by_codec.setdefault(s.codec, []).append(s)
    out = []
    for codec, ss in by_codec.items():
        ss = sorted(ss, key=lambda s: s.bpp)
        kind = "ours" if is_ours(codec) else "baseline"
        out.append(Curve(codec, labels.get(codec, codec), kind, tuple(s.bpp for s in ss), tuple(s.psnr for s in ss)))
    return out


def require_bd_package() -> None:
    """Fail at once, in one line, when the BD-rates cannot be computed (before hours of coding)."""
    try:
        package()
    except BDPackageMissing as exc:
        raise EvalError(str(exc)) from None


def compare(
    test: Curve, anchor: Curve, psnr_range: tuple[float, float] | None = None, method: str = DEFAULT_BD_METHOD
) -> BDRow:
    try:
        r = bd_rate(anchor.bpp, anchor.psnr, test.bpp, test.psnr, psnr_range, method)
    except BDError as exc:
        msg = str(exc)
        for role, curve in (("anchor: ", anchor), ("test: ", test)):
            if msg.startswith(role):
                msg = f"{curve.name}: {msg[len(role) :]}"
        return BDRow(test.name, anchor.name, None, None, None, msg)
    bd_psnr = None if not np.isfinite(r.bd_psnr) else r.bd_psnr
    return BDRow(test.name, anchor.name, r.bd_rate, bd_psnr, r.psnr_range)


def bd_table(
    curves: Sequence[Curve],
    anchor: str,
    psnr_range: tuple[float, float] | None = None,
    method: str = DEFAULT_BD_METHOD,
) -> list[BDRow]:
    """Every curve against ``anchor``, then ours (effort 0) against every curve not ours, then
    each effort level of ours against effort 0 (what the effort gains)."""
    by_name = {c.name: c for c in curves}
    rows = []
    if anchor in by_name:
        rows += [compare(c, by_name[anchor], psnr_range, method) for c in curves if c.name != anchor]
    ours = by_name.get(OURS)
    if ours is not None:
        rows += [compare(ours, c, psnr_range, method) for c in curves if c.name != anchor and not is_ours(c.name)]
        rows += [compare(c, ours, psnr_range, method) for c in curves if c.name != OURS and is_ours(c.name)]
    return rows


def ms_ssim_note(data: Dataset) -> str | None:
    small = [n for n, img in zip(data.names, data.images) if min(img.height, img.width) < MS_SSIM_MIN_SIDE]
    if not small:
        return None
    return (
        f"MS-SSIM left blank for {len(small)} image(s) with a side under {MS_SSIM_MIN_SIDE} px "
        f"(five scales do not fit), e.g. {small[0]}; setting means then have no MS-SSIM"
    )
