"""The worker pool: one thread per device, dynamic batching, range coding on CPU threads.

::

    request handlers --put--> Batcher --take--> Worker(device) --symbols--> coder threads
        (asyncio)               (bounded,        transforms +           range coding +
                                 grouped)        entropy params         container -> Future

* One :class:`Worker` thread per device (every CUDA device, or the CPU). Each holds the
  models of all served quality levels on its device, loaded and warmed up (a compress and
  a decompress of a synthetic image) before it takes any work. Only one thread ever runs
  device work on a device, which is what :class:`~tcm_serve.codec.engine.Engine` requires.
* Compression: the worker runs :func:`~tcm_serve.codec.pipeline.analyse_images` on the batch
  (``g_a`` batched; the entropy-parameter path per image, as the engine always does), then
  hands each image's symbols to the coder thread pool and takes the next batch at once, so
  range coding (C, GIL released) overlaps the next batch's transforms.
* Decompression: range decoding is interleaved with the slice networks (each slice's
  indexes depend on the previous slices), so it runs on the worker. Blobs of the same
  padded size may share one batched synthesis transform (``g_s``); the entropy-parameter
  path runs per image. A batch that fails (e.g. one corrupt stream) is redone one blob at
  a time, so a bad blob fails only its own request.
* Worker death: a fault that leaves the worker itself suspect (its thread is being torn
  down -- SystemExit, KeyboardInterrupt, an injected kill -- or the device reports an error
  state) ends the worker. The requests it held get a clean 503 ``worker_failed`` with
  ``Retry-After``; queued requests stay queued. A supervisor thread replaces a dead worker
  with a fresh one that reloads and re-warms its models (readiness is 503 meanwhile), at
  most :data:`MAX_RESTARTS` times per :data:`RESTART_WINDOW_S`; past that the pool reports
  itself failed (liveness 503) so that the orchestrator restarts the process.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..codec.container import check_bitstream, unpack
from ..codec.engine import SERVICE_V1_RETRY_THREADS
from ..codec.padding import crop, padded_size, tensor_to_pixels
from ..codec.pipeline import (
    Compressed,
    Decompressed,
    LoadedModel,
    analyse_images,
    check_decode_size,
    check_identity,
    coded_image,
    decompress_blob,
    load_model,
    package,
    resolve_device,
)
from ..config import Settings
from ..errors import ConfigError, ImageTooLargeError, ModelNotFoundError, TcmError, is_out_of_memory
from ..imageio import DecodedImage
from ..store import ModelEntry, ModelStore
from .batcher import Batcher, Job, Slot
from .errors import BadParameterError, InternalError, NotReadyError, ShuttingDownError, WorkerDiedError

log = logging.getLogger("tcm.runtime")

#: Default largest batch when none is configured: batching g_a on a CPU is slower than one
#: image at a time (docs/codec.md: 0.57x), while GPUs gain from it.
DEFAULT_BATCH_CPU = 1
DEFAULT_BATCH_CUDA = 8

#: A worker that dies is replaced at most this many times per window; a worker that keeps
#: dying is a process-level problem (liveness turns 503, the orchestrator restarts us).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 300.0
#: How often the supervisor looks for dead workers (a dying worker also wakes it at once).
SUPERVISE_INTERVAL_S = 0.5


class Observer(Protocol):
    """What the pool reports (the API's Prometheus metrics implement it)."""

    def stage(self, stage: str, seconds: float) -> None: ...
    def batch(self, kind: str, size: int) -> None: ...
    def queue_depth(self, depth: int) -> None: ...
    def models_loaded(self, count: int) -> None: ...
    def worker_restarted(self, device: str) -> None: ...


class NullObserver:
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


def cuda_unavailable_reason() -> str:
    """Why torch sees no CUDA device, in one line (a CPU-only torch build, a driver too old
    for it, no device visible to the process, ...)."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    try:
        torch.cuda.init()
    except Exception as exc:  # torch words the driver and device problems itself
        return " ".join(str(exc).split())[:300] or type(exc).__name__
    if torch.cuda.device_count() == 0:
        return "no CUDA device is visible to this process (the pod's GPU request, CUDA_VISIBLE_DEVICES)"
    return "torch.cuda.is_available() is false"


def resolve_devices(spec: str) -> list[torch.device]:
    """``auto`` (every CUDA device, else the CPU), ``cpu``, ``cuda`` (every CUDA device) or
    a comma-separated list such as ``cuda:0,cuda:1``.

    ``cuda`` without a usable GPU is a :class:`ConfigError` that says why, so a GPU
    deployment fails at start instead of serving at CPU speed; ``auto`` logs what it chose
    and, when that is the CPU, why."""
    parts = [p for p in spec.replace(" ", "").lower().split(",") if p] or ["auto"]
    try:
        if parts == ["auto"]:
            if torch.cuda.is_available():
                parts = ["cuda"]
                log.info(f"devices auto: {torch.cuda.device_count()} CUDA device(s), serving on the GPU")
            else:
                parts = ["cpu"]
                log.info(
                    f"devices auto: serving on the CPU because {cuda_unavailable_reason()} "
                    "(set TCM_DEVICES=cuda where a GPU is expected, to fail instead)"
                )
        if parts == ["cuda"]:
            if not torch.cuda.is_available():
                raise ConfigError(f"devices 'cuda' requested but CUDA is not available: {cuda_unavailable_reason()}")
            parts = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        devices = [resolve_device(p) for p in parts]
    except ModelNotFoundError as exc:  # resolve_device's way of saying "no such device"
        raise ConfigError(str(exc)) from None
    if len(set(devices)) != len(devices):
        raise ConfigError(f"device list {spec!r} names a device twice")
    return devices


def _warmup_image() -> DecodedImage:
    """A deterministic 256x256 RGB image with some texture (smooth gradients plus noise)."""
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
        return {
            "device": str(self.device),
            "state": self.state,
            "loaded": self.state == "ready",
            "load_seconds": None if self.load_s is None else round(self.load_s, 3),
            "warmup_seconds": None if self.warmup_s is None else round(self.warmup_s, 3),
            "error": self.error,
        }


def _as_service_error(exc: BaseException) -> BaseException:
    """TcmErrors pass through; memory exhaustion is the request's size; the rest is a bug."""
    if isinstance(exc, TcmError):
        return exc
    if is_out_of_memory(exc):
        return ImageTooLargeError("not enough memory on the device to process this image")
    log.error("internal error on the device worker", exc_info=exc)
    return InternalError(f"internal error: {type(exc).__name__}")


def _is_fatal(exc: BaseException) -> bool:
    """True for a failure of the worker rather than of its requests: the thread is being
    torn down (any BaseException that is not an Exception: SystemExit, KeyboardInterrupt,
    an injected kill) or the device is in an error state (a CUDA error poisons the context
    for every later request). Such a worker must die and be replaced, not carry on."""
    if not isinstance(exc, Exception):
        return True
    text = str(exc)
    return type(exc).__name__ == "AcceleratorError" or "CUDA error" in text or "device-side assert" in text


class Worker(threading.Thread):
    """Owns one device: loads and warms its models, then runs batches until drained."""

    def __init__(
        self, pool: "WorkerPool", device: torch.device, entries: Sequence[ModelEntry], generation: int = 0
    ) -> None:
        super().__init__(name=f"tcm-worker-{device}" + (f"-r{generation}" if generation else ""), daemon=True)
        self.pool = pool
        self.device = device
        self.entries = list(entries)
        self.generation = generation  # 0 for the first worker of a device, n for its n-th replacement
        self.slots = {e.quality: ModelSlot(e, device) for e in entries}
        self.failed: str | None = None  # loading failed: not replaced (it would fail again)
        self.died: str | None = None  # died while serving: the supervisor replaces it
        self.current: list[Job] = []  # the jobs this worker holds (settled with 503 if it dies)

    # -- start-up ------------------------------------------------------------------------
    def _load(self) -> None:
        image = _warmup_image()
        for slot in self.slots.values():
            if self.pool._stop.is_set() or self.pool._nothing_left_to_serve():
                return  # shutting down: do not hold the exit for models nobody will use
            slot.state = "loading"
            t0 = time.monotonic()
            slot.model = load_model(
                self.pool.store, slot.entry.quality, self.device, self.pool.settings.backend,
                self.pool.settings.onnx_dir, SERVICE_V1_RETRY_THREADS,
            )
            slot.load_s = time.monotonic() - t0
            slot.state = "warming"
            t0 = time.monotonic()
            for portable in (True, False):  # both bitstreams: the first request pays no set-up
                (symbols,) = analyse_images(slot.model, [image], portable)
                comp = package(slot.model, image, slot.model.engine.encode_symbols(symbols))
                out = decompress_blob(comp.blob, lambda h, lm=slot.model: lm, self.pool.settings.max_pixels)
                if out.pixels.shape != image.pixels.shape:
                    raise RuntimeError(f"warm-up round trip of q{slot.entry.quality} returned {out.pixels.shape}")
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            slot.warmup_s = time.monotonic() - t0
            slot.state = "ready"
            self.pool._model_ready()
            log.info(
                "model ready",
                extra={"fields": {"quality": slot.entry.quality, "device": str(self.device),
                                  "load_s": round(slot.load_s, 3), "warmup_s": round(slot.warmup_s, 3)}},
            )

    def run(self) -> None:
        try:
            self._load()
        except BaseException as exc:  # noqa: BLE001 - reported through readiness, never raised
            msg = f"{type(exc).__name__}: {exc}" if not isinstance(exc, TcmError) else str(exc)
            for slot in self.slots.values():
                if slot.state != "ready":
                    slot.state, slot.error = "failed", msg
            self.failed = f"loading models on {self.device} failed: {msg}"
            log.error(self.failed)
            return
        try:
            self._serve()
        except BaseException as exc:  # noqa: BLE001 - a dead worker is reported and replaced
            self._die(exc)

    def _serve(self) -> None:
        batcher = self.pool.batcher
        while True:
            jobs = batcher.take(self.pool._stop)
            if jobs is None:
                return
            self.current = jobs
            for job in jobs:
                self.pool.observer.stage("queue", job.timings.get("queue", 0.0))
            try:
                if jobs[0].kind == "compress":
                    self._compress(jobs)
                else:
                    self._decompress(jobs)
            except BaseException as exc:  # noqa: BLE001 - one bad batch must not kill the worker
                if _is_fatal(exc):
                    raise
                err = _as_service_error(exc)
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
            f"the worker on {self.device} failed while running this request ({self.died}); it is being "
            "replaced: retry",
            retry_after=self.pool.retry_after(),
        )
        for job in self.current:
            job.settle(error=err)
        self.current = []
        self.pool._worker_died(self)

    # -- work ------------------------------------------------------------------------------
    def _model(self, quality: int) -> LoadedModel:
        slot = self.slots[quality]
        assert slot.model is not None
        return slot.model

    def _compress(self, jobs: list[Job]) -> None:
        lm = self._model(jobs[0].quality)
        t0 = time.monotonic()
        try:
            symbols = analyse_images(lm, [j.payload for j in jobs], check_bitstream(jobs[0].variant))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except BaseException as exc:  # noqa: BLE001
            if _is_fatal(exc):
                raise
            if len(jobs) > 1:  # find the culprit: the others must not fail with it
                for job in jobs:
                    self._compress([job])
                return
            jobs[0].settle(error=_as_service_error(exc))
            return
        dt = time.monotonic() - t0
        obs = self.pool.observer
        obs.stage("transform", dt)
        obs.batch("compress", len(jobs))
        self.pool._note_device_time(dt / len(jobs))
        self.current = []  # from here on the coder threads own these jobs
        for job, sym in zip(jobs, symbols):
            job.timings["transform"] = dt
            job.batch_size = len(jobs)
            self.pool.coder.submit(self.pool._encode, lm, job, sym)

    def _decompress(self, jobs: list[Job]) -> None:
        lm = self._model(jobs[0].quality)
        t0 = time.monotonic()
        try:
            if len(jobs) == 1:
                results = [decompress_blob(jobs[0].payload, lambda h: _checked(lm, h), self.pool.settings.max_pixels)]
            else:
                results = decompress_batch(lm, [j.payload for j in jobs])
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except BaseException as exc:  # noqa: BLE001
            if _is_fatal(exc):
                raise
            if len(jobs) > 1:
                for job in jobs:
                    self._decompress([job])
                return
            jobs[0].settle(error=_as_service_error(exc))
            return
        dt = time.monotonic() - t0
        obs = self.pool.observer
        obs.stage("transform", dt)
        obs.batch("decompress", len(jobs))
        self.pool._note_device_time(dt / len(jobs))
        for job, res in zip(jobs, results):
            job.timings["transform"] = dt
            job.batch_size = len(jobs)
            job.settle(res)


