"""tcm_serve/cpu.py: the thread budget from CPU quotas (cgroup v2 and v1) and the OpenMP
environment the ``tcm`` command sets before torch loads; the effect on speed under
contention is measured by benchmarks/bench_contention.py (docs/performance.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tcm_serve.cpu import SPIN_COUNT, bf16_warning, cpu_budget, cpu_flags, cpu_quota, cpus_available, prepare_threads


def cgroup(root: Path, name: str, files: dict[str, str]) -> Path:
    """A fake cgroup directory ``root/name`` holding ``files`` (relative path -> text)."""
    d = root / name
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


def v2(root: Path, text: str, name: str = "v2") -> Path:
    return cgroup(root, name, {"cpu.max": text})


def v1(root: Path, quota: int, period: int, name: str = "v1") -> Path:
    return cgroup(root, name, {"cpu/cpu.cfs_quota_us": f"{quota}\n", "cpu/cpu.cfs_period_us": f"{period}\n"})


def test_quota_from_cgroup_v2_and_v1(tmp_path):
    assert cpu_quota(v2(tmp_path, "150000 100000\n", "a")) == 1.5
    assert cpu_quota(v2(tmp_path, "max 100000\n", "b")) is None
    assert cpu_quota(v2(tmp_path, "garbage", "c")) is None
    assert cpu_quota(v1(tmp_path, 50000, 100000, "d")) == 0.5
    assert cpu_quota(v1(tmp_path, -1, 100000, "e")) is None
    assert cpu_quota(tmp_path / "missing") is None


def test_quota_of_the_process_own_cgroup(tmp_path):
    """Where the process sees the host's cgroup tree, its quota is on its own path: the
    tighter of that and the root's counts."""
    root = v2(tmp_path, "400000 100000", "host")
    cgroup(root, "kubepods/pod1", {"cpu.max": "150000 100000"})
    assert cpu_quota(root, own="/kubepods/pod1") == 1.5
    assert cpu_quota(root, own="/") == 4.0
    assert cpu_quota(root, own="/elsewhere") == 4.0


def test_budget_is_the_tighter_of_affinity_and_quota(tmp_path):
    cpus = cpus_available()
    assert cpu_budget(tmp_path / "none") == cpus
    assert cpu_budget(v2(tmp_path, "50000 100000", "half")) == 1  # half a CPU still gets a thread
    assert cpu_budget(v2(tmp_path, f"{(cpus + 8) * 100000} 100000", "big")) == cpus


def test_prepare_threads_sets_only_what_the_user_did_not(tmp_path):
    quota = v2(tmp_path, "100000 100000")  # one CPU
    env: dict[str, str] = {}
    changes = prepare_threads(env, quota)
    assert env["GOMP_SPINCOUNT"] == str(SPIN_COUNT) and "OMP_WAIT_POLICY" not in env
    if cpus_available() > 1:
        assert env["OMP_NUM_THREADS"] == "1" and changes == env
    env = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"}
    assert prepare_threads(env, quota) == {} and env == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"}
    env = {"GOMP_SPINCOUNT": "0", "OMP_NUM_THREADS": "3"}
    assert prepare_threads(env, quota) == {}
    env = {"TCM_THREAD_TUNING": "0"}
    assert prepare_threads(env, quota) == {} and env == {"TCM_THREAD_TUNING": "0"}
    env = {}
    prepare_threads(env, tmp_path / "no-quota")
    assert "OMP_NUM_THREADS" not in env  # no quota: OpenMP's own count (the affinity mask)


def test_tcm_command_sets_the_spin_before_torch_loads():
    """The command's process has GOMP_SPINCOUNT set by the time torch (and OpenMP) load."""
    code = (
        "import os, sys; from tcm_serve.cli.main import main; "
        "assert 'torch' not in sys.modules; "
        "rc = main(['models', 'list', '--json']); "
        "print(os.environ.get('GOMP_SPINCOUNT'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "TCM_THREAD_TUNING")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == str(SPIN_COUNT)


def test_bf16_warning_only_where_the_cpu_lacks_bfloat16_instructions(tmp_path):
    """An AVX2-only CPU ran a bf16 training step 10x slower than fp32 (docs/training.md):
    tcm train says so. Flags are read as Linux writes them; no file means no opinion."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "fma"}
    assert "no bfloat16 instructions" in bf16_warning(info)
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert bf16_warning(info) is None
    info.write_text("Features\t: fp asimd bf16\n")  # Arm's name for it
    assert bf16_warning(info) is None
    info.write_text("Features\t: fp asimd\n")
    assert bf16_warning(info) is not None
    assert cpu_flags(tmp_path / "missing") == frozenset() and bf16_warning(tmp_path / "missing") is None
