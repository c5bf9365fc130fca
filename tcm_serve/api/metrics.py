"""Prometheus metrics, one :class:`CollectorRegistry` per app (tests can run several apps).

Names follow Prometheus conventions (seconds, bytes, ``_total``)::

    tcm_requests_total{endpoint,quality,code}     counter   every HTTP request
    tcm_request_duration_seconds{endpoint}        histogram wall time per request
    tcm_stage_duration_seconds{stage}             histogram queue | transform | entropy_coding | image_io
    tcm_batch_size{kind}                          histogram images per device batch (compress | decompress)
    tcm_queue_depth                               gauge     requests waiting for a device
    tcm_queue_reserved                            gauge     queue places held by requests still reading their input
    tcm_queue_capacity                            gauge     max_queue (429 once depth + reserved reach it)
    tcm_requests_in_flight{endpoint}              gauge     codec requests being handled
    tcm_bits_per_pixel{quality}                   histogram rate of every compressed image
    tcm_request_bytes_total{endpoint,direction}   counter   body bytes in / out
    tcm_models_loaded                             gauge     (quality, device) pairs loaded and warmed
    tcm_worker_restarts_total{device}             counter   device workers that died and were replaced
    tcm_device_memory_bytes{device,kind}          gauge     allocated | reserved, CUDA devices only
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
BPP_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0)


class DeviceMemoryCollector:
    """Reads CUDA memory at scrape time (nothing on a CPU-only service)."""

    def __init__(self, devices: Sequence) -> None:
        self.devices = [d for d in devices if getattr(d, "type", None) == "cuda"]

    def collect(self):
        if not self.devices:
            return
        import torch

        fam = GaugeMetricFamily(
            "tcm_device_memory_bytes", "Device memory held by the service", labels=["device", "kind"]
        )
        for d in self.devices:
            fam.add_metric([str(d), "allocated"], float(torch.cuda.memory_allocated(d)))
            fam.add_metric([str(d), "reserved"], float(torch.cuda.memory_reserved(d)))
        yield fam

    def describe(self):
        return []


class Metrics:
    """The app's metrics; also the worker pool's observer."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "tcm_requests",
            "HTTP requests by endpoint, quality and status code",
            ["endpoint", "quality", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "tcm_request_duration_seconds", "Request wall time", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.stages = Histogram(
            "tcm_stage_duration_seconds",
            "Time per processing stage (a batch's transform counts once per batch)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.batch_sizes = Histogram(
            "tcm_batch_size", "Images per device batch", ["kind"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue = Gauge("tcm_queue_depth", "Requests waiting for a device", registry=r)
        self.reserved = Gauge(
            "tcm_queue_reserved", "Queue places held by requests still reading or decoding their input", registry=r
        )
        self.capacity = Gauge("tcm_queue_capacity", "Queue places in all (max_queue)", registry=r)
        self.in_flight = Gauge("tcm_requests_in_flight", "Codec requests being handled", ["endpoint"], registry=r)
        self.bpp = Histogram(
            "tcm_bits_per_pixel",
            "Bits per pixel of compressed images (streams only, as the paper counts)",
            ["quality"],
            buckets=BPP_BUCKETS,
            registry=r,
        )
        self.body_bytes = Counter(
            "tcm_request_bytes", "Request and response body bytes", ["endpoint", "direction"], registry=r
        )
        self.loaded = Gauge("tcm_models_loaded", "Models loaded and warmed up (quality x device)", registry=r)
        self.restarts = Counter(
            "tcm_worker_restarts", "Device workers that died and were replaced", ["device"], registry=r
        )
        for stage in ("queue", "transform", "entropy_coding", "image_io"):
            self.stages.labels(stage)  # expose every stage from the start

    def watch_queue(self, batcher) -> None:
        """Reserved places and capacity are read from the batcher at scrape time: a 429
        comes when depth + reserved reach capacity, which depth alone does not show."""
        self.reserved.set_function(lambda: batcher.reserved)
        self.capacity.set_function(lambda: batcher.max_queue)

    def watch_devices(self, devices: Sequence) -> None:
        # Every device's restart counter exists from the start at 0: a series that appears
        # only with the first restart makes increase()/rate() miss that restart.
        for d in devices:
            self.restarts.labels(str(d))
        if any(getattr(d, "type", None) == "cuda" for d in devices):
            self.registry.register(DeviceMemoryCollector(devices))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- the pool's observer ------------------------------------------------------------
    def stage(self, stage: str, seconds: float) -> None:
        self.stages.labels(stage).observe(seconds)

    def batch(self, kind: str, size: int) -> None:
        self.batch_sizes.labels(kind).observe(size)

    def queue_depth(self, depth: int) -> None:
        self.queue.set(depth)

    def models_loaded(self, count: int) -> None:
        self.loaded.set(count)

    def worker_restarted(self, device: str) -> None:
        self.restarts.labels(device).inc()
