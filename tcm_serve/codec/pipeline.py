"""Image <-> .tcm blob: padding, batching by size, the engine, and the container.

This is what the CLI and the service call. It knows about images and blobs; the
:class:`~tcm_serve.codec.engine.Engine` knows about tensors and strings; the container
module knows about bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, ModelNotFoundError
from ..imageio import DEFAULT_MAX_PIXELS, DecodedImage
from ..store import ModelEntry, ModelStore
from ..tuning import tune_malloc
from .backends import OnnxStages, TorchStages
from .container import BACKEND_KINDS, TcmFile, TcmHeader, pack, unpack
from .effort import LatentSearch, check_effort_size
from .engine import V1_RETRY_THREADS, CodedImage, Engine, ImageSymbols
from .geometry import DEFAULT_TILE, Geometry, check_coded_size
from .padding import crop, padded_batch, tensor_to_pixels
from .tiling import Tiling

#: Default cap on decoded pixels (width x height) for blobs: the image guard's, so what
#: compresses under the default limit decodes under it.
DEFAULT_MAX_DECODE_PIXELS = DEFAULT_MAX_PIXELS


@dataclass
class LoadedModel:
    """A store entry loaded on a device, with its engine and identity."""

    entry: ModelEntry
    engine: Engine
    backend: str

    @property
    def config_hash(self) -> bytes:
        return self.entry.arch.config_hash()

    @property
    def weights_hash(self) -> bytes:
        return self.entry.weights_hash


def load_model(
    store: ModelStore,
    quality: int,
    device: torch.device,
    backend: str = "torch",
    onnx_dir: str | os.PathLike | None = None,
    v1_retry_threads: tuple[int, ...] = V1_RETRY_THREADS,
    tile: int = DEFAULT_TILE,
) -> LoadedModel:
    """Load a store entry on ``device`` with its networks run by ``backend`` (``torch`` or
    ``onnx``; see :mod:`tcm_serve.codec.backends`). ``onnx_dir`` holds the exported graphs
    (default: the store directory, next to the checkpoint); missing graphs are exported.
    ``v1_retry_threads``: what a version-1 blob that fails to decode is retried with.
    ``tile``: core size of the tiled transforms (:mod:`tcm_serve.codec.tiling`; 0: whole)."""
    if backend not in BACKEND_KINDS:
        raise ConfigError(f"unknown backend {backend!r} (use {' or '.join(BACKEND_KINDS)})")
    tune_malloc()  # reuse freed buffers instead of re-faulting them per layer (tcm_serve/tuning.py)
    entry = store.entry(quality)
    model = store.load_model(entry)
    tiling = Tiling.for_device(tile, device)
    if backend == "torch":
        engine = Engine(model, device, portable_device=device, v1_retry_threads=v1_retry_threads, tiling=tiling)
    else:
        engine = _onnx_engine(model, entry, store, device, onnx_dir, v1_retry_threads, tiling)
    return LoadedModel(entry, engine, engine.backend)


def _onnx_engine(
    model,
    entry: ModelEntry,
    store: ModelStore,
    device: torch.device,
    onnx_dir,
    v1_retry_threads: tuple[int, ...],
    tiling: Tiling,
) -> Engine:
    """An engine whose stages run as ONNX graphs on ``device``; the glue (rounding, table
    look-ups), the portable float64 entropy path (onnxruntime has no float64 convolution)
    and, for exact blobs that need it, the torch-cpu entropy path run on the CPU."""
    from .onnx_graphs import ensure_graphs, entropy_graph_names, open_sessions

    graphs, _ = ensure_graphs(model, entry, onnx_dir or store.root)
    graphs.verify()
    threads = torch.get_num_threads()
    sessions, name = open_sessions(graphs, device, threads)
    cfg = model.cfg

    def reopen(k: int) -> dict:
        return {**sessions, **open_sessions(graphs, device, k, names=entropy_graph_names(cfg.num_slices))[0]}

    stages = OnnxStages(
        sessions, cfg.num_slices, [cfg.support_count(i) for i in range(cfg.num_slices)], name, threads, reopen
    )
    cpu = torch.device("cpu")
    return Engine(
        model,
        cpu,
        stages=stages,
        decode_paths=(TorchStages(model, cpu),),
        portable_device=cpu,
        v1_retry_threads=v1_retry_threads,
        tiling=tiling,
    )


@dataclass
class Compressed:
    blob: bytes
    header: TcmHeader
    bpp: float  # 8 * (len(z) + len(y)) / (H * W), the official formula (unpadded pixels)


def image_geometry(img: DecodedImage) -> Geometry:
    """How ``img`` is padded for coding, and the grids of the padded tensor."""
    return Geometry.for_image(img.height, img.width)


def _header_for(lm: LoadedModel, img: DecodedImage, geometry: Geometry, coded: CodedImage) -> TcmHeader:
    return TcmHeader(
        quality=lm.entry.quality,
        config_hash=lm.config_hash,
        weights_hash=lm.weights_hash,
        width=img.width,
        height=img.height,
        mode=img.mode,
        pad=geometry.pad,
        z_shape=geometry.z_shape,
        backend=coded.backend or lm.backend,
        symbols_crc32=coded.symbols_crc32,
    )


def latent_search(entry: ModelEntry, effort: int, deadline: float | None = None) -> LatentSearch | None:
    """What encoder effort ``effort`` means for the model of ``entry``
    (:mod:`tcm_serve.codec.effort`): its search with the model's own lambda (stopping early
    at ``deadline``, a ``time.monotonic()`` value), or ``None`` for effort 0;
    :class:`ConfigError` for a model that cannot be searched for."""
    return LatentSearch.for_level(effort, entry.lmbda, entry.metric, deadline)


def check_effort_allowed(entry: ModelEntry, img: DecodedImage, effort: int) -> None:
    """Refuse, before any work, an effort this model (:class:`ConfigError`) or this image's
    size (:class:`~tcm_serve.errors.ImageTooLargeError`) cannot take."""
    if latent_search(entry, effort) is not None:
        check_effort_size(*image_geometry(img).padded_shape)


def analyse_images(
    lm: LoadedModel,
    images: Sequence[DecodedImage],
    portable: bool = True,
    effort: int = 0,
    deadline: float | None = None,
) -> list[ImageSymbols]:
    """Run the transforms on a batch of images that share one padded size, for portable
    (version 2) or exact (version 1) blobs, with encoder effort ``effort`` (0: none; its
    search stops early at ``deadline``, a ``time.monotonic()`` value)."""
    geometries = [image_geometry(img) for img in images]
    if len({g.padded_shape for g in geometries}) != 1:
        raise ValueError("a batch must share one padded size")
    search = latent_search(lm.entry, effort, deadline)
    x = padded_batch([img.pixels for img in images], [g.pad for g in geometries])
    return lm.engine.analyse(x, portable, search, [g.pad for g in geometries])


def package(lm: LoadedModel, img: DecodedImage, coded: CodedImage) -> Compressed:
    """Wrap one image's strings in a .tcm container."""
    header = _header_for(lm, img, image_geometry(img), coded)
    blob = pack(TcmFile(header, coded.z_string, coded.y_string, coded.hints))
    bpp = 8.0 * (len(coded.z_string) + len(coded.y_string)) / (img.width * img.height)
    return Compressed(blob, header, bpp)


