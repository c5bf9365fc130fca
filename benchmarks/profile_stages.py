"""Where the time goes inside each stage: operators, page faults, kernel time.

For a preset's layout (fixed random initialisation) on one Kodak-size input (768x512):

* the PyTorch profiler's share of CPU time by operator, for g_a, the entropy-parameter
  path (h_a, hyper-synthesis, every slice) and g_s (after a warm-up pass);
* minor page faults, user and system CPU time of a g_a forward pass, in two fresh
  processes: glibc defaults, then with ``tcm_serve.tuning.tune_malloc`` (docs/performance.md).

    .venv/bin/python benchmarks/profile_stages.py --preset official-small
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def _model(name: str):
    import torch

    from tcm_serve.codec.engine import Engine
    from tcm_serve.model.config import preset
    from tcm_serve.model.tcm import TCM

    torch.manual_seed(0)
    return Engine(TCM(preset(name)), torch.device("cpu"))


def operators(name: str, rows: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    engine = _model(name)
    m = engine.model
    x = torch.rand(1, 3, 512, 768, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = m.g_a(x)
        stages = {
            "g_a": lambda: m.g_a(x),
            "entropy path (exact, float32)": lambda: engine.analyse_latent(y, portable=False),
            "entropy path (portable, float64)": lambda: engine.analyse_latent(y, portable=True),
            "g_s": lambda: m.g_s(y),
        }
        for label, fn in stages.items():
            fn()  # warm-up: oneDNN builds its kernels on first use of a shape
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
            events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in events) or 1
            print(f"\n{label}: {dt:.3f} s wall")
            for e in events[:rows]:
                print(f"  {e.key:<32} {e.self_cpu_time_total / total:6.1%}  ({e.count} calls)")


def faults(name: str, tuned: bool) -> None:
    """One g_a forward after a warm-up, in this (fresh) process."""
    import torch

    if tuned:
        from tcm_serve.tuning import tune_malloc

        tune_malloc()
    m = _model(name).model
    x = torch.rand(1, 3, 512, 768)
    with torch.no_grad():
        m.g_a(x)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        m.g_a(x)
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"{'tuned' if tuned else 'glibc defaults':<15} wall {dt:6.3f} s  user {r1.ru_utime - r0.ru_utime:6.3f} s  "
        f"sys {r1.ru_stime - r0.ru_stime:6.3f} s  minor faults {r1.ru_minflt - r0.ru_minflt:>9,}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="official-small")
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--faults-only", choices=["tuned", "default"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.faults_only:
        faults(args.preset, args.faults_only == "tuned")
        return
    operators(args.preset, args.rows)
    print("\ng_a page faults and kernel time (fresh process each):")
    for mode in ("default", "tuned"):
        cmd = [sys.executable, __file__, "--preset", args.preset, "--faults-only", mode]
        subprocess.run(cmd, check=True, env={**os.environ, "TCM_MALLOC_TUNING": "1"})


if __name__ == "__main__":
    main()
