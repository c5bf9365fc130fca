"""Exporting TCM's stages to ONNX graphs, caching them, and opening them in onnxruntime.

One graph per stage the codec engine calls (see :mod:`tcm_serve.codec.backends`):
``g_a``, ``h_a``, ``hyper_s`` (both hyper-synthesis branches), ``slice{i}`` (SWAtten and
the mean/scale networks of slice ``i``: the entropy parameters), ``lrp{i}`` (latent
residual prediction of slice ``i``) and ``g_s``. The hyperprior and slice networks are
exported too because onnxruntime runs them about 1.5x faster than PyTorch on this CPU
(docs/performance.md), and they run once per slice on both sides.

Every graph has dynamic batch and spatial axes (one export serves every image size). The
exporter is PyTorch's TorchScript-based one (``dynamo=False``): the dynamo exporter needs
``onnxscript`` and gains nothing for these static graphs; the TorchScript one needs only
the ``onnx`` package.

Cache: graphs live next to the checkpoint (the model store directory) or in ``out``, named
``q<quality>-<sha256[:12]>-g<GRAPH_FORMAT>-<stage>.onnx``, plus a ``.json`` index with the
SHA-256 of every graph, written last (so a set without its index is incomplete and is
rebuilt). The weights hash in the name means new weights for a quality level get new
graphs; stale graphs of that quality are removed when the new ones are written.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..cpu import cpu_flags
from ..errors import ConfigError, StoreError
from ..files import atomic_write_text, atomic_writer
from ..model.tcm import TCM
from ..store import ModelEntry
from ..store import sha256_file as _sha256
from .geometry import MIN_PADDED, Geometry

#: Bump when the exported graphs change (stage split, opset, wrappers): old caches are rebuilt.
GRAPH_FORMAT = 1
OPSET = 17
#: Size of the example inputs used for tracing: the smallest padded image (tracing runs the
#: model once). Sizes are recorded as shape operations, not constants, so the graphs serve
#: every size; the parity tests run them on other, non-square sizes.
_EXAMPLE_IMAGE = (MIN_PADDED, MIN_PADDED)


def entropy_graph_names(num_slices: int) -> list[str]:
    """The graphs that compute entropy parameters (what a decoder must reproduce)."""
    return ["hyper_s"] + [f"{k}{i}" for i in range(num_slices) for k in ("slice", "lrp")]


def graph_names(num_slices: int) -> list[str]:
    """Names of the graphs of a model with ``num_slices`` slices, in export order."""
    return ["g_a", "h_a", *entropy_graph_names(num_slices), "g_s"]


# -- export wrappers: each stage as a module with tensor inputs and outputs ---------------------
class _Hyper(nn.Module):
    def __init__(self, model: TCM) -> None:
        super().__init__()
        self.model = model

    def forward(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.hyper_synthesis(z_hat)


class _SliceParams(nn.Module):
    def __init__(self, model: TCM, i: int) -> None:
        super().__init__()
        self.model, self.i = model, i

    def forward(self, latent_means: Tensor, latent_scales: Tensor, *support: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p = self.model.slice_params(self.i, latent_means, latent_scales, list(support))
        return p.mu, p.scale, p.mean_support


class _Refine(nn.Module):
    def __init__(self, model: TCM, i: int) -> None:
        super().__init__()
        self.model, self.i = model, i

    def forward(self, mean_support: Tensor, y_hat_slice: Tensor) -> Tensor:
        return self.model.refine(self.i, mean_support, y_hat_slice)


@dataclass
class _GraphSpec:
    module: nn.Module
    inputs: dict[str, Tensor]
    outputs: list[str]


def _specs(model: TCM, image: tuple[int, int] = _EXAMPLE_IMAGE, seed: int = 0) -> dict[str, _GraphSpec]:
    """Each stage with example inputs for a padded image of ``image`` (height, width)."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    geometry = Geometry(*image)
    yh, yw = geometry.y_shape
    rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    y = rand(1, cfg.M, yh, yw)
    specs = {
        "g_a": _GraphSpec(model.g_a, {"x": rand(1, 3, *geometry.padded_shape)}, ["y"]),
        "h_a": _GraphSpec(model.h_a, {"y": y}, ["z"]),
        "hyper_s": _GraphSpec(
            _Hyper(model), {"z_hat": rand(1, cfg.hyper_channels, *geometry.z_shape)}, ["latent_means", "latent_scales"]
        ),
        "g_s": _GraphSpec(model.g_s, {"y_hat": y}, ["x_hat"]),
    }
    sc = cfg.slice_channels
    for i in range(cfg.num_slices):
        inputs = {"latent_means": y, "latent_scales": y}
        inputs.update({f"support{k}": rand(1, sc, yh, yw) for k in range(cfg.support_count(i))})
        specs[f"slice{i}"] = _GraphSpec(_SliceParams(model, i), inputs, ["mu", "scale", "mean_support"])
        ms = rand(1, cfg.M + sc * cfg.support_count(i), yh, yw)
        specs[f"lrp{i}"] = _GraphSpec(
            _Refine(model, i), {"mean_support": ms, "y_hat_slice": rand(1, sc, yh, yw)}, ["y_hat_refined"]
        )
    return specs