def _checked(lm: LoadedModel, header) -> LoadedModel:
    check_identity(lm, header)
    return lm


def decompress_batch(lm: LoadedModel, blobs: Sequence[bytes]) -> list[Decompressed]:
    """Decode blobs of one model and one padded size together: the entropy-parameter path
    and range decoding per blob (inside ``Engine.decompress``), the synthesis transform on
    the batch. Equals :func:`decompress_blob` per blob (tests/test_batching.py)."""
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


class WorkerPool:
    """Loads the served models on every device and runs requests on them."""

    def __init__(self, settings: Settings, store: ModelStore | None = None, observer: Observer | None = None) -> None:
        from ..store import resolve_store

        self.settings = settings
        self.store = store or ModelStore(resolve_store(settings.store))
        self.observer: Observer = observer or NullObserver()
        entries = {e.quality: e for e in self.store.entries()}
        if not entries:
            raise ConfigError(f"model store {self.store.root} has no models (add one with: tcm models import)")
        wanted = settings.qualities or sorted(entries)
        missing = [q for q in wanted if q not in entries]
        if missing:
            raise ConfigError(
                f"quality {', '.join(map(str, missing))} not in the model store {self.store.root} "
                f"(available: {', '.join(map(str, sorted(entries)))})"
            )
        self.entries = [entries[q] for q in wanted]
        self.qualities = [e.quality for e in self.entries]
        self.default_quality = settings.default_quality or max(self.qualities)
        if self.default_quality not in self.qualities:
            raise ConfigError(f"default quality {self.default_quality} is not served (serving {self.qualities})")
        self.devices = resolve_devices(settings.devices)
        if settings.max_batch_size is not None:
            self.max_batch_size = settings.max_batch_size
        else:
            self.max_batch_size = DEFAULT_BATCH_CPU if all(d.type == "cpu" for d in self.devices) else DEFAULT_BATCH_CUDA
        self.batcher = Batcher(
            settings.max_queue, self.max_batch_size, settings.max_batch_delay_s, on_depth=self.observer.queue_depth
        )
        self.coder = ThreadPoolExecutor(settings.coder_threads, thread_name_prefix="tcm-coder")
        self.workers = [Worker(self, d, self.entries) for d in self.devices]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._loaded = 0
        self._device_s_per_job = 0.25  # EWMA, seeds the Retry-After estimate
        self._started = False
        self._wake = threading.Event()  # a worker died: the supervisor looks at once
        self._supervisor = threading.Thread(target=self._supervise, name="tcm-supervisor", daemon=True)
        self._restarts: dict[str, deque[float]] = {}  # device -> monotonic times of recent replacements
        self.restarts_total = 0
        self._gave_up: str | None = None

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers (they load and warm up their models in the background)."""
        if not self._started:
            self._started = True
            for w in self.workers:
                w.start()
            self._supervisor.start()

    def verify_models(self) -> None:
        """Check every served weights file (present, SHA-256, fits its architecture) before
        serving: :class:`~tcm_serve.errors.StoreError` names the file and the mismatch."""
        from .preflight import verify_entries

        verify_entries(self.store, self.entries)

    def wait_ready(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.ready:
            if self.failed or (end is not None and time.monotonic() > end):
                return False
            time.sleep(0.02)
        return True

    def shutdown(self, grace_s: float | None = None) -> bool:
        """Refuse new work, let the workers finish what is queued (within ``grace_s``), then
        stop. Returns True when everything finished in time."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        end = time.monotonic() + grace
        with self._lock:  # no worker is replaced after this point
            self.batcher.close()
            workers = list(self.workers)
        self._wake.set()
        clean = True
        for w in workers:
            if w.is_alive():
                w.join(max(0.0, end - time.monotonic()))
                clean = clean and not w.is_alive()
        self._stop.set()  # workers still loading or past the grace period stop at the next batch
        self.coder.shutdown(wait=clean, cancel_futures=not clean)
        return clean

    def _nothing_left_to_serve(self) -> bool:
        """Closed with an empty queue: a worker still loading can stop (shutdown would
        otherwise wait its whole grace period for it). Queued jobs (a replacement loading
        while requests wait) keep it loading so that they are served."""
        return self.batcher.closed and self.batcher.depth == 0

    def _model_ready(self) -> None:
        with self._lock:
            self._loaded += 1
            self.observer.models_loaded(self._loaded)

    # -- dead workers ----------------------------------------------------------------------------
    def _worker_died(self, worker: Worker) -> None:
        """Called by a dying worker (after it failed its jobs): its models no longer count."""
        with self._lock:
            self._loaded -= sum(1 for s in worker.slots.values() if s.state == "ready")
            self.observer.models_loaded(self._loaded)
        self._wake.set()

    def _supervise(self) -> None:
        """Replace workers that died while serving, until shutdown."""
        while not self._stop.is_set() and not self.batcher.closed:
            self._wake.wait(SUPERVISE_INTERVAL_S)
            self._wake.clear()
            for i, w in enumerate(list(self.workers)):
                if w.ident is not None and not w.is_alive() and not w.failed:
                    self._replace(i, w)

    def _replace(self, index: int, dead: Worker) -> None:
        device = str(dead.device)
        now = time.monotonic()
        with self._lock:
            if self.batcher.closed or self._stop.is_set() or self.workers[index] is not dead:
                return
            recent = self._restarts.setdefault(device, deque())
            while recent and now - recent[0] > RESTART_WINDOW_S:
                recent.popleft()
            if len(recent) >= MAX_RESTARTS:
                if self._gave_up is None:
                    self._gave_up = (
                        f"the worker for {device} died {len(recent) + 1} times within {RESTART_WINDOW_S:g} s "
                        f"(last: {dead.died or 'thread ended'}); not replacing it again"
                    )
                    log.error(self._gave_up)
                return
            recent.append(now)
            self.restarts_total += 1
            new = Worker(self, dead.device, dead.entries, generation=dead.generation + 1)
            new.start()  # before publishing it: readiness must never see a replacement that is not yet running
            self.workers[index] = new
        if not dead.died:  # the thread ended without passing through Worker._die
            dead.died = "the worker thread ended unexpectedly"
            self._worker_died(dead)
        err = WorkerDiedError(f"the worker on {device} died ({dead.died}); it is being replaced: retry", retry_after=2)
        for job in dead.current:  # normally already settled by Worker._die; settle is idempotent
            job.settle(error=err)
        self.observer.worker_restarted(device)
        log.warning("worker replaced", extra={"fields": {"device": device, "generation": new.generation,
                                                         "cause": dead.died}})

    # -- state -----------------------------------------------------------------------------------
    @property
    def failed(self) -> str | None:
        for w in self.workers:
            if w.failed:
                return w.failed
        return self._gave_up

    @property
    def ready(self) -> bool:
        return (
            self._started
            and not self.batcher.closed
            and all(w.is_alive() for w in self.workers)
            and all(s.state == "ready" for w in self.workers for s in w.slots.values())
        )

    def not_ready_reason(self) -> str | None:
        if self.batcher.closed:
            return "shutting down"
        if not self._started:
            return "worker pool not started"
        if self.failed:
            return self.failed
        for w in self.workers:
            if not w.is_alive():
                if w.died:  # the supervisor has been woken and replaces it (or gives up: self.failed above)
                    return f"worker for {w.device} died ({w.died}); a replacement is starting"
                return f"worker for {w.device} is not running"
        pending = [(w, s) for w in self.workers for s in w.slots.values() if s.state != "ready"]
        if pending:
            total = sum(len(w.slots) for w in self.workers)
            w, slot = pending[0]
            why = f"; replacing a worker that died (restart {w.generation})" if w.generation else ""
            return f"{slot.state} model q{slot.entry.quality} on {w.device} ({total - len(pending)}/{total} models ready{why})"
        return None

    def alive_problem(self) -> str | None:
        """Liveness: None while every worker thread runs (or finished loading cleanly)."""
        if self.failed:
            return self.failed
        if self._started and not self.batcher.closed and not self._supervisor.is_alive():
            dead = [str(w.device) for w in self.workers if not w.is_alive()]
            if dead:  # only while nothing replaces them: a replacement in progress is not a liveness failure
                return f"worker thread(s) for {', '.join(dead)} died"
        return None

    def models_info(self) -> list[dict[str, Any]]:
        out = []
        for e in self.entries:
            out.append(
                {
                    "quality": e.quality,
                    "default": e.quality == self.default_quality,
                    "preset": e.preset,
                    "config": e.arch.to_dict(),
                    "config_hash": e.arch.config_hash().hex(),
                    "lambda": e.lmbda,
                    "metric": e.metric,
                    "weights_sha256": e.sha256,
                    "weights_hash": e.weights_hash.hex(),
                    "source": e.source,
                    "devices": [w.slots[e.quality].describe() for w in self.workers],
                    "loaded": all(w.slots[e.quality].state == "ready" for w in self.workers),
                }
            )
        return out

    def retry_after(self, depth: int | None = None) -> int:
        """Seconds until a queue slot is likely free: the queue's work over the workers."""
        d = self.batcher.depth if depth is None else depth
        est = (d + 1) * self._device_s_per_job / max(1, len(self.workers))
        return int(min(60, max(1, math.ceil(est))))

    def _note_device_time(self, seconds_per_job: float) -> None:
        self._device_s_per_job = 0.8 * self._device_s_per_job + 0.2 * seconds_per_job

    # -- requests --------------------------------------------------------------------------
    def check_quality(self, quality: int | None) -> int:
        q = self.default_quality if quality is None else quality
        if q not in self.qualities:
            raise BadParameterError(f"quality {q} is not served (available: {', '.join(map(str, self.qualities))})")
        return q

    def admit(self) -> None:
        """Raise unless the pool takes new work now (ready, not shutting down)."""
        if self.batcher.closed:
            raise ShuttingDownError("the service is shutting down", retry_after=1)
        if not self.ready:
            raise NotReadyError(f"not ready: {self.not_ready_reason()}", retry_after=2)

    def reserve(self) -> Slot:
        """Hold a queue place before reading and decoding a request's input (429 if none)."""
        self.admit()
        return self.batcher.reserve(self.retry_after)

    def submit_compress(
        self, image: DecodedImage, quality: int, deadline: float, slot: Slot | None = None, bitstream: str | None = None
    ) -> Job:
        """Queue one image (in ``slot`` if given) for a ``bitstream`` blob (default: the
        service's); ``job.future`` resolves to a :class:`Compressed`."""
        bitstream = bitstream or self.settings.bitstream
        check_bitstream(bitstream)
        self.admit()
        size = (padded_size(image.height), padded_size(image.width))
        job = Job("compress", quality, size, image, deadline, variant=bitstream)
        self.batcher.put(job, self.retry_after, slot)
        return job

    def check_header(self, header) -> None:
        """Refuse a blob made by a model this service does not hold, or too large to decode."""
        entry = next((e for e in self.entries if e.quality == header.quality), None)
        if entry is None:
            raise ModelNotFoundError(
                f"blob needs quality {header.quality}, which is not served (available: {', '.join(map(str, self.qualities))})"
            )
        if header.config_hash != entry.arch.config_hash() or header.weights_hash != entry.weights_hash:
            raise ModelNotFoundError(
                f"blob was made by model q{header.quality} config {header.config_hash.hex()} weights "
                f"{header.weights_hash.hex()}, but the served q{entry.quality} is config "
                f"{entry.arch.config_hash().hex()} weights {entry.weights_hash.hex()}"
            )
        check_decode_size(header, self.settings.max_pixels)

    def submit_decompress(self, blob: bytes, header, deadline: float, slot: Slot | None = None) -> Job:
        """Queue one blob (its header from ``unpack``; in ``slot`` if given); resolves to
        :class:`Decompressed`."""
        self.check_header(header)
        self.admit()
        pw, ph = header.padded_size
        job = Job("decompress", header.quality, (ph, pw), blob, deadline)
        self.batcher.put(job, self.retry_after, slot)
        return job

    def cancel(self, job: Job) -> None:
        """The client stopped waiting: drop the job if it is still queued."""
        self.batcher.discard(job)
        job.future.cancel()

    def _encode(self, lm: LoadedModel, job: Job, symbols) -> None:
        """Coder thread: range-code and package one image."""
        if job.done:
            return
        try:
            t0 = time.monotonic()
            coded = lm.engine.encode_symbols(symbols)
            result: Compressed = package(lm, job.payload, coded)
            dt = time.monotonic() - t0
            job.timings["entropy_coding"] = dt
            self.observer.stage("entropy_coding", dt)
            job.settle(result)
        except BaseException as exc:  # noqa: BLE001
            job.settle(error=_as_service_error(exc))

    # -- direct use (tests, benchmarks) ---------------------------------------------------------
    def compress_sync(
        self, image: DecodedImage, quality: int | None = None, timeout: float | None = None, bitstream: str | None = None
    ) -> Compressed:
        timeout = self.settings.request_timeout_s if timeout is None else timeout
        job = self.submit_compress(image, self.check_quality(quality), time.monotonic() + timeout, bitstream=bitstream)
        return job.future.result(timeout)

    def decompress_sync(self, blob: bytes, timeout: float | None = None) -> Decompressed:
        timeout = self.settings.request_timeout_s if timeout is None else timeout
        header = unpack(blob).header
        job = self.submit_decompress(blob, header, time.monotonic() + timeout)
        return job.future.result(timeout)
