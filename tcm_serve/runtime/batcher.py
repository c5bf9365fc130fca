"""Jobs and the dynamic batcher that hands them to the device workers.

A :class:`Job` is one request's device work. Jobs are grouped by :attr:`Job.key`
(kind, quality, padded size, variant): only jobs with the same key can share a batch, because a batch
is one tensor. :meth:`Batcher.take` gives a worker the group whose oldest job has waited
longest, as soon as that group holds ``max_batch_size`` jobs or its oldest job has waited
``max_batch_delay`` seconds, whichever comes first. So a lone request waits at most the
delay, a busy service fills batches without waiting, and no group starves (oldest first).

The queue is bounded: ``max_queue`` counts the jobs waiting plus the slots reserved by
requests still reading or decoding their input (:meth:`Batcher.reserve`); jobs a worker has
taken no longer count. Reserving before the expensive input work is what makes a refusal
under a burst cheap: the 429 comes before the upload is decoded, not after. Cancelled jobs
(their client gave up or their deadline passed) leave the queue at once.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from .errors import DeadlineExceededError, QueueFullError, ShuttingDownError

_ids = itertools.count(1)


def _ignore_depth(depth: int) -> None:
    """The queue-depth listener of a batcher nobody watches."""


@dataclass(eq=False)
class Job:
    kind: str  # "compress" or "decompress"
    quality: int
    size: tuple[int, int]  # padded (height, width)
    payload: Any  # DecodedImage (compress) or bytes (decompress)
    deadline: float  # time.monotonic() after which the result is useless
    future: Future = field(default_factory=Future)
    id: int = field(default_factory=lambda: next(_ids))
    enqueued: float = 0.0  # time.monotonic() when queued
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, filled by the pool
    batch_size: int = 0
    #: What else a batch must share: for compress, the bitstream ("portable" or "exact").
    variant: str = ""
    #: Compress only: the encoder effort (tcm_serve/codec/effort.py); a batch shares one.
    effort: int = 0

    @property
    def key(self) -> tuple[str, int, tuple[int, int], str, int]:
        return (self.kind, self.quality, self.size, self.variant, self.effort)

    def settle(self, result: Any = None, error: BaseException | None = None) -> bool:
        """Set the result or error unless already settled (cancelled, timed out)."""
        try:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
            return True
        except InvalidStateError:
            return False

    @property
    def done(self) -> bool:
        return self.future.done()


class Slot:
    """A place in the queue held by a request that is still preparing its job.

    :meth:`Batcher.put` consumes it; :meth:`release` gives it back (idempotent), so a
    request that fails on bad input never leaks a slot."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher: Batcher | None = batcher

    @property
    def held(self) -> bool:
        return self._batcher is not None

    def release(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher._unreserve()

    def _consume(self) -> bool:
        """Hand the place to a job: True if it was still held."""
        held, self._batcher = self._batcher is not None, None
        return held

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Batcher:
    """Thread-safe grouping queue shared by all device workers."""

    def __init__(
        self,
        max_queue: int,
        max_batch_size: int | Callable[[str], int],
        max_batch_delay_s: float,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self.max_queue = max_queue
        self._batch_limit = max_batch_size if callable(max_batch_size) else (lambda kind, n=max_batch_size: n)
        self.delay = max_batch_delay_s
        self._cond = threading.Condition()
        self._groups: OrderedDict[tuple, deque[Job]] = OrderedDict()
        self._depth = 0
        self._reserved = 0
        self._closed = False
        self._on_depth: Callable[[int], None] = _ignore_depth
        self.set_depth_listener(on_depth)

    def set_depth_listener(self, on_depth: Callable[[int], None] | None) -> None:
        """Call ``on_depth`` with the number of waiting jobs whenever it changes (the queue
        gauge); None stops reporting. Settable after construction because the metrics that
        listen may be created after the pool that owns the batcher."""
        with self._cond:
            self._on_depth = on_depth or _ignore_depth

    # -- producers -----------------------------------------------------------------------
    def _refuse_if_full(self, retry_after: Callable[[int], int]) -> None:
        # Called with the lock held.
        if self._closed:
            raise ShuttingDownError("the service is shutting down")
        occupied = self._depth + self._reserved
        if occupied >= self.max_queue:
            raise QueueFullError(
                f"the queue is full ({self._depth} requests waiting, {self._reserved} being prepared); retry later",
                retry_after=retry_after(occupied),
            )

    def reserve(self, retry_after: Callable[[int], int] = lambda depth: 1) -> Slot:
        """Hold a place for a job that is not built yet; raises 429/503 errors like :meth:`put`."""
        with self._cond:
            self._refuse_if_full(retry_after)
            self._reserved += 1
            return Slot(self)

    def _unreserve(self) -> None:
        with self._cond:
            self._reserved -= 1

    def put(self, job: Job, retry_after: Callable[[int], int] = lambda depth: 1, slot: Slot | None = None) -> None:
        """Queue ``job``: in the place ``slot`` holds, else in a free one (or raise)."""
        with self._cond:
            if slot is not None and slot._consume():
                self._reserved -= 1
                if self._closed:
                    raise ShuttingDownError("the service is shutting down")
            else:
                self._refuse_if_full(retry_after)
            job.enqueued = time.monotonic()
            self._groups.setdefault(job.key, deque()).append(job)
            self._depth += 1
            self._on_depth(self._depth)
            self._cond.notify_all()

    def discard(self, job: Job) -> bool:
        """Remove a job still waiting in the queue (its client gave up). True if removed."""
        with self._cond:
            q = self._groups.get(job.key)
            if q is None:
                return False
            try:
                q.remove(job)
            except ValueError:
                return False
            if not q:
                del self._groups[job.key]
            self._depth -= 1
            self._on_depth(self._depth)
            return True

    @property
    def depth(self) -> int:
        """Jobs waiting for a worker (the ``tcm_queue_depth`` gauge)."""
        return self._depth

    @property
    def reserved(self) -> int:
        """Places held by requests still reading or decoding their input."""
        return self._reserved

    # -- consumers ---------------------------------------------------------------------------
    def take(self, stop: threading.Event | None = None) -> list[Job] | None:
        """Block until a batch is due; ``None`` once closed and drained (or ``stop`` is set).

        Jobs past their deadline are failed here (504) instead of being handed out."""
        with self._cond:
            while True:
                if stop is not None and stop.is_set():
                    return None
                if not self._groups:
                    if self._closed:
                        return None
                    self._cond.wait(0.5 if stop is not None else None)
                    continue
                now = time.monotonic()
                key, q = min(self._groups.items(), key=lambda kv: kv[1][0].enqueued)
                limit = max(1, self._batch_limit(key[0]))
                due = q[0].enqueued + self.delay
                if len(q) >= limit or now >= due or self._closed:
                    batch = [q.popleft() for _ in range(min(limit, len(q)))]
                    if not q:
                        del self._groups[key]
                    self._depth -= len(batch)
                    self._on_depth(self._depth)
                    live = []
                    for job in batch:
                        if job.done:
                            continue
                        if now > job.deadline:
                            job.settle(error=DeadlineExceededError("the request deadline passed while it was queued"))
                            continue
                        job.timings["queue"] = now - job.enqueued
                        live.append(job)
                    if live:
                        return live
                    continue
                self._cond.wait(due - now)

    def close(self) -> None:
        """Refuse new jobs; workers drain what is queued, then :meth:`take` returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
