"""Who runs the network stages: PyTorch, or exported ONNX graphs on ONNX Runtime.

The codec engine never calls the model directly; it calls a :class:`Stages` object that
runs the six stages TCM coding needs (``g_a``, ``h_a``, the hyper-synthesis, a slice's
entropy parameters, a slice's latent residual prediction, ``g_s``). Two implementations:

* :class:`TorchStages` -- the model's own methods: the exact path, on which the
  conformance kit's strings are reproduced byte for byte;
* :class:`OnnxStages` -- the same stages as ONNX graphs (:mod:`tcm_serve.codec.onnx_graphs`)
  on onnxruntime (CPU provider, or the CUDA provider from ``onnxruntime-gpu``). About 1.5-2x
  faster on this project's CPU (docs/performance.md); numerically within ~1e-6 of PyTorch.

Why the name matters: the decoder recomputes the entropy parameters (hyper-synthesis, slice
networks) and must get the *same* table indexes as the encoder. Two backends differ in the
last bits, so a blob records in its header which backend computed its entropy parameters
(``Stages.name``, e.g. ``torch-cpu`` or ``onnx-cpu``) and is decoded with that same backend
or refused (:class:`~tcm_serve.errors.BackendMismatchError`). ``g_a`` and ``g_s`` do not feed
the decoder's entropy parameters, so they may run on any backend.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import Tensor

from ..model.tcm import TCM, SliceParams

if TYPE_CHECKING:  # onnxruntime is imported only by the ONNX backend
    import onnxruntime


class Stages(Protocol):
    """The network stages of TCM coding, on one backend and device."""

    #: What the .tcm header records when these stages computed the entropy parameters
    #: (one of :data:`tcm_serve.codec.container.BACKENDS`).
    name: str

    def g_a(self, x: Tensor) -> Tensor: ...
    def h_a(self, y: Tensor) -> Tensor: ...
    def hyper_synthesis(self, z_hat: Tensor) -> tuple[Tensor, Tensor]: ...
    def slice_params(
        self, i: int, latent_means: Tensor, latent_scales: Tensor, decoded: list[Tensor]
    ) -> SliceParams: ...
    def refine(self, i: int, mean_support: Tensor, y_hat_slice: Tensor) -> Tensor: ...
    def g_s(self, y_hat: Tensor) -> Tensor: ...
    def current_threads(self) -> int: ...
    def thread_count_matters(self) -> bool:
        """True where :meth:`threads` changes the arithmetic (CPU kernels)."""
        ...

    def threads(self, k: int) -> AbstractContextManager[None]:
        """Run the stages with ``k`` intra-op threads inside the block: the split of work
        between threads changes the last bits, so a version-1 blob that does not decode
        with one count is retried with others (``Engine.decode_latent``)."""
        ...


#: One thread-count change at a time. With torch's OpenMP build, ``set_num_threads`` sets
#: the calling thread's OpenMP thread count and the default of threads that have not run
#: torch yet (and MKL's count): a retry in one worker must not hand its count to another
#: worker that starts meanwhile, so retries are serialised and the count restored after.
_TORCH_THREADS_LOCK = threading.Lock()
#: Builds with torch's own thread pool ignore set_num_threads once work has run.
_TORCH_OPENMP = "OpenMP" in torch.__config__.parallel_info()


@contextmanager
def torch_threads(k: int) -> Iterator[None]:
    """``k`` torch intra-op threads for the calling thread inside the block, restored after;
    serialised with every other change made through here (see :data:`_TORCH_THREADS_LOCK`)."""
    with _TORCH_THREADS_LOCK:
        before = torch.get_num_threads()
        torch.set_num_threads(k)
        try:
            yield
        finally:
            torch.set_num_threads(before)


class TorchStages:
    """The model's own methods (looked up at call time, so tests can spy on them)."""

    def __init__(self, model: TCM, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.name = f"torch-{device.type}"

    def g_a(self, x: Tensor) -> Tensor:
        return self.model.g_a(x)

    def h_a(self, y: Tensor) -> Tensor:
        return self.model.h_a(y)

    def hyper_synthesis(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.hyper_synthesis(z_hat)

    def slice_params(self, i: int, latent_means: Tensor, latent_scales: Tensor, decoded: list[Tensor]) -> SliceParams:
        return self.model.slice_params(i, latent_means, latent_scales, decoded)

    def slice_params_gated(
        self, i: int, latent_means: Tensor, latent_scales: Tensor, decoded: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.slice_params_gated(i, latent_means, latent_scales, decoded)

    def mean_support_from(self, i: int, gate: Tensor) -> Tensor:
        return self.model.mean_support_from(i, gate)

    def refine(self, i: int, mean_support: Tensor, y_hat_slice: Tensor) -> Tensor:
        return self.model.refine(i, mean_support, y_hat_slice)

    def g_s(self, y_hat: Tensor) -> Tensor:
        return self.model.g_s(y_hat)

    def current_threads(self) -> int:
        return torch.get_num_threads()

    def thread_count_matters(self) -> bool:
        return self.device.type == "cpu" and _TORCH_OPENMP

    def threads(self, k: int) -> AbstractContextManager[None]:
        return torch_threads(k)


@dataclass
class EncodedSlice:
    """The encoder's result for one y slice: table-index scales, quantised symbols (as
    floats, ``round(y - mu)``) and, unless it is the last slice, the refined latent that
    conditions the next slices."""

    scale: Tensor
    y_q: Tensor
    refined: Tensor | None


def encode_slice(
    stages: Stages,
    i: int,
    latent_means: Tensor,
    latent_scales: Tensor,
    decoded: list[Tensor],
    y_slice: Tensor,
    refine: bool,
) -> EncodedSlice:
    """Slice ``i`` on the encoder: its entropy parameters, its symbols (``y_slice`` in the
    parameters' precision), and the refined latent the decoder will compute from them."""
    p = stages.slice_params(i, latent_means, latent_scales, decoded)
    y_q = torch.round(y_slice - p.mu)
    return EncodedSlice(p.scale, y_q, stages.refine(i, p.mean_support, y_q + p.mu) if refine else None)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


class OnnxStages:
    """The stages as onnxruntime sessions (one per graph), with torch tensors in and out.

    ``sessions`` maps graph names (:func:`tcm_serve.codec.onnx_graphs.graph_names`) to
    sessions. Outputs are CPU float32 tensors sharing memory with onnxruntime's arrays.
    ``reopen(k)`` opens the same sessions with ``k`` intra-op threads (for :meth:`threads`);
    ``threads_used`` is the count ``sessions`` were opened with.
    """

    Sessions = dict[str, "onnxruntime.InferenceSession"]

    def __init__(
        self,
        sessions: Sessions,
        num_slices: int,
        support_counts: Sequence[int],
        name: str,
        threads_used: int = 0,
        reopen: Callable[[int], Sessions] | None = None,
    ) -> None:
        self.sessions = sessions
        self.num_slices = num_slices
        self.support_counts = tuple(support_counts)
        self.name = name
        self._inputs = {k: [i.name for i in s.get_inputs()] for k, s in sessions.items()}
        self._threads_used = threads_used or torch.get_num_threads()
        self._reopen = reopen
        self._by_threads: dict[int, OnnxStages.Sessions] = {self._threads_used: sessions}

    def _run(self, graph: str, *tensors: Tensor) -> list[Tensor]:
        feeds = dict(zip(self._inputs[graph], (_np(t) for t in tensors)))
        return [torch.from_numpy(a) for a in self.sessions[graph].run(None, feeds)]

    def g_a(self, x: Tensor) -> Tensor:
        return self._run("g_a", x)[0]

    def h_a(self, y: Tensor) -> Tensor:
        return self._run("h_a", y)[0]

    def hyper_synthesis(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        means, scales = self._run("hyper_s", z_hat)
        return means, scales

    def slice_params(self, i: int, latent_means: Tensor, latent_scales: Tensor, decoded: list[Tensor]) -> SliceParams:
        support = decoded[: self.support_counts[i]]
        mu, scale, mean_support = self._run(f"slice{i}", latent_means, latent_scales, *support)
        return SliceParams(mu, scale, mean_support)

    def refine(self, i: int, mean_support: Tensor, y_hat_slice: Tensor) -> Tensor:
        return self._run(f"lrp{i}", mean_support, y_hat_slice)[0]

    def g_s(self, y_hat: Tensor) -> Tensor:
        return self._run("g_s", y_hat)[0]

    def current_threads(self) -> int:
        return self._threads_used

    def thread_count_matters(self) -> bool:
        return self._reopen is not None and self.name.endswith("-cpu")

    @contextmanager
    def threads(self, k: int) -> Iterator[None]:
        """Sessions with ``k`` threads for the block; opened on demand, and only the last
        such set is kept (retries are rare; on a GPU each set would hold device memory)."""
        if self._reopen is None:
            raise RuntimeError("these ONNX stages cannot reopen their sessions with another thread count")
        if k not in self._by_threads:
            self._by_threads = {self._threads_used: self._by_threads[self._threads_used], k: self._reopen(k)}
        before = self.sessions
        self.sessions = self._by_threads[k]
        try:
            yield
        finally:
            self.sessions = before
