"""Load generator for ``tcm serve``: throughput and latency percentiles against concurrency,
with batching off and on, next to the codec called directly, in one run.

For each batching mode it starts a real ``tcm serve`` on 127.0.0.1 (a free port), waits for
/readyz, and for each concurrency level sends a bounded number of requests (``--requests``,
and never longer than ``--max-seconds`` per level) from that many client threads. The
"direct" rows call the codec in-process (``compress_images`` / ``decompress_blob``, one
image at a time) on the same images: the difference at concurrency 1 is the service's
overhead (HTTP, image decode, queueing, PNG encode). Loopback only; bounded; stops by itself.

    .venv/bin/python benchmarks/bench_service.py                      # kit model, 256x256 Kodak crops
    .venv/bin/python benchmarks/bench_service.py --store model_store --quality 3 --size 512

Without ``--store`` it imports the conformance checkpoint (../shared/conformance) into a
temporary store. Images: crops of the Kodak set (../shared/data/kodak), else synthetic.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TCM_SHARED_DIR") or ROOT.parent / "shared")
sys.path.insert(0, str(ROOT))

from tcm_serve.cli.local import environment_without_settings, free_port, serve_command, wait_ready  # noqa: E402


def make_store(tmp: Path) -> tuple[Path, int]:
    from tcm_serve.model.config import preset
    from tcm_serve.store import ModelStore

    ckpt = SHARED / "conformance" / "tcm-small-conformance.pth.tar"
    ModelStore(tmp).import_checkpoint(ckpt, 3, preset("conformance-small"), lmbda=0.013, source="conformance kit")
    return tmp, 3


def images(n: int, size: int) -> list[bytes]:
    kodak = sorted((SHARED / "data" / "kodak").glob("*.png"))
    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        if kodak:
            img = Image.open(kodak[i % len(kodak)]).convert("RGB")
            x = int(rng.integers(0, img.width - size + 1))
            y = int(rng.integers(0, img.height - size + 1))
            img = img.crop((x, y, x + size, y + size))
        else:
            img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Row:
    def __init__(self, mode: str, op: str, conc: int, lat: list[float], wall: float, errors: int, batch: float | None):
        self.mode, self.op, self.conc, self.lat, self.wall, self.errors, self.batch = (
            mode,
            op,
            conc,
            lat,
            wall,
            errors,
            batch,
        )

    def cells(self) -> list[str]:
        n = len(self.lat)
        b = "-" if self.batch is None else f"{self.batch:.2f}"
        return [
            self.mode,
            self.op,
            str(self.conc),
            str(n),
            str(self.errors),
            f"{n / self.wall:.2f}",
            f"{1000 * pct(self.lat, 50):.0f}",
            f"{1000 * pct(self.lat, 95):.0f}",
            f"{1000 * pct(self.lat, 99):.0f}",
            b,
        ]


HEAD = ["mode", "op", "conc", "n", "err", "req/s", "p50 ms", "p95 ms", "p99 ms", "mean batch"]


def table(rows: list[Row]) -> str:
    cells = [HEAD] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEAD))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cell, widths))) for cell in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def batch_mean(url: str) -> tuple[float, float]:
    """(sum, count) of tcm_batch_size over both kinds."""
    from prometheus_client.parser import text_string_to_metric_families

    s = c = 0.0
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        if fam.name == "tcm_batch_size":
            for smp in fam.samples:
                if smp.name.endswith("_sum"):
                    s += smp.value
                elif smp.name.endswith("_count"):
                    c += smp.value
    return s, c


def load(url: str, op: str, payloads: list[bytes], quality: int, conc: int, n: int, max_s: float):
    """n requests from conc threads (each with its own connection), stopping at max_s."""
    lat: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(n))
    stop_at = time.monotonic() + max_s

    def client_loop():
        nonlocal errors
        with httpx.Client(base_url=url, timeout=300) as c:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                data = payloads[i % len(payloads)]
                t0 = time.perf_counter()
                if op == "compress":
                    r = c.post(
                        "/compress", params={"quality": quality}, content=data, headers={"content-type": "image/png"}
                    )
                else:
                    r = c.post("/decompress", content=data, headers={"content-type": "application/x-tcm"})
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        lat.append(dt)
                    else:
                        errors += 1

    s0, c0 = batch_mean(url)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as ex:
        for f in [ex.submit(client_loop) for _ in range(conc)]:
            f.result()
    wall = time.perf_counter() - t0
    s1, c1 = batch_mean(url)
    return lat, wall, errors, ((s1 - s0) / (c1 - c0) if c1 > c0 else None)


def serve(store: Path, port: int, batch: int, delay_ms: float, coder_threads: int, log) -> subprocess.Popen:
    options = ["--max-batch-size", str(batch), "--max-batch-delay-ms", str(delay_ms)]
    options += ["--coder-threads", str(coder_threads), "--max-queue", "256", "--log-level", "warning"]
    return subprocess.Popen(
        serve_command(store, port, *options),
        cwd=ROOT,
        env=environment_without_settings(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def direct_rows(
    store: Path, quality: int, pngs: list[bytes], blobs: list[bytes], n: int, max_s: float, label: str = "direct"
) -> list[Row]:
    import torch

    from tcm_serve.codec.pipeline import compress_images, decompress_blob, load_model
    from tcm_serve.imageio import decode_image
    from tcm_serve.store import ModelStore

    lm = load_model(ModelStore(store), quality, torch.device("cpu"))
    rows = []
    compress_images(lm, [decode_image(pngs[0])])  # warm-up (first calls pay one-off set-up)
    decompress_blob(blobs[0], lambda h: lm)
    for op in ("compress", "decompress"):
        lat = []
        t_end = time.monotonic() + max_s
        t0 = time.perf_counter()
        for i in range(n):
            if time.monotonic() > t_end:
                break
            s = time.perf_counter()
            if op == "compress":
                compress_images(lm, [decode_image(pngs[i % len(pngs)])])
            else:
                decompress_blob(blobs[i % len(blobs)], lambda h: lm)
            lat.append(time.perf_counter() - s)
        rows.append(Row(label, op, 1, lat, time.perf_counter() - t0, 0, None))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="model store (default: the conformance checkpoint in a temp store)")
    ap.add_argument("--quality", type=int, help="quality level (with --store)")
    ap.add_argument("--size", type=int, default=256, help="square crop size of the test images (default 256)")
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    ap.add_argument("--requests", type=int, default=24, help="requests per (mode, op, concurrency)")
    ap.add_argument("--max-seconds", type=float, default=60, help="time bound per (mode, op, concurrency)")
    ap.add_argument("--batch", type=int, default=4, help="max batch size of the batching-on mode")
    ap.add_argument("--delay-ms", type=float, default=10, help="max batch delay of the batching-on mode")
    ap.add_argument("--coder-threads", type=int, default=2)
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        if args.store:
            store, quality = Path(args.store), args.quality
            if quality is None:
                raise SystemExit("--quality is required with --store")
        else:
            store, quality = make_store(Path(tmp) / "store")
        pngs = images(8, args.size)
        import torch

        from tcm_serve.codec.pipeline import compress_images, load_model
        from tcm_serve.imageio import decode_image
        from tcm_serve.store import ModelStore

        lm = load_model(ModelStore(store), quality, torch.device("cpu"))
        blobs = [compress_images(lm, [decode_image(p)])[0].blob for p in pngs]
        del lm
        print(
            f"# {args.size}x{args.size} crops, quality {quality}, {os.cpu_count()} CPUs, torch threads "
            f"{torch.get_num_threads()}, {args.requests} requests per row (max {args.max_seconds:g} s)",
            flush=True,
        )
        # the codec in-process, before and after the service runs (this machine may be shared:
        # two measurements bracket the service rows)
        rows = direct_rows(store, quality, pngs, blobs, args.requests, args.max_seconds, "direct (1st)")
        for mode, batch in (("batch off", 1), (f"batch {args.batch}", args.batch)):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            with open(Path(tmp) / f"serve-{port}.log", "wb") as log:
                proc = serve(store, port, batch, args.delay_ms, args.coder_threads, log)
                try:
                    wait_ready(url, proc, 180)
                    for op, payloads in (("compress", pngs), ("decompress", blobs)):
                        load(url, op, payloads, quality, 2, 4, 30)  # warm the connections and caches
                        for conc in levels:
                            lat, wall, err, b = load(url, op, payloads, quality, conc, args.requests, args.max_seconds)
                            rows.append(Row(mode, op, conc, lat, wall, err, b))
                            print(f"  {mode} {op} c={conc}: {len(lat) / wall:.2f} req/s", file=sys.stderr, flush=True)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
        rows += direct_rows(store, quality, pngs, blobs, args.requests, args.max_seconds, "direct (2nd)")
        print(table(rows))
        d = {}
        for r in rows:
            if r.mode.startswith("direct"):
                d[r.op] = min(d.get(r.op, float("inf")), statistics.median(r.lat))
        for r in rows:
            if r.mode == "batch off" and r.conc == 1:
                print(
                    f"# service overhead at concurrency 1, {r.op}: p50 {1000 * (pct(r.lat, 50) - d[r.op]):+.0f} ms "
                    f"over the direct codec (better of the two direct p50s: {1000 * d[r.op]:.0f} ms)"
                )


if __name__ == "__main__":
    main()
