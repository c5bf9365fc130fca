"""Where the time goes in compress / decompress, per stage, on Kodak-size images.

Measures our codec (TCM architecture of a preset, or a model from a store) on real Kodak
images, stage by stage: analysis transform, entropy-parameter path (hyperprior + slices),
range coding, synthesis transform. Also times batch 1 vs batch B of the analysis transform
(the only batched encoder stage) side by side in the same run, since this machine is
noisy. Weights: a store model if --store/--quality are given, else the preset's layout
with a fixed random initialisation (timing depends on the architecture, not the values).

    .venv/bin/python benchmarks/bench_codec.py --preset official-small --images 3 --repeat 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tcm_serve.codec.engine import Engine
from tcm_serve.codec.geometry import Geometry
from tcm_serve.codec.padding import pad, pixels_to_tensor
from tcm_serve.model.config import preset
from tcm_serve.model.tcm import TCM
from tcm_serve.store import ModelStore

KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="official-small")
    ap.add_argument("--store")
    ap.add_argument("--quality", type=int)
    ap.add_argument("--images", type=int, default=3, help="how many Kodak images (768x512)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2, help="batch size for the batched-g_a comparison")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--kodak", default=str(KODAK))
    ap.add_argument("--bitstream", default="portable", choices=("portable", "exact"))
    args = ap.parse_args()
    portable = args.bitstream == "portable"
    torch.set_num_threads(args.threads)

    if args.store:
        store = ModelStore(args.store)
        model = store.load_model(store.entry(args.quality))
        label = f"store q{args.quality} ({model.cfg.N=})"
    else:
        torch.manual_seed(0)
        model = TCM(preset(args.preset))
        label = f"{args.preset} (random init)"
    engine = Engine(model, torch.device("cpu"))
    m = engine.model
    files = sorted(Path(args.kodak).glob("kodim*.png"))[: args.images]
    xs = []
    for f in files:
        px = np.array(Image.open(f).convert("RGB"))
        if px.shape[0] > px.shape[1]:  # keep one padded size so batches are possible
            px = np.ascontiguousarray(px.transpose(1, 0, 2))
        xs.append(pad(pixels_to_tensor(px), Geometry.for_image(*px.shape[:2]).pad)[None])

    stages: dict[str, list[float]] = {
        k: []
        for k in (
            "g_a",
            "entropy path (enc)",
            "range encode",
            "compress total",
            "entropy path + range decode",
            "g_s",
            "decompress total",
        )
    }
    with torch.no_grad():
        engine.compress(xs[0], portable)  # warm-up
        for _ in range(args.repeat):
            for x in xs:
                y, t = _timed(lambda: m.g_a(x))
                stages["g_a"].append(t)
                sym, t = _timed(lambda: engine.analyse_latent(y, portable))
                stages["entropy path (enc)"].append(t)
                coded, t = _timed(lambda: engine.encode_symbols(sym))
                stages["range encode"].append(t)
                stages["compress total"].append(stages["g_a"][-1] + stages["entropy path (enc)"][-1] + t)
                z_shape = (x.shape[2] // 64, x.shape[3] // 64)
                (y_hat, _), t = _timed(lambda: engine.decode_latent(coded, z_shape))
                stages["entropy path + range decode"].append(t)
                _, t = _timed(lambda: m.g_s(y_hat).clamp_(0, 1))
                stages["g_s"].append(t)
                stages["decompress total"].append(stages["entropy path + range decode"][-1] + t)

        # batched vs one-at-a-time g_a, interleaved so drift in machine load hits both
        b = max(1, args.batch)
        batch = torch.cat([xs[i % len(xs)] for i in range(b)])
        single, batched = [], []
        for _ in range(args.repeat):
            _, t1 = _timed(lambda: [m.g_a(batch[i : i + 1]) for i in range(b)])
            _, tb = _timed(lambda: m.g_a(batch))
            single.append(t1)
            batched.append(tb)

    print(
        f"model: {label}; {args.bitstream} bitstream; images: {len(xs)} x {tuple(xs[0].shape[2:])} padded; threads: {args.threads}; repeat: {args.repeat}"
    )
    print(f"{'stage':<30} {'median s':>9} {'share':>7}")
    for k, v in stages.items():
        total = statistics.median(
            stages["compress total"]
            if "decode" not in k and k not in ("g_s", "decompress total")
            else stages["decompress total"]
        )
        print(f"{k:<30} {statistics.median(v):>9.3f} {statistics.median(v) / total:>7.1%}")
    ratio = statistics.median(single) / statistics.median(batched)
    print(
        f"g_a x{b}: one at a time {statistics.median(single):.3f} s, batched {statistics.median(batched):.3f} s, speed-up {ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
