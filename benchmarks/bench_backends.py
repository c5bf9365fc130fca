"""Our PyTorch and ONNX pipelines vs the reference procedure, side by side, as ratios.

Three pipelines, each in its own worker process (so each has its own allocator settings
and thread pool), all with the same weights (a preset's layout, fixed random
initialisation: timing depends on the architecture, not on the values):

* ``reference``: the official compress/decompress procedure re-expressed
  (benchmarks/reference_procedure.py): Python-list coder calls, no allocator tuning;
* ``torch``: our engine on the exact path (byte-identical strings to the reference);
* ``onnx``: our engine with every stage on onnxruntime (``--backend onnx``).

The orchestrator asks the workers in turn, image by image (reference, torch, onnx,
reference, ...), so load changes on this shared machine hit all three alike, and reports
medians and ratios. Then, from the same run: the range-coding share of our pipelines and
the coder's throughput on 1..N threads (real symbols of the first image), batch 1 vs batch
B throughput of our pipelines (compress and decompress, B same-size images), and how
close each transform runs to the CPU's nominal arithmetic peak (FLOPs counted by
``torch.utils.flop_counter``). On a CUDA machine the workers run on the GPU (``--device``).

    .venv/bin/python benchmarks/bench_backends.py --preset official-small --images 2 --repeat 1
    .venv/bin/python benchmarks/bench_backends.py --preset lite --images 4 --repeat 2 --batch 4,8
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"
PIPELINES = ("reference", "torch", "onnx")


# -- shared helpers (run in the workers) ---------------------------------------------------------
def _model(preset_name: str):
    import torch

    from tcm_serve.codec.tables import prepare_entropy_tables
    from tcm_serve.model.config import preset
    from tcm_serve.model.tcm import TCM

    torch.manual_seed(0)
    model = TCM(preset(preset_name)).eval()
    prepare_entropy_tables(model)
    return model


def _entry(model, preset_name: str):
    """A store entry for the random weights (the ONNX graph cache is keyed by its hash)."""
    from tcm_serve.store import ModelEntry

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return ModelEntry(
        quality=1,
        file="-",
        arch=model.cfg,
        preset=preset_name,
        lmbda=None,
        metric="mse",
        sha256=h.hexdigest(),
        source="benchmark",
    )


def _images(kodak: str, count: int):
    """Kodak images as padded (1, 3, 512, 768) tensors (portrait ones transposed, so all
    share one size and can be batched)."""
    import numpy as np
    from PIL import Image

    from tcm_serve.codec.geometry import Geometry
    from tcm_serve.codec.padding import pad, pixels_to_tensor

    out = []
    for f in sorted(Path(kodak).glob("kodim*.png"))[:count]:
        px = np.array(Image.open(f).convert("RGB"))
        if px.shape[0] > px.shape[1]:
            px = np.ascontiguousarray(px.transpose(1, 0, 2))
        out.append(pad(pixels_to_tensor(px), Geometry.for_image(*px.shape[:2]).pad)[None])
    return out


class _CoderClock:
    """Accumulates the time spent inside the range coder (encode and decode calls)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


