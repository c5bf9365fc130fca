"""Training step time, float32 vs ``--precision bf16``, side by side, as a ratio.

One Trainer-equivalent step (forward with uniform noise, rate-distortion loss, backward)
on a fixed random batch, alternating the two precisions step by step so that load on this
shared machine hits both alike; reports the median of each and their ratio, plus the loss
of the same weights on the same batch under each precision (how far bfloat16 moves it).
Weights are a fixed random initialisation, or a checkpoint with ``--init``.

    .venv/bin/python benchmarks/bench_train_step.py --preset lite --batch 4 --steps 4 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch

from tcm_serve.model.checkpoint import load_into, read_state_dict
from tcm_serve.model.config import preset
from tcm_serve.model.objective import rate_distortion
from tcm_serve.model.tcm import TCM
from tcm_serve.training.trainer import TrainConfig


def one_step(model: TCM, x: torch.Tensor, lmbda: float) -> tuple[float, float]:
    """(seconds, loss) of one forward/backward; the same noise for every call."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    t = time.perf_counter()
    rd = rate_distortion(model(x), x, lmbda)
    rd.loss.backward()
    return time.perf_counter() - t, float(rd.loss.detach())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="lite")
    ap.add_argument("--init", help="checkpoint or store file to take the weights from")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per precision (after one warm-up each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lmbda", type=float, default=0.013)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = TCM(preset(args.preset)).train()
    if args.init:
        load_into(model, read_state_dict(args.init))
    x = torch.rand(args.batch, 3, args.crop, args.crop)
    times: dict[str, list[float]] = {p: [] for p in TrainConfig.PRECISIONS}
    losses: dict[str, float] = {}
    for i in range(args.steps + 1):
        for name, dtype in TrainConfig.PRECISIONS.items():
            model.transform_autocast = dtype
            seconds, losses[name] = one_step(model, x, args.lmbda)
            if i:  # the first round warms up kernels and allocator
                times[name].append(seconds)
    med = {p: statistics.median(t) for p, t in times.items()}
    print(f"{args.preset}, batch {args.batch} at {args.crop}, {args.threads} thread(s), {args.steps} steps each")
    for p in times:
        print(
            f"  {p:5s} median {med[p]:.2f} s/step  (min {min(times[p]):.2f}, max {max(times[p]):.2f})  loss {losses[p]:.4f}"
        )
    print(
        f"  bf16 speed-up: {med['fp32'] / med['bf16']:.2f}x; loss change {100 * (losses['bf16'] / losses['fp32'] - 1):+.2f}%"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
