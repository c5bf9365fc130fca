"""Whole commands against the reference procedure, side by side: what a user waits for.

Each arm codes the same Kodak images with one command each way, model load included:

* ``reference``: benchmarks/reference_cli.py, the official start-up (load, ``update()``) and
  ``compress``/``decompress`` procedure (benchmarks/reference_procedure.py);
* ``torch``: ``tcm compress`` + ``tcm decompress``, the default backend and bitstream
  (portable: its float64 entropy path is part of the figure, not left out of it);
* ``onnx``: the same with ``--backend onnx`` (graphs exported and optimised beforehand, as
  a service or a second command finds them).

Arms alternate within every round, so load on a shared machine hits all alike; the report
gives medians and each arm's speed-up over the reference. Every arm gets ``--threads``
threads; each keeps its own OpenMP wait settings, as its users get them (``tcm`` sets a short
spin, tcm_serve/cpu.py; the reference runs with the library's defaults). Weights: the bundled store's level
(``--preset lite``) or a fixed random initialisation of the official-small layout (timing
depends on the architecture, not on the values), the same file for every arm.

    .venv/bin/python benchmarks/bench_commands.py --preset lite --images 3 --rounds 3
    .venv/bin/python benchmarks/bench_commands.py --preset official-small --images 3 --rounds 2
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
ARMS = ("reference", "torch", "onnx")
#: Arms that can be asked for besides the defaults: ours with exact (version-1) strings, whose
#: entropy path is float32 like the reference's (what portability costs, side by side).
EXTRA_ARMS = ("torch-exact", "onnx-exact")


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds one whole command takes (its process included)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def weights(preset_name: str, quality: int, work: Path) -> tuple[str, str, int]:
    """(checkpoint for the reference, store for ours, quality) holding the same weights; the
    reference's checkpoint has no entropy tables, like the official ones."""
    import torch

    sys.path.insert(0, str(ROOT))
    from tcm_serve.model.checkpoint import TABLE_BUFFERS

    if preset_name == "lite":
        from tcm_serve.store import DEFAULT_STORE, ModelStore

        store = ModelStore(DEFAULT_STORE)
        state = store.load_model(store.entry(quality)).state_dict()
        # as an official checkpoint: no entropy tables, so the reference's update() builds them
        checkpoint = work / f"lite-q{quality}.pt"
        torch.save({k: torch.empty(0) if k in TABLE_BUFFERS else v for k, v in state.items()}, checkpoint)
        return str(checkpoint), str(DEFAULT_STORE), quality

    from tcm_serve.model.config import preset
    from tcm_serve.model.tcm import TCM

    torch.manual_seed(0)
    checkpoint = work / f"{preset_name}.pt"
    torch.save(TCM(preset(preset_name)).state_dict(), checkpoint)
    store = work / "store"
    subprocess.run(
        [sys.executable, "-m", "tcm_serve.cli.main", "models", "import", str(checkpoint), "-q", "1",
         "--preset", preset_name, "--store", str(store), "--source", "benchmark: random weights"],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(checkpoint), str(store), 1


def commands(arm: str, images: list[Path], work: Path, ckpt: str, store: str, q: int, preset_name: str):
    """The (compress, decompress) command lines of ``arm``; outputs under ``work/arm``. Every
    arm's thread count comes from OMP_NUM_THREADS (``--threads``)."""
    blobs, pngs = work / arm / "blobs", work / arm / "pngs"
    for d in (blobs, pngs):
        d.mkdir(parents=True, exist_ok=True)
    if arm == "reference":
        base = [sys.executable, str(ROOT / "benchmarks" / "reference_cli.py")]
        opts = ["--checkpoint", ckpt, "--preset", preset_name]
        enc = [*base, "compress", *map(str, images), "-o", str(blobs), *opts]
        dec = [*base, "decompress", *(str(blobs / f"{p.stem}.ref") for p in images), "-o", str(pngs), *opts]
        return enc, dec
    base = [sys.executable, "-m", "tcm_serve.cli.main"]
    backend, _, exact = arm.partition("-")
    opts = ["--store", store, "--backend", backend, "--force"]  # later rounds overwrite
    if exact:
        opts += ["--bitstream", "exact"]
    enc = [*base, "compress", *map(str, images), "-o", str(blobs), "-q", str(q), *opts]
    dec_opts = ["--store", store, "--backend", backend, "--force"]
    dec = [*base, "decompress", *(str(blobs / f"{p.stem}.tcm") for p in images), "-o", str(pngs), *dec_opts]
    return enc, dec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="lite", choices=("lite", "official-small", "official-large"))
    ap.add_argument("--quality", type=int, default=4, help="bundled store level (--preset lite)")
    ap.add_argument("--images", type=int, default=3, help="the first N Kodak images")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--arms", default=",".join(ARMS), help=f"from: {', '.join(ARMS + EXTRA_ARMS)}")
    ap.add_argument("--kodak", default=str(KODAK))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    arms = args.arms.split(",")
    images = sorted(Path(args.kodak).glob("kodim*.png"))[: args.images]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCM_")}
    env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env["TCM_ONNX_DIR"] = str(work / "onnx")
        ckpt, store, q = weights(args.preset, args.quality, work)
        if any(a.startswith("onnx") for a in arms):  # export and optimise the graphs once, as a service does
            timed(commands("onnx", images[:1], work / "warmup", ckpt, store, q, args.preset)[0], env)
        times: dict[str, dict[str, list[float]]] = {a: {"compress": [], "decompress": []} for a in arms}
        for r in range(args.rounds):
            for arm in arms:
                enc, dec = commands(arm, images, work, ckpt, store, q, args.preset)
                times[arm]["compress"].append(timed(enc, env))
                times[arm]["decompress"].append(timed(dec, env))
            print(
                f"round {r + 1}: "
                + ", ".join(f"{a} {t['compress'][-1]:.1f} + {t['decompress'][-1]:.1f} s" for a, t in times.items()),
                flush=True,
            )
        sizes = {a: sum(f.stat().st_size for f in (work / a / "blobs").iterdir()) for a in arms}
    med = {a: {op: statistics.median(v) for op, v in t.items()} for a, t in times.items()}
    base = med.get("reference")
    result = {
        "preset": args.preset,
        "weights": f"bundled q{args.quality}" if args.preset == "lite" else "random (seed 0)",
        "images": [p.name for p in images],
        "threads": args.threads,
        "rounds": args.rounds,
        "median_s": {
            a: {**{op: round(s, 2) for op, s in m.items()}, "both": round(sum(m.values()), 2)} for a, m in med.items()
        },
        "speedup_vs_reference": (
            {
                a: {
                    "compress": round(base["compress"] / m["compress"], 2),
                    "decompress": round(base["decompress"] / m["decompress"], 2),
                    "both": round(sum(base.values()) / sum(m.values()), 2),
                }
                for a, m in med.items()
            }
            if base
            else None
        ),
        "bytes": sizes,
        "all_s": times,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "all_s"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