def _worker(conn, kind: str, args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from tcm_serve.codec import engine as engine_mod
    from tcm_serve.devices import resolve_device, set_reproducible_kernels
    from tcm_serve.tuning import tune_malloc

    if kind != "reference":
        tune_malloc()
    device = resolve_device(args.device)
    set_reproducible_kernels(device)
    model = _model(args.preset)
    images = _images(args.kodak, args.images)
    clock = _CoderClock()
    engine = None
    if kind == "reference":
        import reference_procedure as ref

        ref.use_reference_attention()
        model.to(device)
    elif kind == "torch":
        engine = engine_mod.Engine(model, device)
    else:
        from tcm_serve.codec.backends import OnnxStages
        from tcm_serve.codec.onnx_graphs import ensure_graphs, open_sessions

        graphs, _ = ensure_graphs(model, _entry(model, args.preset), args.onnx_dir)
        sessions, name = open_sessions(graphs, device, args.threads)
        cfg = model.cfg
        stages = OnnxStages(sessions, cfg.num_slices, [cfg.support_count(i) for i in range(cfg.num_slices)], name)
        engine = engine_mod.Engine(model, torch.device("cpu"), stages=stages)
    if engine is not None:  # time the coder calls inside the engine
        engine_mod.encode = clock.wrap(engine_mod.encode)
        engine_mod.RansDecoder.decode = clock.wrap(engine_mod.RansDecoder.decode)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    coded: dict[int, object] = {}
    conn.send(("ready", getattr(engine, "backend", f"reference-{device.type}")))
    while True:
        cmd, arg = conn.recv()
        if cmd == "stop":
            return
        if cmd == "compress":
            x = images[arg].to(device)
            clock.seconds = 0.0
            t0 = time.perf_counter()
            if engine is None:
                out = ref.compress(model, x)
                sync()
                coded[arg] = out
                conn.send(
                    {"total": time.perf_counter() - t0, "bytes": len(out["strings"][0][0]) + len(out["strings"][1][0])}
                )
                continue
            with torch.no_grad():
                y = engine.stages.g_a(x)
                sync()
                t1 = time.perf_counter()
                sym = engine.analyse_latent(y, portable=False)  # the exact path (what the reference computes)
                t2 = time.perf_counter()
                c = engine.encode_symbols(sym)
            t3 = time.perf_counter()
            coded[arg] = (c, sym)
            conn.send(
                {
                    "total": t3 - t0,
                    "g_a": t1 - t0,
                    "entropy": t2 - t1,
                    "coder": clock.seconds,
                    "bytes": len(c.z_string) + len(c.y_string),
                }
            )
        elif cmd == "decompress":
            x = images[arg]
            z_shape = (x.shape[2] // 64, x.shape[3] // 64)
            clock.seconds = 0.0
            t0 = time.perf_counter()
            if engine is None:
                out = coded[arg]
                ref.decompress(model, out["strings"], out["shape"])
                sync()
                conn.send({"total": time.perf_counter() - t0})
                continue
            c = coded[arg][0]
            with torch.no_grad():
                y_hat = engine.decode_latent(c, z_shape)[0]
                t1 = time.perf_counter()
                engine.stages.g_s(y_hat).clamp_(0, 1)
                sync()
            t2 = time.perf_counter()
            conn.send({"total": t2 - t0, "entropy": t1 - t0, "g_s": t2 - t1, "coder": clock.seconds})
        elif cmd == "symbols":
            sym = coded[arg][1]
            conn.send(
                (sym.y_symbols, sym.y_indexes, engine.y_table.cdf, engine.y_table.cdf_length, engine.y_table.offset)
            )
        elif cmd == "batch":
            b, reps = arg
            xs = [images[i % len(images)] for i in range(b)]
            batch = torch.cat(xs).to(device)
            z_shape = (batch.shape[2] // 64, batch.shape[3] // 64)
            res = {"single_c": [], "batch_c": [], "single_d": [], "batch_d": []}
            for _ in range(reps):  # interleaved: one at a time, then batched
                t0 = time.perf_counter()
                singles = [engine.compress(batch[i : i + 1], portable=False)[0] for i in range(b)]
                sync()
                res["single_c"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                together = engine.compress(batch, portable=False)
                sync()
                res["batch_c"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for c in singles:
                    engine.decompress([c], z_shape)
                sync()
                res["single_d"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                engine.decompress(together, z_shape)
                sync()
                res["batch_d"].append(time.perf_counter() - t0)
            conn.send({k: statistics.median(v) for k, v in res.items()})
        elif cmd == "flops":
            from torch.utils.flop_counter import FlopCounterMode

            x = images[0]
            counts = {}
            with torch.no_grad():
                for name, fn in (
                    ("g_a", lambda: model.g_a(x)),
                    ("g_s", lambda: model.g_s(torch.zeros(1, model.cfg.M, x.shape[2] // 16, x.shape[3] // 16))),
                ):
                    with FlopCounterMode(display=False) as fc:
                        fn()
                    counts[name] = fc.get_total_flops()
                y = model.g_a(x)
                with FlopCounterMode(display=False) as fc:
                    engine.analyse_latent(y, portable=False) if engine is not None else None
                counts["entropy"] = fc.get_total_flops()
            conn.send(counts)


# -- orchestration -----------------------------------------------------------------------------------
def _nominal_peak_gflops(threads: int) -> tuple[float, str]:
    """Nominal fp32 peak: cores x clock x 2 FMA pipes x SIMD lanes x 2 flops (a ceiling, not
    a promise: turbo, shared cores and memory bandwidth decide what is reachable)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return float("nan"), "unknown CPU"
    mhz = next(
        (float(line.split(":")[1]) for line in info.splitlines() if line.lower().startswith("cpu mhz")), float("nan")
    )
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    # AMD cores up to Zen 4 run AVX-512 on 256-bit pipes: count 8 fp32 lanes there.
    wide = " avx512f" in flags and "AuthenticAMD" not in info
    lanes = 16 if wide else 8 if (" avx2" in flags or " fma" in flags) else 4
    return threads * mhz / 1000 * 2 * lanes * 2, f"{threads} core(s) x {mhz / 1000:.2f} GHz x 2 FMA x {lanes} lanes x 2"


def _coder_scaling(symbols, max_threads: int, jobs_per_thread: int = 2) -> list[tuple[int, float]]:
    """(threads, Msym/s) for encode+decode jobs of one image's y symbols on 1..N threads."""
    from tcm_serve.codec.rans import EntropyTable, RansDecoder, encode

    sym, idx, cdf, length, offset = symbols
    table = EntropyTable(cdf, length, offset)

    def job() -> None:
        s = encode(sym, idx, table)
        RansDecoder(s).decode(idx, table)

    out = []
    for t in range(1, max_threads + 1):
        n = t * jobs_per_thread
        best = float("inf")
        for _ in range(3):
            with ThreadPoolExecutor(t) as ex:
                t0 = time.perf_counter()
                list(ex.map(lambda _: job(), range(n)))
                best = min(best, time.perf_counter() - t0)
        out.append((t, n * sym.size / best / 1e6))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="official-small")
    ap.add_argument("--images", type=int, default=2, help="how many Kodak images (768x512)")
    ap.add_argument("--repeat", type=int, default=1, help="passes over the images")
    ap.add_argument("--batch", default="4", help="batch sizes to compare with batch 1, e.g. 4,8 (0: skip)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads per worker (intra-op)")
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    ap.add_argument("--pipelines", default=",".join(PIPELINES))
    ap.add_argument("--kodak", default=str(KODAK))
    ap.add_argument("--onnx-dir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "tcm-bench-onnx"))
    args = ap.parse_args()
    kinds = [k for k in args.pipelines.split(",") if k]
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    ctx = mp.get_context("spawn")
    workers = {}
    t0 = time.perf_counter()
    for kind in kinds:  # start one at a time: the ONNX export, if needed, runs alone
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, kind, args), daemon=True)
        proc.start()
        child.close()  # so that a worker that dies (e.g. killed for memory) shows as EOFError
        status, backend = parent.recv()
        workers[kind] = (proc, parent, backend)
    print(
        f"preset {args.preset} (random init), {args.images} Kodak image(s) 768x512, repeat {args.repeat}, "
        f"{args.threads} thread(s) per worker, device {args.device}; workers ready in {time.perf_counter() - t0:.0f} s"
    )
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    res = {k: {"c": [], "d": []} for k in kinds}
    for _ in range(args.repeat):
        for i in range(args.images):
            for way in ("compress", "decompress"):
                for kind in kinds:
                    conn = workers[kind][1]
                    conn.send((way, i))
                    res[kind][way[0]].append(conn.recv())
    base = "reference" if "reference" in kinds else kinds[0]
    med = lambda rows, key="total": statistics.median(r[key] for r in rows)  # noqa: E731
    print(
        f"\n== end to end, batch 1 (medians; ratio = reference time / ours; load average now {os.getloadavg()[0]:.2f}) =="
    )
    print(
        f"{'pipeline':<11} {'backend':<14} {'compress s':>10} {'img/s':>6} {'x ref':>6} {'decompress s':>12} {'img/s':>6} {'x ref':>6} {'both x ref':>10}"
    )
    for kind in kinds:
        c, d = med(res[kind]["c"]), med(res[kind]["d"])
        bc, bd = med(res[base]["c"]), med(res[base]["d"])
        print(
            f"{kind:<11} {workers[kind][2]:<14} {c:>10.3f} {1 / c:>6.3f} {bc / c:>5.2f}x {d:>12.3f} {1 / d:>6.3f} {bd / d:>5.2f}x {(bc + bd) / (c + d):>9.2f}x"
        )
    sizes = {k: res[k]["c"][0]["bytes"] for k in kinds}
    print(f"bytes of image 0: {sizes}")

    print("\n== where the time goes (medians, s; coder = range coding inside the engine) ==")
    print(
        f"{'pipeline':<11} {'g_a':>7} {'entropy':>8} {'coder':>7} {'| dec entropy':>14} {'coder':>7} {'g_s':>7} {'coder share':>12}"
    )
    for kind in kinds:
        if kind == "reference":
            continue
        rc, rd = res[kind]["c"], res[kind]["d"]
        share = (med(rc, "coder") + med(rd, "coder")) / (med(rc) + med(rd))
        print(
            f"{kind:<11} {med(rc, 'g_a'):>7.3f} {med(rc, 'entropy'):>8.3f} {med(rc, 'coder'):>7.3f} {med(rd, 'entropy'):>14.3f} "
            f"{med(rd, 'coder'):>7.3f} {med(rd, 'g_s'):>7.3f} {share:>11.2%}"
        )

    if "torch" in kinds:
        conn = workers["torch"][1]
        conn.send(("flops", None))
        flops = conn.recv()
        peak, how = _nominal_peak_gflops(args.threads)
        print(f"\n== arithmetic: GFLOP per image and achieved GFLOP/s (nominal peak {peak:.0f} GFLOP/s = {how}) ==")
        for kind in [k for k in kinds if k != "reference"]:
            rc, rd = res[kind]["c"], res[kind]["d"]
            for stage, t in (("g_a", med(rc, "g_a")), ("entropy", med(rc, "entropy")), ("g_s", med(rd, "g_s"))):
                gf = flops[stage] / 1e9
                print(
                    f"{kind:<7} {stage:<8} {gf:>7.1f} GFLOP in {t:>6.3f} s = {gf / t:>6.1f} GFLOP/s ({gf / t / peak:.0%} of nominal peak)"
                )

        conn.send(("symbols", 0))
        symbols = conn.recv()
        print(f"\n== range coder throughput, encode+decode of image 0's {symbols[0].size:,} y symbols per job ==")
        scaling = _coder_scaling(symbols, os.cpu_count() or 1)
        for t, msym in scaling:
            print(f"{t} thread(s): {msym:7.1f} Msym/s  ({msym / scaling[0][1]:.2f}x one thread, ideal {t:.2f}x)")

    batches = [int(b) for b in args.batch.split(",") if b.strip() and int(b) > 1]
    for b in batches:
        print(f"\n== batch {b} vs one at a time ({b} same-size Kodak images; ratio > 1: batching is faster) ==")
        for kind in [k for k in kinds if k != "reference" and workers[k][0].is_alive()]:
            conn = workers[kind][1]
            conn.send(("batch", (b, max(1, args.repeat))))
            try:
                r = conn.recv()
            except EOFError:
                print(
                    f"{kind:<7} worker died (exit code {workers[kind][0].join(5) or workers[kind][0].exitcode}): "
                    f"out of memory? batch {b} of this preset needs several GB per worker"
                )
                continue
            print(
                f"{kind:<7} compress {b / r['single_c']:.3f} -> {b / r['batch_c']:.3f} img/s ({r['single_c'] / r['batch_c']:.2f}x); "
                f"decompress {b / r['single_d']:.3f} -> {b / r['batch_d']:.3f} img/s ({r['single_d'] / r['batch_d']:.2f}x)"
            )

    for proc, conn, _ in workers.values():
        if proc.is_alive():
            conn.send(("stop", None))
        proc.join(30)


if __name__ == "__main__":
    main()
