"""Two revisions of tcm-serve side by side, through whole `tcm` commands: time and output.

What users meet is a whole command (interpreter start, imports, model load, the work), so
this times `tcm compress` and `tcm decompress` of a few Kodak images from two source
trees, alternating which goes first in each round (the machine is noisy; a side-by-side
run is the only fair comparison), and checks that both trees write the same blobs.
Made for refactors, which must change neither speed nor bytes.

Set up the older tree once (a worktree of the revision, with its C coder built in place):

    git worktree add /tmp/tcm-old <rev>
    (cd /tmp/tcm-old && /work/main/.venv/bin/python setup.py -q build_ext --inplace)
    .venv/bin/python benchmarks/bench_revisions.py /tmp/tcm-old . --images 3 --rounds 3

Either tree may use the old package name (`service`) or the current one (`tcm_serve`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"


def package_of(tree: Path) -> str:
    """The import package a source tree holds (the project was renamed once)."""
    for name in ("tcm_serve", "service"):
        if (tree / name / "cli" / "main.py").is_file():
            return name
    raise SystemExit(f"{tree}: no tcm_serve/ or service/ package with a CLI")


def run_tcm(tree: Path, args: list[str]) -> float:
    """Seconds for one whole `tcm ...` command run from ``tree``'s sources."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", f"{package_of(tree)}.cli.main", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{tree}: tcm {' '.join(args)} failed:\n{done.stderr.strip()}")
    return seconds


def digests(folder: Path, suffix: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob(f"*{suffix}"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path, help="source tree of the older revision")
    ap.add_argument("new", type=Path, help="source tree of the newer revision")
    ap.add_argument("--images", type=int, default=3, help="Kodak images per command")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--store", type=Path, default=ROOT / "model_store", help="one store for both trees")
    ap.add_argument("--quality", type=int, default=4)
    ap.add_argument("--kodak", type=Path, default=KODAK)
    args = ap.parse_args()
    images = sorted(args.kodak.glob("*.png"))[: args.images]
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    work = Path(tempfile.mkdtemp(prefix="bench-revisions-"))
    times: dict[str, dict[str, list[float]]] = {k: {"compress": [], "decompress": []} for k in trees}
    try:
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for key in order:
                out = work / key
                shutil.rmtree(out, ignore_errors=True)
                (out / "png").mkdir(parents=True)
                common = ["--store", str(args.store.resolve()), "--device", "cpu", "--force"]
                times[key]["compress"].append(
                    run_tcm(
                        trees[key], ["compress", *map(str, images), "-o", str(out), "-q", str(args.quality), *common]
                    )
                )
                blobs = sorted(map(str, out.glob("*.tcm")))
                times[key]["decompress"].append(
                    run_tcm(trees[key], ["decompress", *blobs, "-o", str(out / "png"), *common])
                )
        same_blobs = digests(work / "old", ".tcm") == digests(work / "new", ".tcm")
        same_pngs = digests(work / "old" / "png", ".png") == digests(work / "new" / "png", ".png")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(images)} Kodak image(s) per command, q{args.quality}, {args.rounds} rounds, {os.cpu_count()} CPUs")
    print("| command | old (median s) | new (median s) | new / old |")
    print("| --- | --- | --- | --- |")
    for cmd in ("compress", "decompress"):
        old, new = statistics.median(times["old"][cmd]), statistics.median(times["new"][cmd])
        print(f"| tcm {cmd} | {old:.2f} | {new:.2f} | {new / old:.3f} |")
    print(f"blobs byte-identical: {same_blobs}; decoded PNGs identical: {same_pngs}")


if __name__ == "__main__":
    main()
