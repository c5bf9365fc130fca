"""How many CPU threads the process may use, and how they wait: set before torch loads.

Two defaults that hurt a shared CPU (docs/performance.md, "Contention"):

* **Threads from the core count, not the quota.** OpenMP (torch) starts one thread per CPU
  in the process's affinity mask. A container limited by a CFS quota (``docker run
  --cpus=2``, a Kubernetes CPU limit) still sees every core of the node, so a 2-CPU pod on a
  64-core node runs 64 threads that the kernel throttles in turn.
* **Threads that spin.** libgomp's threads spin at every barrier before they sleep. TCM's
  entropy path is thousands of small parallel regions; when another process holds a core,
  the spinning threads take turns with the one thread that has work, and a 1.7 s decode
  took 9 s.

:func:`prepare_threads` fixes both through the environment OpenMP reads when it loads
(``OMP_NUM_THREADS`` from the quota when the quota is the tighter bound, and
``OMP_WAIT_POLICY=PASSIVE``), so it must run before ``import torch``: the ``tcm`` command
calls it first. Values a user set are never changed; ``TCM_THREAD_TUNING=0`` leaves both
to the libraries. This module imports nothing heavy.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CFS quota in CPUs (e.g. 1.5), or ``None`` when there is none: cgroup v2's
    ``cpu.max`` (``"150000 100000"``, or ``"max ..."``), else v1's ``cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us`` (quota -1: none)."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or 100000)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def cpus_available() -> int:
    """CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_budget(root: Path = CGROUP_ROOT) -> int:
    """Threads worth running: the CPUs available, capped by the quota rounded up (a quota
    of 1.5 CPUs gets 2 threads: the half CPU is still worth a thread's share)."""
    cpus = cpus_available()
    quota = cpu_quota(root)
    if quota is None:
        return cpus
    return max(1, min(cpus, math.ceil(quota)))


def prepare_threads(environ: MutableMapping[str, str] | None = None, root: Path = CGROUP_ROOT) -> dict[str, str]:
    """Set OpenMP's thread count (when a CPU quota is tighter than the affinity mask) and
    passive waiting in ``environ`` (default: the process's), unless the user set them or
    ``TCM_THREAD_TUNING=0``. Returns what it set. Effective only before torch is imported."""
    env = os.environ if environ is None else environ
    if env.get("TCM_THREAD_TUNING", "1").strip() == "0":
        return {}
    changes: dict[str, str] = {}
    if "OMP_WAIT_POLICY" not in env:
        changes["OMP_WAIT_POLICY"] = "PASSIVE"
    if "OMP_NUM_THREADS" not in env:
        budget = cpu_budget(root)
        if budget < cpus_available():
            changes["OMP_NUM_THREADS"] = str(budget)
    env.update(changes)
    return changes
