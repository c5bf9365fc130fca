"""The service's runtime: device workers, dynamic batching, range-coding threads."""
from .batcher import Batcher, Job
from .pool import WorkerPool, decompress_batch, resolve_devices

__all__ = ["Batcher", "Job", "WorkerPool", "decompress_batch", "resolve_devices"]