def compress_images(
    lm: LoadedModel, images: Sequence[DecodedImage], max_batch: int = 4, portable: bool = True, effort: int = 0
) -> list[Compressed]:
    """Compress images, batching those of equal padded size, with encoder effort ``effort``;
    results keep input order."""
    for img in images:  # refuse before any work
        check_effort_allowed(lm.entry, img, effort)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(image_geometry(img).padded_shape, []).append(i)
    out: list[Compressed | None] = [None] * len(images)
    for idx in groups.values():
        for start in range(0, len(idx), max(1, max_batch)):
            chunk = idx[start : start + max_batch]
            symbols = analyse_images(lm, [images[i] for i in chunk], portable, effort)
            for i, s in zip(chunk, symbols):
                out[i] = package(lm, images[i], lm.engine.encode_symbols(s))
    return [c for c in out if c is not None]


@dataclass
class Decompressed:
    pixels: np.ndarray  # (H, W, 1|3) uint8
    mode: str
    header: TcmHeader


Resolver = Callable[[TcmHeader], LoadedModel]


def store_resolver(
    store: ModelStore,
    device: torch.device,
    backend: str = "torch",
    onnx_dir: str | os.PathLike | None = None,
    tile: int = DEFAULT_TILE,
) -> Resolver:
    """Loads (and caches) the model a blob names, refusing identity and backend mismatches."""
    cache: dict[int, LoadedModel] = {}

    def resolve(header: TcmHeader) -> LoadedModel:
        lm = cache.get(header.quality)
        if lm is None:
            lm = cache[header.quality] = load_model(store, header.quality, device, backend, onnx_dir, tile=tile)
        check_identity(lm, header)
        return lm

    return resolve


