"""One device's worker thread, and the small interface it needs from the pool.

A :class:`Worker` owns one device: it loads the models of every served quality level
there, warms each up (a compress and a decompress of :func:`warmup_image`), then runs the
batches the pool's batcher hands it until the pool drains. Only one thread ever runs device
work on a device, which is what :class:`~tcm_serve.codec.engine.Engine` requires.

It talks to its pool only through :class:`WorkerHost` (implemented by
:class:`~tcm_serve.runtime.pool.WorkerPool`), so the pool's supervision, admission and
readiness stay the pool's business and a worker can be driven by anything that offers those
few members.

Failures are sorted here: :func:`is_fatal` tells a failure of the worker (it must die and be
replaced) from a failure of its requests, and :func:`as_service_error` turns the latter into
the error the request is answered with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from ..codec.container import TcmHeader, check_bitstream
from ..codec.engine import SERVICE_V1_RETRY_THREADS, ImageSymbols
from ..codec.pipeline import (
    Decompressed,
    LoadedModel,
    analyse_images,
    check_identity,
    decompress_batch,
    decompress_blob,
    load_model,
    package,
)
from ..config import Settings
from ..devices import set_reproducible_kernels
from ..errors import ImageTooLargeError, TcmError, is_out_of_memory
from ..imageio import DecodedImage
from ..store import ModelEntry, ModelStore
from .batcher import Job
from .errors import InternalError, WorkerDiedError

log = logging.getLogger("tcm.runtime")

R = TypeVar("R")


class Observer(Protocol):
    """What the pool and its workers report (the API's Prometheus metrics implement it)."""

    def stage(self, stage: str, seconds: float) -> None: ...
    def batch(self, kind: str, size: int) -> None: ...
    def queue_depth(self, depth: int) -> None: ...
    def models_loaded(self, count: int) -> None: ...
    def worker_restarted(self, device: str) -> None: ...


class NullObserver:
    """The observer of a pool nobody watches (tests, benchmarks)."""

    def stage(self, stage: str, seconds: float) -> None:
        pass

    def batch(self, kind: str, size: int) -> None:
        pass

    def queue_depth(self, depth: int) -> None:
        pass

    def models_loaded(self, count: int) -> None:
        pass

    def worker_restarted(self, device: str) -> None:
        pass


class WorkerHost(Protocol):
    """Everything a :class:`Worker` needs from its pool, and nothing more."""

    settings: Settings
    store: ModelStore
    observer: Observer

    def next_batch(self) -> list[Job] | None:
        """Block until a batch is due; None once the worker should stop serving."""
        ...

    def keep_loading(self) -> bool:
        """False once loading further models is pointless (the pool is stopping)."""
        ...

    def model_ready(self) -> None:
        """One more model is loaded and warm."""
        ...

    def worker_died(self, worker: Worker) -> None:
        """``worker`` is dying (its jobs are settled): its models no longer count."""
        ...

    def note_device_time(self, seconds_per_job: float) -> None:
        """A batch took this much device time per job (feeds Retry-After)."""
        ...

    def encode(self, lm: LoadedModel, job: Job, symbols: ImageSymbols) -> None:
        """Range-code and package ``job``'s image off the device thread; settles ``job``."""
        ...

    def retry_after(self) -> int:
        """Seconds a client refused now should wait before retrying."""
        ...


# -- failures ----------------------------------------------------------------------------------------
def as_service_error(exc: BaseException) -> BaseException:
    """The error a request that failed with ``exc`` is answered with: TcmErrors pass
    through; memory exhaustion is the request's size (413); the rest is a bug (500, logged)."""
    if isinstance(exc, TcmError):
        return exc
    if is_out_of_memory(exc):
        return ImageTooLargeError("not enough memory on the device to process this image")
    log.error("internal error on the device worker", exc_info=exc)
    return InternalError(f"internal error: {type(exc).__name__}")


def is_fatal(exc: BaseException) -> bool:
    """True for a failure of the worker rather than of its requests: the thread is being
    torn down (any BaseException that is not an Exception: SystemExit, KeyboardInterrupt,
    an injected kill) or the device is in an error state (a CUDA error poisons the context
    for every later request). Such a worker must die and be replaced, not carry on."""
    if not isinstance(exc, Exception):
        return True
    text = str(exc)
    return type(exc).__name__ == "AcceleratorError" or "CUDA error" in text or "device-side assert" in text


# -- start-up ----------------------------------------------------------------------------------------
def warmup_image() -> DecodedImage:
    """A deterministic 256x256 RGB image with some texture (smooth gradients plus noise), so
    that the warm-up runs every stage the way a real photo does."""
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:256, 0:256]
    base = np.stack([xx, yy, (xx + yy) // 2], axis=-1).astype(np.int32)
    pixels = np.clip(base + rng.integers(-20, 21, size=base.shape), 0, 255).astype(np.uint8)
    return DecodedImage(pixels=np.ascontiguousarray(pixels), mode="RGB", source_format="PNG")


@dataclass
class ModelSlot:
    """One quality level on one device."""

    entry: ModelEntry
    device: torch.device
    state: str = "pending"  # pending -> loading -> warming -> ready | failed
    error: str | None = None
    model: LoadedModel | None = None
    load_s: float | None = None
    warmup_s: float | None = None

    def describe(self) -> dict[str, Any]:
        """The slot as ``/v1/info`` reports it."""
        return {
            "device": str(self.device),
            "state": self.state,
            "loaded": self.state == "ready",
            "load_seconds": None if self.load_s is None else round(self.load_s, 3),
            "warmup_seconds": None if self.warmup_s is None else round(self.warmup_s, 3),
            "error": self.error,
        }


def _describe_failure(exc: BaseException) -> str:
    """One line for a failure: a TcmError's own message, else the type and message."""
    if isinstance(exc, TcmError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class Worker(threading.Thread):
    """Owns one device: loads and warms its models, then runs batches until drained."""

    def __init__(
        self, host: WorkerHost, device: torch.device, entries: Sequence[ModelEntry], generation: int = 0
    ) -> None:
        super().__init__(name=f"tcm-worker-{device}" + (f"-r{generation}" if generation else ""), daemon=True)
        self.host = host
        self.device = device
        self.entries = list(entries)
        self.generation = generation  # 0 for the first worker of a device, n for its n-th replacement
        self.slots = {e.quality: ModelSlot(e, device) for e in entries}
        self.failed: str | None = None  # loading failed: not replaced (it would fail again)
        self.died: str | None = None  # died while serving: the supervisor replaces it
        self.current: list[Job] = []  # the jobs this worker holds (settled with 503 if it dies)

    def run(self) -> None:
        """Load, then serve; a loading failure is reported (not replaced), a death while
        serving is reported and replaced by the pool."""
        try:
            set_reproducible_kernels(self.device)
            self._load()
        except BaseException as exc:  # noqa: BLE001 - reported through readiness, never raised
            self._fail_loading(exc)
            return
        try:
            self._serve()
        except BaseException as exc:  # noqa: BLE001 - a dead worker is reported and replaced
            self._die(exc)

    # -- start-up ------------------------------------------------------------------------------------
    def _load(self) -> None:
        """Load and warm every slot's model, unless the pool stops meanwhile."""
        image = warmup_image()
        for slot in self.slots.values():
            if not self.host.keep_loading():
                return  # shutting down: do not hold the exit for models nobody will use
            self._load_slot(slot, image)
            self.host.model_ready()
            log.info(
                "model ready",
                extra={
                    "fields": {
                        "quality": slot.entry.quality,
                        "device": str(self.device),
                        "load_s": round(slot.load_s or 0.0, 3),
                        "warmup_s": round(slot.warmup_s or 0.0, 3),
                    }
                },
            )

    def _load_slot(self, slot: ModelSlot, image: DecodedImage) -> None:
        """Load one model and round-trip ``image`` through it in both bitstreams, so that the
        first request pays no set-up."""
        settings = self.host.settings
        slot.state = "loading"
        t0 = time.monotonic()
        model = load_model(
            self.host.store,
            slot.entry.quality,
            self.device,
            settings.backend,
            settings.onnx_dir,
            SERVICE_V1_RETRY_THREADS,
            settings.tile,
        )
        slot.model = model
        slot.load_s = time.monotonic() - t0
        slot.state = "warming"
        t0 = time.monotonic()
        for portable in (True, False):
            (symbols,) = analyse_images(model, [image], portable)
            comp = package(model, image, model.engine.encode_symbols(symbols))
            out = decompress_blob(comp.blob, lambda header: model, settings.max_pixels)
            if out.pixels.shape != image.pixels.shape:
                raise RuntimeError(f"warm-up round trip of q{slot.entry.quality} returned {out.pixels.shape}")
        self._sync()
        slot.warmup_s = time.monotonic() - t0
        slot.state = "ready"

    def _fail_loading(self, exc: BaseException) -> None:
        """Mark the slots not loaded as failed: readiness reports why, and the supervisor
        does not replace a worker whose models cannot load (it would fail again)."""
        msg = _describe_failure(exc)
        for slot in self.slots.values():
            if slot.state != "ready":
                slot.state, slot.error = "failed", msg
        self.failed = f"loading models on {self.device} failed: {msg}"
        log.error(self.failed)

    # -- serving ---------------------------------------------------------------------------------------
    def _serve(self) -> None:
        """Run batches until the pool drains; a failed batch fails its requests, not the worker."""
        while True:
            jobs = self.host.next_batch()
            if jobs is None:
                return
            self.current = jobs
            for job in jobs:
                self.host.observer.stage("queue", job.timings.get("queue", 0.0))
            try:
                if jobs[0].kind == "compress":
                    self._compress(jobs)
                else:
                    self._decompress(jobs)
            except BaseException as exc:
                if is_fatal(exc):
                    raise
                err = as_service_error(exc)
                for job in jobs:
                    job.settle(error=err)
            self.current = []

    def _die(self, exc: BaseException) -> None:
        """Fail the jobs in hand with a retryable 503 and tell the pool (which replaces us)."""
        self.died = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        log.error(
            "device worker died; replacing it",
            exc_info=exc,
            extra={"fields": {"device": str(self.device), "generation": self.generation, "jobs": len(self.current)}},
        )
        err = WorkerDiedError(
            f"the worker on {self.device} failed while running this request ({self.died}); it is being replaced: retry",
            retry_after=self.host.retry_after(),
        )
        for job in self.current:
            job.settle(error=err)
        self.current = []
        self.host.worker_died(self)

    # -- work ------------------------------------------------------------------------------------------
    def _model(self, quality: int) -> LoadedModel:
        """The loaded model of ``quality`` (only ready workers get batches)."""
        slot = self.slots[quality]
        assert slot.model is not None
        return slot.model

    def _sync(self) -> None:
        """Wait for the device's queued work, so that timings and failures belong to this batch."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _compress(self, jobs: list[Job]) -> None:
        """Transforms on the device; range coding and packaging go to the coder threads."""
        lm = self._model(jobs[0].quality)
        portable = check_bitstream(jobs[0].variant)

        def transforms(batch: list[Job]) -> list[ImageSymbols]:
            deadline = min(j.deadline for j in batch)  # an effort search stops there: nobody waits after it
            return analyse_images(lm, [j.payload for j in batch], portable, jobs[0].effort, deadline)

        for batch, symbols in self._run_batch("compress", jobs, transforms):
            self.current = [j for j in self.current if j not in batch]  # the coder threads own these now
            for job, sym in zip(batch, symbols):
                self.host.encode(lm, job, sym)

    def _decompress(self, jobs: list[Job]) -> None:
        """Range decoding and every network on the device (decoding needs the slices in turn)."""
        lm = self._model(jobs[0].quality)
        for batch, results in self._run_batch("decompress", jobs, lambda b: self._decode(lm, b)):
            for job, res in zip(batch, results):
                job.settle(res)

    def _decode(self, lm: LoadedModel, jobs: list[Job]) -> list[Decompressed]:
        """One blob through :func:`decompress_blob` (which checks its size), several
        through :func:`decompress_batch` (their sizes were checked when they were queued)."""
        if len(jobs) == 1:
            return [decompress_blob(jobs[0].payload, lambda h: _checked(lm, h), self.host.settings.max_pixels)]
        return decompress_batch(lm, [j.payload for j in jobs])

    def _run_batch(
        self, kind: str, jobs: list[Job], work: Callable[[list[Job]], Sequence[R]]
    ) -> Iterator[tuple[list[Job], Sequence[R]]]:
        """Run ``work`` on the batch and yield the jobs with their results, timed and
        reported. If the batch fails (short of a fatal error), redo it one job at a time, so
        that one bad input fails only its own request: a lone job that fails is settled
        with its error here, and the others are yielded one by one."""
        t0 = time.monotonic()
        try:
            results = work(jobs)
            self._sync()
        except BaseException as exc:
            if is_fatal(exc):
                raise
            if len(jobs) == 1:
                jobs[0].settle(error=as_service_error(exc))
                return
            for job in jobs:  # find the culprit: the others must not fail with it
                yield from self._run_batch(kind, [job], work)
            return
        self._report(kind, jobs, time.monotonic() - t0)
        yield jobs, results

    def _report(self, kind: str, jobs: list[Job], seconds: float) -> None:
        """Record a batch's device time on its jobs, the observer and the Retry-After estimate."""
        obs = self.host.observer
        obs.stage("transform", seconds)
        obs.batch(kind, len(jobs))
        self.host.note_device_time(seconds / len(jobs))
        for job in jobs:
            job.timings["transform"] = seconds
            job.batch_size = len(jobs)


def _checked(lm: LoadedModel, header: TcmHeader) -> LoadedModel:
    """A resolver for :func:`decompress_blob` that has one model and checks the blob against it."""
    check_identity(lm, header)
    return lm
