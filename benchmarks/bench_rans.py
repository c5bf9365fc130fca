"""Throughput of the rANS coder, and evidence that it releases the GIL.

Takes the conformance kit's y symbols/indexes (coffee-136x200: 320 x 16 x 16) and tiles
them to the y grid of a Kodak image (768x512 -> 320 x 32 x 48 = 491,520 symbols). One
"job" = encode those symbols into one stream and decode the stream again. It times

* 1 thread running one job, and
* N threads (ThreadPoolExecutor, default 2) each running its own job at the same time,

and prints symbols/s and the speed-up of the parallel run's aggregate throughput over the
single thread. With the GIL released in the C loops the speed-up approaches N (given N
free cores); with the GIL held it would stay at about 1.0.

    .venv/bin/python benchmarks/bench_rans.py [--threads 2] [--repeats 7] [--kit PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from tcm_serve.codec.rans import EntropyTable, RansDecoder, encode
from tcm_serve.codec.tables import gaussian_table
from tcm_serve.model.probability import default_scale_table

KODAK_Y = 320 * 32 * 48  # y symbols of a 768x512 image


def load_symbols(kit: Path) -> tuple[np.ndarray, np.ndarray]:
    ci = np.load(kit / "vectors" / "coffee-136x200" / "compress_internals.npz")
    sym, idx = ci["y_symbols"], ci["y_indexes"]
    reps = -(-KODAK_Y // sym.size)
    return np.tile(sym, reps)[:KODAK_Y].copy(), np.tile(idx, reps)[:KODAK_Y].copy()


def job(sym: np.ndarray, idx: np.ndarray, table: EntropyTable) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    stream = encode(sym, idx, table)
    t1 = time.perf_counter()
    out = RansDecoder(stream).decode(idx, table)
    t2 = time.perf_counter()
    if not np.array_equal(out, sym):
        raise SystemExit("round trip failed")
    return t1 - t0, t2 - t1, len(stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--kit", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
    )
    args = parser.parse_args()

    t0 = time.perf_counter()
    table = gaussian_table(default_scale_table())
    t_table = time.perf_counter() - t0
    sym, idx = load_symbols(args.kit)
    n = sym.size
    print(f"cpu cores: {os.cpu_count()}  symbols per job: {n:,}  gaussian table build: {t_table * 1e3:.1f} ms")

    job(sym, idx, table)  # warm-up
    enc, dec, tot = [], [], []
    size = 0
    for _ in range(args.repeats):
        e, d, size = job(sym, idx, table)
        enc.append(e)
        dec.append(d)
        tot.append(e + d)
    e, d, single = statistics.median(enc), statistics.median(dec), statistics.median(tot)
    print(f"stream: {size:,} bytes ({8 * size / n:.3f} bits/symbol)")
    print(
        f"1 thread : encode {n / e / 1e6:7.2f} Msym/s  decode {n / d / 1e6:7.2f} Msym/s  "
        f"encode+decode {single * 1e3:7.2f} ms/job = {n / single / 1e6:6.2f} Msym/s"
    )

    k = args.threads
    walls = []
    with ThreadPoolExecutor(k) as pool:
        list(pool.map(lambda _: job(sym, idx, table), range(k)))  # warm-up / thread start
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            list(pool.map(lambda _: job(sym, idx, table), range(k)))
            walls.append(time.perf_counter() - t0)
    wall = statistics.median(walls)
    agg = k * n / wall
    print(f"{k} threads: {k} jobs in {wall * 1e3:7.2f} ms wall = {agg / 1e6:6.2f} Msym/s aggregate")
    print(f"speed-up ({k} threads vs 1): {agg / (n / single):.2f}x  (ideal {k:.2f}x, GIL held ~1.00x)")


if __name__ == "__main__":
    main()
