"""Start-up time of each backend: how long a fresh process takes to have a model ready.

What a ``tcm compress`` command or a service restart pays before its first image. Each
measurement is a new Python process that imports the package and calls
:func:`tcm_serve.codec.pipeline.load_model` (weights read and checked, coder tables, for the
ONNX backend its graphs opened in onnxruntime), timed inside the process from before the
import to the ready model, so interpreter start-up is left out and import time is in.

Three ways, alternated round by round so that load on this shared machine hits all alike:

* ``torch``: the PyTorch backend;
* ``onnx-cold``: the ONNX backend with its graphs exported but no optimised copies (what
  the first process on a machine kind pays: onnxruntime optimises every graph, then
  keeps the optimised copy beside it, tcm_serve/codec/onnx_graphs.py);
* ``onnx-warm``: the ONNX backend loading those optimised copies (every later process).

    .venv/bin/python benchmarks/bench_startup.py --store model_store --quality 2 --rounds 5
    .venv/bin/python benchmarks/bench_startup.py --kit --rounds 5   # the conformance kit's weights
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_CHILD = r"""
import sys, time
t0 = time.perf_counter()
import torch
from tcm_serve.codec.pipeline import load_model
from tcm_serve.store import ModelStore
torch.set_num_threads({threads})
lm = load_model(ModelStore({store!r}), {quality}, torch.device("cpu"), {backend!r}, {onnx_dir!r})
print(time.perf_counter() - t0)
"""


def start_once(store: str, quality: int, backend: str, onnx_dir: str | None, threads: int) -> float:
    """Seconds from import to a ready model, in a fresh process."""
    code = _CHILD.format(store=store, quality=quality, backend=backend, onnx_dir=onnx_dir, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def drop_optimised(directory: Path) -> None:
    """Remove the optimised copies, keeping the exported graphs (the ``onnx-cold`` state)."""
    for p in directory.glob("*.opt-*.onnx"):
        p.unlink()


def kit_store(work: Path) -> tuple[str, int]:
    """The conformance kit's weights (N=32, 2 slices) as a store (tests/helpers.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import KIT_QUALITY, kit_store_at

    return str(kit_store_at(work / "kit-store")), KIT_QUALITY


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=str(ROOT / "model_store"))
    ap.add_argument("--quality", type=int, default=2)
    ap.add_argument("--kit", action="store_true", help="the conformance kit's weights (N=32, 2 slices)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store, quality = kit_store(work) if args.kit else (args.store, args.quality)
        onnx_dir = work / "onnx"
        start_once(store, quality, "onnx", str(onnx_dir), args.threads)  # export the graphs once
        times: dict[str, list[float]] = {"torch": [], "onnx-cold": [], "onnx-warm": []}
        for r in range(args.rounds):
            times["torch"].append(start_once(store, quality, "torch", None, args.threads))
            drop_optimised(onnx_dir)
            times["onnx-cold"].append(start_once(store, quality, "onnx", str(onnx_dir), args.threads))
            times["onnx-warm"].append(start_once(store, quality, "onnx", str(onnx_dir), args.threads))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
        shutil.rmtree(onnx_dir, ignore_errors=True)
    result = {
        "store": "conformance kit weights (N=32, 2 slices)" if args.kit else f"{args.store} q{args.quality}",
        "threads": args.threads,
        "rounds": args.rounds,
        "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