def check_identity(lm: LoadedModel, header: TcmHeader) -> None:
    """Refuse a blob made by other weights, or whose entropy parameters were computed by a
    backend ``lm`` cannot reproduce (:class:`~tcm_serve.errors.BackendMismatchError`)."""
    check_made_by(lm.entry, header)
    lm.engine.entropy_path(header.backend)


def check_made_by(entry: ModelEntry, header: TcmHeader) -> None:
    """Refuse a blob made by another model than ``entry`` (quality, architecture or weights
    differ), naming both. Needs no loaded model, so the service refuses such a blob before
    it queues it."""
    if (header.quality, header.config_hash, header.weights_hash) != (
        entry.quality,
        entry.arch.config_hash(),
        entry.weights_hash,
    ):
        raise ModelNotFoundError(
            f"blob was made by model q{header.quality} config {header.config_hash.hex()} weights "
            f"{header.weights_hash.hex()}, but the store's q{entry.quality} is config "
            f"{entry.arch.config_hash().hex()} weights {entry.weights_hash.hex()}"
        )


def coded_image(f: TcmFile) -> CodedImage:
    """The engine's view of a container: strings, checksum, the entropy-parameter backend
    (or portable method) and the hints."""
    return CodedImage(f.z_string, f.y_string, f.header.symbols_crc32, f.header.backend, f.hints)


def check_decode_size(header: TcmHeader, max_pixels: int) -> None:
    """Refuse a blob whose image, or the padded tensor it is decoded at, is too large.

    The same checks as the encoder's image guard (:func:`tcm_serve.codec.geometry.check_coded_size`):
    width x height against ``max_pixels`` and the padded area (from the header's own
    padding, which the format lets a writer choose) against the bound that goes with it,
    so any image accepted for compression under a limit decodes under that limit and
    decode work stays proportional to the limit.
    """
    check_coded_size(header.geometry, max_pixels, "blob")


def decompress_blob(blob: bytes, resolve: Resolver, max_pixels: int = DEFAULT_MAX_DECODE_PIXELS) -> Decompressed:
    """Validate, decode and crop one .tcm blob."""
    f = unpack(blob)
    h = f.header
    check_decode_size(h, max_pixels)
    lm = resolve(h)
    x = lm.engine.decompress([coded_image(f)], h.z_shape)[0]
    return Decompressed(tensor_to_pixels(crop(x, h.pad), h.mode), h.mode, h)


def read_blob(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def decompress_batch(lm: LoadedModel, blobs: Sequence[bytes]) -> list[Decompressed]:
    """Decode blobs of one model and one padded size together: the entropy-parameter path
    and range decoding per blob (inside ``Engine.decompress``), the synthesis transform on
    the batch. Equals :func:`decompress_blob` per blob (tests/test_batching.py); the caller
    has checked each blob's size (:func:`check_decode_size`)."""
    files = [unpack(b) for b in blobs]
    for f in files:
        check_identity(lm, f.header)
    shapes = {f.header.z_shape for f in files}
    if len(shapes) != 1:
        raise ValueError("a decompression batch must share one padded size")
    coded = [coded_image(f) for f in files]
    x = lm.engine.decompress(coded, files[0].header.z_shape)
    return [
        Decompressed(tensor_to_pixels(crop(x[i], f.header.pad), f.header.mode), f.header.mode, f.header)
        for i, f in enumerate(files)
    ]
