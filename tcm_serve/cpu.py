"""How many CPU threads the process may use, and how they wait: set before torch loads.

Two defaults that hurt a shared CPU (docs/performance.md, "Contention"):

* **Threads from the core count, not the quota.** OpenMP (torch) starts one thread per CPU
  in the process's affinity mask. A container limited by a CFS quota (``docker run
  --cpus=2``, a Kubernetes CPU limit) still sees every core of the node, so a 2-CPU pod on a
  64-core node runs 64 threads that the kernel throttles in turn.
* **Threads that spin.** libgomp's threads spin 300,000 turns at every barrier before they
  sleep. TCM's entropy path is thousands of small parallel regions; when another process
  holds a core, the spinning threads take turns with the one thread that has work, and a
  1.7 s decode took 9 s.

:func:`prepare_threads` fixes both through the environment OpenMP reads when it loads
(``OMP_NUM_THREADS`` from the quota when the quota is the tighter bound, and a spin of
:data:`SPIN_COUNT` turns), so it must run before ``import torch``: the ``tcm`` command calls
it first. Values a user set are never changed; ``TCM_THREAD_TUNING=0`` leaves both to the
libraries. This module imports nothing heavy.

The wait policy was chosen by measurement (benchmarks/bench_contention.py, whole ``tcm``
commands beside a spinning competitor; docs/performance.md, "Contention"): sleeping at
once (``OMP_WAIT_POLICY=PASSIVE``) resists contention best but makes the many short
parallel regions of a gradient pass (encoder effort) 25-40% slower on a quiet machine; a
short spin keeps most of the first and none of the second.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPUINFO = Path("/proc/cpuinfo")
#: Linux flags of the instructions that compute in bfloat16 natively (x86, and Arm's
#: ``bf16``); without them, torch emulates bfloat16 on the CPU (measured 10x slower than
#: float32 for a training step, docs/training.md).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
#: Turns an idle libgomp thread spins before it sleeps (libgomp's default: 300,000).
SPIN_COUNT = 1000


def cpu_quota(root: Path = CGROUP_ROOT, own: str | None = None) -> float | None:
    """The tightest CFS quota in CPUs (e.g. 1.5) of the process's cgroup v2 path and the
    root the process sees, or ``None`` when there is none. ``own``: the process's cgroup
    path (default: from ``/proc/self/cgroup``; inside a container with its own cgroup
    namespace it is ``/``, with the host's it is the container's path)."""
    own = _own_cgroup() if own is None else own
    places = [root / own.strip("/")] if own.strip("/") else []
    quotas = [q for q in (_quota_at(p) for p in [*places, root]) if q is not None]
    return min(quotas) if quotas else None


def _own_cgroup() -> str:
    """The process's cgroup v2 path (``0::/path``), or ``/``."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip() or "/"
    except OSError:
        pass
    return "/"


def _quota_at(root: Path) -> float | None:
    """The quota a cgroup directory sets: cgroup v2's ``cpu.max`` (``"150000 100000"``, or
    ``"max ..."``), else v1's ``cpu/cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (-1: none)."""
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


def cpu_budget(root: Path = CGROUP_ROOT, own: str | None = None) -> int:
    """Threads worth running: the CPUs available, capped by the quota rounded up (a quota
    of 1.5 CPUs gets 2 threads: the half CPU is still worth a thread's share)."""
    cpus = cpus_available()
    quota = cpu_quota(root, own)
    if quota is None:
        return cpus
    return max(1, min(cpus, math.ceil(quota)))


def prepare_threads(
    environ: MutableMapping[str, str] | None = None, root: Path = CGROUP_ROOT, own: str | None = None
) -> dict[str, str]:
    """Set OpenMP's thread count (when a CPU quota is tighter than the affinity mask) and a
    short spin at barriers in ``environ`` (default: the process's), unless the user set
    them (a wait policy or spin count of their own counts) or ``TCM_THREAD_TUNING=0``.
    Returns what it set. Effective only before torch is imported."""
    env = os.environ if environ is None else environ
    if env.get("TCM_THREAD_TUNING", "1").strip() == "0":
        return {}
    changes: dict[str, str] = {}
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        changes["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    if "OMP_NUM_THREADS" not in env:
        budget = cpu_budget(root, own)
        if budget < cpus_available():
            changes["OMP_NUM_THREADS"] = str(budget)
    env.update(changes)
    return changes


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (x86 ``flags``, Arm ``Features``);
    empty where there is no such file."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_warning(cpuinfo: Path = CPUINFO) -> str | None:
    """Why bfloat16 work will be slow on this CPU, or None when it has bfloat16 instructions
    (or says nothing about its flags)."""
    flags = cpu_flags(cpuinfo)
    if not flags or flags & BF16_FLAGS:
        return None
    return (
        "this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16; bf16 on Arm), so torch emulates them: "
        "--precision bf16 was measured 10x slower than fp32 on such a CPU (docs/training.md)"
    )