def export_graph(spec: _GraphSpec, path: Path) -> None:
    """Trace one stage and write it to ``path`` atomically (all axes but channels dynamic)."""
    names = list(spec.inputs) + spec.outputs
    dynamic = {n: {0: "batch", 2: "height", 3: "width"} for n in names}
    with atomic_writer(path) as f, torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter warns that it is legacy, and the tracer that Python ints
        # taken from shapes become constants: only in shape checks that raise, never
        # in the computation (the parity tests run the graphs at other sizes).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            spec.module.eval(),
            tuple(spec.inputs.values()),
            f,  # type: ignore[arg-type]  # file objects work too
            dynamo=False,
            opset_version=OPSET,
            input_names=list(spec.inputs),
            output_names=spec.outputs,
            dynamic_axes=dynamic,
        )


# -- the cache ------------------------------------------------------------------------------
def graph_prefix(entry: ModelEntry) -> str:
    return f"q{entry.quality}-{entry.sha256[:12]}-g{GRAPH_FORMAT}"


@dataclass(frozen=True)
class GraphSet:
    """The cached graphs of one store entry."""

    directory: Path
    prefix: str
    names: tuple[str, ...]

    @classmethod
    def for_entry(cls, entry: ModelEntry, directory: str | os.PathLike) -> GraphSet:
        return cls(Path(directory), graph_prefix(entry), tuple(graph_names(entry.arch.num_slices)))

    def path(self, name: str) -> Path:
        return self.directory / f"{self.prefix}-{name}.onnx"

    @property
    def index_path(self) -> Path:
        return self.directory / f"{self.prefix}.json"

    def complete(self) -> bool:
        """True when the index (written last) and every graph it names exist."""
        return self.index_path.is_file() and all(self.path(n).is_file() for n in self.names)

    def verify(self) -> None:
        """Raise :class:`StoreError` if a graph does not match the SHA-256 in the index."""
        try:
            index = json.loads(self.index_path.read_text())
            digests = index["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"ONNX graph index {self.index_path} is unreadable: {exc}") from None
        for name in self.names:
            if digests.get(name) != _sha256(self.path(name)):
                raise StoreError(f"ONNX graph {self.path(name).name} fails its checksum")

    def stale(self) -> list[Path]:
        """Graphs, indexes and optimised copies of the same quality level made from other
        weights or formats, and optimised copies a crashed process left half written."""
        quality = self.prefix.split("-", 1)[0]
        own = {self.path(n) for n in self.names} | {self.index_path}
        found = [
            p
            for pattern in (f"{quality}-*-g*-*.onnx", f"{quality}-*-g*.json", f"{quality}-*.partial")
            for p in self.directory.glob(pattern)
        ]
        return [p for p in found if p not in own]


def export_graphs(model: TCM, entry: ModelEntry, directory: str | os.PathLike) -> GraphSet:
    """Export every stage of ``model`` (the weights of ``entry``) into ``directory``, write
    the index last, then remove stale graphs of the same quality level."""
    gs = GraphSet.for_entry(entry, directory)
    gs.directory.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    specs = _specs(model)
    for name in gs.names:
        export_graph(specs[name], gs.path(name))
    index = {
        "quality": entry.quality,
        "weights_sha256": entry.sha256,
        "graph_format": GRAPH_FORMAT,
        "opset": OPSET,
        "torch": torch.__version__,
        "sha256": {n: _sha256(gs.path(n)) for n in gs.names},
    }
    atomic_write_text(gs.index_path, json.dumps(index, indent=2) + "\n")
    for p in gs.stale():
        p.unlink(missing_ok=True)
    return gs


def ensure_graphs(
    model: TCM, entry: ModelEntry, directory: str | os.PathLike, force: bool = False
) -> tuple[GraphSet, bool]:
    """The graph set of ``entry`` in ``directory``, exported if missing, incomplete or
    ``force``; returns (set, whether it was (re)built)."""
    gs = GraphSet.for_entry(entry, directory)
    if gs.complete() and not force:
        return gs, False
    try:
        return export_graphs(model, entry, directory), True
    except OSError as exc:
        raise StoreError(
            f"cannot write ONNX graphs to {directory}: {exc.strerror or exc} "
            f"(export them elsewhere with tcm export-onnx --out DIR and set TCM_ONNX_DIR)"
        ) from None


# -- onnxruntime ------------------------------------------------------------------------------
def providers_for(device: torch.device) -> tuple[list, str]:
    """onnxruntime execution providers for ``device`` and the header's backend name."""
    import onnxruntime as ort

    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                "the onnx backend on CUDA needs onnxruntime-gpu (pip install 'tcm-serve[gpu]'); "
                f"this onnxruntime has {', '.join(ort.get_available_providers())}"
            )
        # Heuristic (not benchmarked, so run-to-run stable) convolution algorithms and no
        # TF32: encoder and decoder must compute the same entropy parameters.
        opts = {"device_id": device.index or 0, "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": 0}
        return [("CUDAExecutionProvider", opts), "CPUExecutionProvider"], "onnx-cuda"
    return ["CPUExecutionProvider"], "onnx-cpu"


