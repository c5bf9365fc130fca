"""Bounded fuzzing runs for docs/reliability.md: the ``.tcm`` parser + decoder, and image
decoding, with hypothesis. The default test run executes a fixed-seed slice of the same
cases (tests/test_fuzz.py); this script runs many more and prints the figures.

::

    .venv/bin/python benchmarks/fuzz.py --tcm-cases 10000 --image-cases 10000 --seed 1

Every case ends in a clean one-line TcmError or a correct decode (see tests/fuzzing.py
for the oracle); any other outcome fails the run with hypothesis's shrunk example. A case
that runs past --case-timeout-s dumps every thread's stack and exits 1 (a hang cannot
pass). Resident memory is reported at start, end and peak (VmHWM), with --max-rss-growth-mb
as the budget. The model is the conformance kit's (tests/helpers.py finds ../shared).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fuzzing import main_progress, make_context, run_image_fuzz, run_tcm_fuzz  # noqa: E402
from helpers import KIT_CHECKPOINT, KIT_QUALITY  # noqa: E402


def kit_store(root: Path) -> Path:
    from tcm_serve.model.config import preset
    from tcm_serve.store import ModelStore

    ModelStore(root).import_checkpoint(
        KIT_CHECKPOINT, KIT_QUALITY, preset("conformance-small"), lmbda=0.013, source="conformance kit"
    )
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tcm-cases", type=int, default=10_000)
    p.add_argument("--image-cases", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1, help="hypothesis seed (the same cases for the same seed)")
    p.add_argument("--case-timeout-s", type=float, default=120.0, help="a single case running longer is a hang")
    p.add_argument(
        "--max-rss-growth-mb",
        type=float,
        default=1024.0,
        help="fail if the peak resident memory grows more than this past the start",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1: on a shared 2-core machine more threads only spin)",
    )
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)

    print(f"# fuzz: seed {args.seed}, torch threads {torch.get_num_threads()}, case timeout {args.case_timeout_s:g} s")
    failed = False
    if args.image_cases:
        rep = run_image_fuzz(args.image_cases, seed=args.seed, case_timeout_s=args.case_timeout_s)
        print("## image decoding (tcm_serve.imageio, mutated odd images, max_pixels 1 MP)")
        print(rep.summary(), flush=True)
        failed |= rep.peak_rss_mb - rep.rss_start_mb > args.max_rss_growth_mb
    if args.tcm_cases:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            ctx = make_context(kit_store(Path(tmp)), KIT_QUALITY)
            print(
                f"## .tcm parser + decoder (conformance model, {len(ctx.bases)} real blobs as seeds, "
                f"set up in {time.monotonic() - t0:.1f} s)",
                flush=True,
            )
            rep = run_tcm_fuzz(
                ctx, args.tcm_cases, seed=args.seed, case_timeout_s=args.case_timeout_s, progress=main_progress
            )
        print(rep.summary(), flush=True)
        failed |= rep.peak_rss_mb - rep.rss_start_mb > args.max_rss_growth_mb
    if failed:
        print(f"FAILED: peak resident memory grew more than {args.max_rss_growth_mb:g} MB", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
