"""The worker pool: one thread per device, dynamic batching, range coding on CPU threads.

::

    request handlers --put--> Batcher --take--> Worker(device) --symbols--> coder threads
        (asyncio)               (bounded,        transforms +           range coding +
                                 grouped)        entropy params         container -> Future

* One :class:`~tcm_serve.runtime.worker.Worker` thread per device (every CUDA device, or
  the CPU). Each holds the models of all served quality levels on its device, loaded and
  warmed up (a compress and a decompress of a synthetic image) before it takes any work.
  Only one thread ever runs device work on a device, which is what
  :class:`~tcm_serve.codec.engine.Engine` requires. Workers see the pool only through
  :class:`~tcm_serve.runtime.worker.WorkerHost`, which :class:`WorkerPool` implements.
* Compression: the worker runs :func:`~tcm_serve.codec.pipeline.analyse_images` on the batch
  (``g_a`` batched; the entropy-parameter path per image, as the engine always does), then
  hands each image's symbols to the coder thread pool and takes the next batch at once, so
  range coding (C, GIL released) overlaps the next batch's transforms.
* Decompression: range decoding is interleaved with the slice networks (each slice's
  indexes depend on the previous slices), so it runs on the worker. Blobs of the same
  padded size may share one batched synthesis transform (``g_s``); the entropy-parameter
  path runs per image.
* A batch that fails (e.g. one corrupt stream) is redone one job at a time, so a bad input
  fails only its own request.
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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..codec.container import TcmHeader, check_bitstream
from ..codec.engine import ImageSymbols
from ..codec.pipeline import (
    Compressed,
    LoadedModel,
    check_decode_size,
    check_effort_allowed,
    check_made_by,
    image_geometry,
    package,
)
from ..config import Settings
from ..devices import resolve_devices
from ..errors import ConfigError, ModelNotFoundError
from ..imageio import DecodedImage
from ..store import ModelEntry, ModelStore
from .batcher import Batcher, Job, Slot
from .errors import BadParameterError, NotReadyError, ShuttingDownError, WorkerDiedError
from .worker import NullObserver, Observer, Worker, as_service_error

__all__ = ["WorkerPool", "Observer", "NullObserver"]

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


class WorkerPool:
    """Loads the served models on every device and runs requests on them."""

    observer: Observer  # see set_observer

    def __init__(self, settings: Settings, store: ModelStore | None = None, observer: Observer | None = None) -> None:
        from ..store import resolve_store

        self.settings = settings
        self.store = store or ModelStore(resolve_store(settings.model_store))
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
            self.max_batch_size = (
                DEFAULT_BATCH_CPU if all(d.type == "cpu" for d in self.devices) else DEFAULT_BATCH_CUDA
            )
        self.batcher = Batcher(settings.max_queue, self.max_batch_size, settings.max_batch_delay_s)
        self.set_observer(observer or NullObserver())
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

    def set_observer(self, observer: Observer) -> None:
        """Report to ``observer`` from now on: stage timings, batch sizes, models loaded,
        restarts and the queue depth (an app given a ready-made pool attaches its metrics)."""
        self.observer = observer
        self.batcher.set_depth_listener(observer.queue_depth)

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

    # -- what the workers need (WorkerHost) --------------------------------------------------
    def next_batch(self) -> list[Job] | None:
        """A worker's next batch; None once drained after shutdown, or stopped."""
        return self.batcher.take(self._stop)

    def keep_loading(self) -> bool:
        """False once stopped, or closed with an empty queue: a worker still loading can stop
        (shutdown would otherwise wait its whole grace period for it). Queued jobs (a
        replacement loading while requests wait) keep it loading so that they are served."""
        nothing_left_to_serve = self.batcher.closed and self.batcher.depth == 0
        return not (self._stop.is_set() or nothing_left_to_serve)

    def model_ready(self) -> None:
        """Count one more loaded, warm model (the ``tcm_models_loaded`` gauge)."""
        with self._lock:
            self._loaded += 1
            self.observer.models_loaded(self._loaded)

    def note_device_time(self, seconds_per_job: float) -> None:
        """Fold a batch's device time per job into the Retry-After estimate (an EWMA)."""
        self._device_s_per_job = 0.8 * self._device_s_per_job + 0.2 * seconds_per_job

    def encode(self, lm: LoadedModel, job: Job, symbols: ImageSymbols) -> None:
        """Range-code and package ``job``'s image on a coder thread, so that the worker takes
        its next batch at once; ``job`` settles there."""
        self.coder.submit(self._encode, lm, job, symbols)

    def _encode(self, lm: LoadedModel, job: Job, symbols: ImageSymbols) -> None:
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
            job.settle(error=as_service_error(exc))

    # -- dead workers ----------------------------------------------------------------------------
    def worker_died(self, worker: Worker) -> None:
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
            self.worker_died(dead)
        err = WorkerDiedError(f"the worker on {device} died ({dead.died}); it is being replaced: retry")
        for job in dead.current:  # normally already settled by Worker._die; settle is idempotent
            job.settle(error=err)
        self.observer.worker_restarted(device)
        log.warning(
            "worker replaced", extra={"fields": {"device": device, "generation": new.generation, "cause": dead.died}}
        )

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

    # -- requests --------------------------------------------------------------------------
    def check_quality(self, quality: int | None) -> int:
        q = self.default_quality if quality is None else quality
        if q not in self.qualities:
            raise BadParameterError(f"quality {q} is not served (available: {', '.join(map(str, self.qualities))})")
        return q

    def admit(self) -> None:
        """Raise unless the pool takes new work now (ready, not shutting down)."""
        if self.batcher.closed:
            raise ShuttingDownError("the service is shutting down")
        if not self.ready:
            raise NotReadyError(f"not ready: {self.not_ready_reason()}")

    def reserve(self) -> Slot:
        """Hold a queue place before reading and decoding a request's input (429 if none)."""
        self.admit()
        return self.batcher.reserve(self.retry_after)

    def _entry(self, quality: int) -> ModelEntry | None:
        """The served model of ``quality``, or ``None``."""
        return next((e for e in self.entries if e.quality == quality), None)

    def check_effort(self, effort: int) -> int:
        """``effort`` if this service takes it (``max_effort``), else 422."""
        if not 0 <= effort <= self.settings.max_effort:
            raise BadParameterError(
                f"effort {effort} is above this service's limit of {self.settings.max_effort} (TCM_MAX_EFFORT)"
            )
        return effort

    def submit_compress(
        self,
        image: DecodedImage,
        quality: int,
        deadline: float,
        slot: Slot | None = None,
        bitstream: str | None = None,
        effort: int = 0,
    ) -> Job:
        """Queue one image (in ``slot`` if given) for a ``bitstream`` blob (default: the
        service's) with encoder ``effort``; ``job.future`` resolves to a :class:`Compressed`.
        An effort the model or the image's size cannot take is refused here, before it
        queues (422 / 413)."""
        bitstream = bitstream or self.settings.bitstream
        check_bitstream(bitstream)
        entry = self._entry(quality)
        if entry is None:  # check_quality refuses these before a route gets here
            raise BadParameterError(f"quality {quality} is not served")
        try:
            check_effort_allowed(entry, image, self.check_effort(effort))
        except ConfigError as exc:  # the model cannot be searched for: the request asked for it
            raise BadParameterError(str(exc)) from None
        self.admit()
        job = Job(
            "compress", quality, image_geometry(image).padded_shape, image, deadline, variant=bitstream, effort=effort
        )
        self.batcher.put(job, self.retry_after, slot)
        return job

    def check_header(self, header: TcmHeader) -> None:
        """Refuse a blob made by a model this service does not hold, or too large to decode."""
        entry = self._entry(header.quality)
        if entry is None:
            raise ModelNotFoundError(
                f"blob needs quality {header.quality}, which is not served "
                f"(available: {', '.join(map(str, self.qualities))})"
            )
        check_made_by(entry, header)
        check_decode_size(header, self.settings.max_pixels)

    def submit_decompress(self, blob: bytes, header: TcmHeader, deadline: float, slot: Slot | None = None) -> Job:
        """Queue one blob (its header from ``unpack``; in ``slot`` if given); resolves to
        :class:`~tcm_serve.codec.pipeline.Decompressed`."""
        self.check_header(header)
        self.admit()
        job = Job("decompress", header.quality, header.geometry.padded_shape, blob, deadline)
        self.batcher.put(job, self.retry_after, slot)
        return job

    def cancel(self, job: Job) -> None:
        """The client stopped waiting: drop the job if it is still queued."""
        self.batcher.discard(job)
        job.future.cancel()