def session_options(threads: int | None = None):
    """One session per graph, sequential, all graph optimisations (fusions, NCHWc layout)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: the CUDA provider warns about CPU fallbacks per node
    return so


def runtime_key(device: torch.device) -> str:
    """12 hex digits naming what an optimised graph depends on besides the graph itself:
    onnxruntime's version, the device and the CPU's instruction sets. onnxruntime's layout
    optimisations are specific to the hardware (NCHWc blocks of 8 floats with AVX2, 16 with
    AVX-512), so a machine of another kind, or a new onnxruntime, optimises its own."""
    import onnxruntime as ort

    # flags: '' where Linux does not report them; the key then names the architecture only,
    # and a cache shared across unlike machines must not be used
    what = [ort.__version__, str(device), platform.machine(), " ".join(sorted(cpu_flags()))]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:12]


def optimized_path(gs: GraphSet, name: str, key: str) -> Path:
    """Where graph ``name`` is kept as onnxruntime optimised it on machines of ``key``. The
    name matches :meth:`GraphSet.stale`'s pattern, so re-exported graphs drop these too."""
    return gs.directory / f"{gs.prefix}-{name}.opt-{key}.onnx"


def _open_session(gs: GraphSet, name: str, device: torch.device, threads: int | None, key: str):
    """One graph's session: from its optimised copy when there is one (no optimisation pass
    at start), else optimised now, the copy written for the next process when the graph
    directory is writable. A copy that does not load is removed and rebuilt."""
    import onnxruntime as ort

    providers, _ = providers_for(device)
    cached = optimized_path(gs, name, key)
    if cached.is_file():
        so = session_options(threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimised
        try:
            return ort.InferenceSession(str(cached), so, providers=providers)
        except Exception:  # noqa: BLE001 - a damaged copy: rebuilt from the graph below
            cached.unlink(missing_ok=True)
    if os.access(gs.directory, os.W_OK):
        fd, partial = tempfile.mkstemp(prefix=f"{cached.name}.", suffix=".partial", dir=gs.directory)
        os.close(fd)
        try:
            so = session_options(threads)
            so.optimized_model_filepath = partial
            session = ort.InferenceSession(str(gs.path(name)), so, providers=providers)
            os.replace(partial, cached)  # whole or not at all; a concurrent writer wrote the same
            return session
        except Exception:  # noqa: BLE001 - the copy could not be written (disk full, quota, NFS): go without
            pass
        finally:
            Path(partial).unlink(missing_ok=True)
    return ort.InferenceSession(str(gs.path(name)), session_options(threads), providers=providers)


def open_sessions(gs: GraphSet, device: torch.device, threads: int | None = None, names: Sequence[str] | None = None):
    """(sessions by graph name, backend name) for the graphs of ``gs`` on ``device``; each
    graph optimised once per machine kind (:func:`runtime_key`), not once per process."""
    _, backend = providers_for(device)
    key = runtime_key(device)
    sessions = {}
    for name in names or gs.names:
        try:
            sessions[name] = _open_session(gs, name, device, threads, key)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for bad files
            raise StoreError(f"cannot load ONNX graph {gs.path(name).name}: {str(exc).splitlines()[0][:200]}") from None
    return sessions, backend


def parity_report(
    model: TCM, gs: GraphSet, image: tuple[int, int] = (384, 256), threads: int | None = None
) -> dict[str, float]:
    """Max absolute difference between each graph (onnxruntime, CPU) and the PyTorch stage,
    on random inputs of another size than the export's (so dynamic axes are exercised)."""
    sessions, _ = open_sessions(gs, torch.device("cpu"), threads)
    out: dict[str, float] = {}
    with torch.no_grad():
        for name, spec in _specs(model.to("cpu").eval(), image, seed=1).items():
            ref = spec.module(*spec.inputs.values())
            ref = ref if isinstance(ref, (tuple, list)) else (ref,)
            got = sessions[name].run(None, {k: v.numpy() for k, v in spec.inputs.items()})
            out[name] = max(float((torch.from_numpy(g) - r).abs().max()) for g, r in zip(got, ref))
    return out
