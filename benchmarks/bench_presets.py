"""Size and speed of the architecture presets, side by side (why ``lite`` is what it is).

For each preset: parameters, float16 checkpoint size, forward pass on a Kodak-sized image
(768x512, inference mode) and one training step (batch B of 256x256 crops, Adam). Runs
interleave the presets round by round and report each one's best time and its ratio to
official-small, so machine noise hits all of them alike.

    .venv/bin/python benchmarks/bench_presets.py [--presets lite official-small] [--rounds 2] [--batch 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from tcm_serve.model.config import preset
from tcm_serve.model.objective import rate_distortion
from tcm_serve.model.tcm import TCM


def forward_time(model: TCM, x: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        t = time.perf_counter()
        model(x)
        return time.perf_counter() - t


def train_step_time(model: TCM, opt: torch.optim.Optimizer, xb: torch.Tensor) -> float:
    model.train()
    t = time.perf_counter()
    opt.zero_grad()
    rate_distortion(model(xb), xb, 0.013).loss.backward()
    opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["official-small", "lite"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {p: TCM(preset(p)) for p in args.presets}
    opts = {p: torch.optim.Adam(m.parameters(), 1e-4) for p, m in models.items()}
    x, xb = torch.rand(1, 3, 512, 768), torch.rand(args.batch, 3, 256, 256)
    fwd: dict[str, list[float]] = {p: [] for p in models}
    step: dict[str, list[float]] = {p: [] for p in models}
    for m in models.values():  # warm-up
        forward_time(m, x)
    for _ in range(args.rounds):
        for p, m in models.items():
            fwd[p].append(forward_time(m, x))
            step[p].append(train_step_time(m, opts[p], xb))
    base = args.presets[0]
    print(f"threads {args.threads}, rounds {args.rounds}, best of rounds; ratios against {base}")
    print(
        f"{'preset':16} {'params':>8} {'fp16 MB':>8} {'fwd 768x512':>12} {'ratio':>6} {'step b' + str(args.batch):>10} {'ratio':>6}"
    )
    for p, m in models.items():
        n = sum(t.numel() for t in m.parameters())
        f, s = min(fwd[p]), min(step[p])
        print(
            f"{p:16} {n / 1e6:7.2f}M {2 * n / 1e6:8.1f} {f:11.2f}s {min(fwd[base]) / f:5.1f}x {s:9.2f}s {min(step[base]) / s:5.1f}x"
        )


if __name__ == "__main__":
    main()
