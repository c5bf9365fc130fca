"""Whole ``tcm`` commands on a quiet CPU and beside a CPU-bound competitor.

A CPU shared with other work (a co-located pod, a CI job, training) must not turn a
1.7 s decode into 9 s. This times what a user runs, ``tcm compress`` then ``tcm decompress``
of a few Kodak images (model load included), for:

* ``torch``: the PyTorch backend with this project's thread defaults (tcm_serve/cpu.py:
  a spin of 1,000 turns at barriers, threads from the CPU quota);
* ``torch-library``: the same with ``TCM_THREAD_TUNING=0`` (OpenMP's own defaults: threads
  that spin at barriers before they sleep), what every earlier release did;
* ``torch-passive``, ``torch-spin10k``: other wait policies considered
  (``OMP_WAIT_POLICY=PASSIVE``: sleep at once; ``GOMP_SPINCOUNT``: spin that many turns);
* ``onnx``: the ONNX Runtime backend (its own thread pool), graphs cached beforehand;

each ``quiet`` and ``busy`` (one competitor process spinning on one core for the whole
run), arms alternated round by round so that other load hits all alike.

    .venv/bin/python benchmarks/bench_contention.py --quality 4 --images 2 --rounds 3
    .venv/bin/python benchmarks/bench_contention.py --arms torch,torch-library,torch-passive --effort 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
ARMS = {
    "torch": {"TCM_BACKEND": "torch"},
    "torch-library": {"TCM_BACKEND": "torch", "TCM_THREAD_TUNING": "0"},
    "torch-passive": {"TCM_BACKEND": "torch", "OMP_WAIT_POLICY": "PASSIVE"},
    "torch-spin10k": {"TCM_BACKEND": "torch", "TCM_THREAD_TUNING": "0", "GOMP_SPINCOUNT": "10000"},
    "onnx": {"TCM_BACKEND": "onnx"},
}
SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def tcm(*args: str, env: dict[str, str]) -> float:
    """Seconds one whole ``tcm`` command takes (its process included)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tcm_serve.cli.main", *args], check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def round_trip(
    images: list[Path], quality: int, work: Path, env: dict[str, str], effort: int = 0
) -> tuple[float, float]:
    """(compress s, decompress s) of ``images`` with one command each way."""
    blobs, pngs = work / "blobs", work / "pngs"
    for d in (blobs, pngs):
        d.mkdir(exist_ok=True)
        for p in d.iterdir():
            p.unlink()
    enc = tcm("compress", *map(str, images), "-o", str(blobs), "-q", str(quality), "--effort", str(effort), env=env)
    dec = tcm("decompress", *map(str, sorted(blobs.iterdir())), "-o", str(pngs), env=env)
    return enc, dec


def arm_env(arm: str, onnx_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "TCM_"))}
    return {**env, **ARMS[arm], "TCM_ONNX_DIR": str(onnx_dir)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quality", type=int, default=4)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--arms", default="torch,torch-library,onnx", help=f"from: {', '.join(ARMS)}")
    ap.add_argument("--effort", type=int, default=0, help="encoder effort of the compress commands")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    images = sorted(KODAK.glob("kodim*.png"))[: args.images]
    arms = args.arms.split(",")
    results: dict[str, dict[str, list[tuple[float, float]]]] = {a: {"quiet": [], "busy": []} for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx_dir = work / "onnx"
        if "onnx" in arms:  # export and optimise the graphs before timing
            round_trip(images[:1], args.quality, work, arm_env("onnx", onnx_dir))
        for r in range(args.rounds):
            for condition in ("quiet", "busy"):
                competitor = None
                if condition == "busy":
                    code = SPIN.format(seconds=3600)
                    competitor = subprocess.Popen([sys.executable, "-c", code])
                    time.sleep(0.5)
                try:
                    for arm in arms:
                        env = arm_env(arm, onnx_dir)
                        results[arm][condition].append(round_trip(images, args.quality, work, env, args.effort))
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
            line = ", ".join(f"{a} {c} {sum(results[a][c][-1]):.1f} s" for a in arms for c in ("quiet", "busy"))
            print(f"round {r + 1}: {line}", flush=True)
    per_image = {
        a: {
            c: {
                "compress_s": round(statistics.median(e for e, _ in v) / args.images, 3),
                "decompress_s": round(statistics.median(d for _, d in v) / args.images, 3),
            }
            for c, v in conds.items()
        }
        for a, conds in results.items()
    }
    out = {
        "quality": args.quality,
        "effort": args.effort,
        "images": [p.name for p in images],
        "rounds": args.rounds,
        "per_image_median": per_image,
        "note": "whole commands, model load included, divided by the image count",
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
