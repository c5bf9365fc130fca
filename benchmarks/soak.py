"""Overload burst + soak of a real ``tcm serve`` on 127.0.0.1, for docs/reliability.md.

::

    .venv/bin/python benchmarks/soak.py --duration-s 600          # about 11 minutes in all

1. Start ``tcm serve`` (conformance model as quality 3, CPU, batching off, ``--max-queue``).
2. Overload burst (bounded): ``--burst`` simultaneous compressions against the queue bound.
   Reported: how many were accepted / refused (429), that every accepted one is correct,
   latency of accepted and refused requests, the Retry-After values, the largest queue
   depth seen on /metrics, and how long until the service answers normally again.
3. Soak (``--duration-s``): ``--concurrency`` clients in a loop of mixed traffic -- compress
   (three sizes, RGB and grayscale), decompress, bad input (random bytes, truncated PNG,
   corrupted blob), probes and metrics. Every answer is checked: compressions must equal
   the first blob made for that image, decompressions the first PNG made for that blob,
   bad input a 4xx. A few times during the run the local CLI (``tcm decompress``) decodes
   a served blob and must give the same pixels as the API. Every ``--sample-every-s`` the
   server's resident memory, open file descriptors and thread count are read from /proc.
4. SIGTERM; the exit code must be 0.

The report gives counts, latencies and the least-squares slope of RSS / fds / threads over
the samples after the first ``--warmup-fraction`` of the soak. Exit status 1 if any answer
was wrong or a 5xx, or if the server did not exit 0.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tcm_serve.cli.local import environment_without_settings, free_port, serve_command, wait_ready  # noqa: E402

from helpers import KIT_CHECKPOINT, make_png  # noqa: E402

QUALITY = 3


# -- the server -----------------------------------------------------------------------------------------
def make_store(root: Path) -> Path:
    from tcm_serve.model.config import preset
    from tcm_serve.store import ModelStore

    ModelStore(root).import_checkpoint(
        KIT_CHECKPOINT, QUALITY, preset("conformance-small"), lmbda=0.013, source="conformance kit"
    )
    return root


def start_server(store: Path, port: int, log: Path, max_queue: int) -> subprocess.Popen:
    options = ["--max-batch-size", "1", "--max-queue", str(max_queue)]
    options += ["--request-timeout-s", "120", "--shutdown-grace-s", "60"]
    return subprocess.Popen(
        serve_command(store, port, *options),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=environment_without_settings(),
        cwd=ROOT,
    )


def sample_proc(pid: int) -> dict[str, float]:
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "Threads"):
                status[k] = int(v.split()[0])
    return {
        "rss_mb": status["VmRSS"] / 1024.0,
        "threads": float(status["Threads"]),
        "fds": float(len(os.listdir(f"/proc/{pid}/fd"))),
    }


def slope_per_min(ts: list[float], ys: list[float]) -> float:
    if len(ts) < 3:
        return float("nan")
    return float(np.polyfit(np.asarray(ts) / 60.0, np.asarray(ys), 1)[0])


def metric(url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == name for s in f.samples)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# -- phase 2: overload burst ----------------------------------------------------------------------------------
def overload(url: str, png: bytes, expected: bytes, burst: int) -> dict:
    results: list[tuple[int, float, bool, str | None]] = []
    depths: list[float] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            depths.append(metric(url, "tcm_queue_depth"))
            time.sleep(0.02)

    def one() -> None:
        t0 = time.monotonic()
        r = httpx.post(url + "/compress", content=png, headers={"connection": "close"}, timeout=300)
        results.append(
            (
                r.status_code,
                time.monotonic() - t0,
                r.content == expected if r.status_code == 200 else None,
                r.headers.get("retry-after"),
            )
        )

    s = threading.Thread(target=sampler)
    s.start()
    threads = [threading.Thread(target=one) for _ in range(burst)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    burst_s = time.monotonic() - t0
    stop.set()
    s.join(60)
    t1 = time.monotonic()
    while True:  # recovery: an ordinary request answered normally
        r = httpx.post(url + "/compress", content=png, timeout=300)
        if r.status_code == 200 and r.content == expected:
            break
        time.sleep(0.05)
    codes = Counter(c for c, _, _, _ in results)
    ok = [dt for c, dt, _, _ in results if c == 200]
    refused = [dt for c, dt, _, _ in results if c == 429]
    return {
        "burst": burst,
        "codes": dict(codes),
        "accepted_correct": sum(1 for _, _, good, _ in results if good),
        "accepted_p50_s": pct(ok, 50),
        "accepted_max_s": max(ok, default=float("nan")),
        "refused_p50_s": pct(refused, 50),
        "refused_max_s": max(refused, default=float("nan")),
        "retry_after": sorted({int(ra) for c, _, _, ra in results if c == 429 and ra}),
        "max_queue_depth_seen": max(depths, default=0.0),
        "burst_s": burst_s,
        "recovered_after_s": time.monotonic() - t1,
    }


# -- phase 3: soak ---------------------------------------------------------------------------------------------
class Traffic:
    """The mixed workload and its oracle."""

    def __init__(self, url: str) -> None:
        self.url = url
        rng = np.random.default_rng(3)
        self.images = {
            "rgb200x136": make_png(136, 200, seed=1),
            "gray64": make_png(64, 64, "L", seed=2),
            "rgb300x260": make_png(260, 300, seed=3),
        }
        self.blobs: dict[str, bytes] = {}
        self.pngs: dict[str, bytes] = {}
        with httpx.Client(base_url=url, timeout=300) as c:
            for k, img in self.images.items():
                self.blobs[k] = c.post("/compress", content=img).content
                self.pngs[k] = c.post("/decompress", content=self.blobs[k]).content
        blob = bytearray(self.blobs["gray64"])
        blob[len(blob) // 2] ^= 0x55
        self.bad = [bytes(rng.integers(0, 256, 3000, dtype=np.uint8)), self.images["rgb200x136"][:700], bytes(blob)]
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.failures: list[str] = []

    def one(self, c: httpx.Client, rnd: random.Random) -> None:
        op = rnd.choices(["compress", "decompress", "bad", "probe"], weights=[40, 30, 15, 15])[0]
        t0 = time.monotonic()
        if op == "compress":
            k = rnd.choice(list(self.images))
            r = c.post("/compress", content=self.images[k])
            good = r.status_code == 200 and r.content == self.blobs[k]
        elif op == "decompress":
            k = rnd.choice(list(self.blobs))
            r = c.post("/decompress", content=self.blobs[k])
            good = r.status_code == 200 and r.content == self.pngs[k]
        elif op == "bad":
            body = rnd.choice(self.bad)
            r = c.post(rnd.choice(["/compress", "/decompress"]), content=body)
            good = 400 <= r.status_code < 500 and set(r.json()) == {"error", "detail"}
        else:
            r = c.get(rnd.choice(["/healthz", "/readyz", "/metrics", "/v1/models"]))
            good = r.status_code == 200
        if r.status_code == 429:  # back-pressure is a correct answer under load
            good = "retry-after" in r.headers
        dt = time.monotonic() - t0
        with self.lock:
            self.counts[(op, r.status_code)] += 1
            self.latency[op].append(dt)
            if not good:
                self.failures.append(f"{op} -> {r.status_code} {r.text[:120]!r}")


def cli_spot_check(store: Path, traffic: Traffic, tmp: Path) -> bool:
    """The local CLI decodes a served blob to the pixels the API returned."""
    from PIL import Image

    k = "rgb300x260"
    (tmp / f"{k}.tcm").write_bytes(traffic.blobs[k])
    env = {kk: v for kk, v in os.environ.items() if not kk.startswith("TCM_")}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tcm_serve.cli.main",
            "decompress",
            str(tmp / f"{k}.tcm"),
            "-o",
            str(tmp / f"{k}.cli.png"),
            "--store",
            str(store),
            "--device",
            "cpu",
            "--force",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    if r.returncode != 0:
        return False
    a = np.asarray(Image.open(tmp / f"{k}.cli.png"))
    b = np.asarray(Image.open(io.BytesIO(traffic.pngs[k])))
    return a.shape == b.shape and bool(np.array_equal(a, b))


def soak(url: str, pid: int, store: Path, tmp: Path, args) -> dict:
    traffic = Traffic(url)
    samples: list[tuple[float, dict]] = []
    t_start = time.monotonic()
    end = t_start + args.duration_s
    stop = threading.Event()

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(base_url=url, timeout=300) as c:
            while time.monotonic() < end and not stop.is_set():
                traffic.one(c, rnd)

    clients = [threading.Thread(target=client, args=(i,)) for i in range(args.concurrency)]
    for t in clients:
        t.start()
    cli_checks: list[bool] = []
    next_cli = [t_start + args.duration_s * f for f in (0.33, 0.66)]
    while time.monotonic() < end:
        samples.append((time.monotonic() - t_start, sample_proc(pid)))
        if next_cli and time.monotonic() >= next_cli[0]:
            next_cli.pop(0)
            cli_checks.append(cli_spot_check(store, traffic, tmp))
        time.sleep(min(args.sample_every_s, max(0.0, end - time.monotonic())))
    for t in clients:
        t.join(600)
    samples.append((time.monotonic() - t_start, sample_proc(pid)))
    cli_checks.append(cli_spot_check(store, traffic, tmp))
    keep = [(t, s) for t, s in samples if t >= args.warmup_fraction * args.duration_s]
    ts = [t for t, _ in keep]
    out = {
        "duration_s": time.monotonic() - t_start,
        "concurrency": args.concurrency,
        "requests": sum(traffic.counts.values()),
        "by_op_status": {f"{op} {code}": n for (op, code), n in sorted(traffic.counts.items())},
        "failures": traffic.failures[:20],
        "failure_count": len(traffic.failures),
        "latency_p50_ms": {op: round(1000 * pct(v, 50), 1) for op, v in traffic.latency.items()},
        "latency_p99_ms": {op: round(1000 * pct(v, 99), 1) for op, v in traffic.latency.items()},
        "cli_spot_checks": cli_checks,
        "samples": len(samples),
    }
    for key in ("rss_mb", "fds", "threads"):
        ys = [s[key] for _, s in keep]
        allv = [s[key] for _, s in samples]
        out[key] = {
            "first": allv[0],
            "last": allv[-1],
            "min": min(allv),
            "max": max(allv),
            "slope_per_min_after_warmup": round(slope_per_min(ts, ys), 3),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=float, default=600.0, help="soak length (default 600)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--sample-every-s", type=float, default=5.0)
    p.add_argument("--warmup-fraction", type=float, default=0.2, help="samples before this fraction are not fitted")
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--burst", type=int, default=64, help="simultaneous requests of the overload burst (0: skip)")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        store = make_store(tmp / "store")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp / "serve.log"
        proc = start_server(store, port, log, args.max_queue)
        report: dict = {"max_queue": args.max_queue}
        try:
            report["ready_after_s"] = round(wait_ready(url, proc, 300), 1)
            png = make_png(136, 200, seed=1)
            expected = httpx.post(url + "/compress", content=png, timeout=300).content
            if args.burst:
                report["overload"] = overload(url, png, expected, args.burst)
                print("overload:", json.dumps(report["overload"]), flush=True)
            report["soak"] = soak(url, proc.pid, store, tmp, args)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    report["exit_code"] = proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    report["exit_code"] = "killed after 120 s"
            else:
                report["exit_code"] = proc.returncode
        text = json.dumps(report, indent=2)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n")
        errors_5xx = sum(n for k, n in report["soak"]["by_op_status"].items() if k.split()[-1].startswith("5"))
        bad = (
            report["soak"]["failure_count"]
            or errors_5xx
            or report["exit_code"] != 0
            or not all(report["soak"]["cli_spot_checks"])
            or (
                "overload" in report
                and report["overload"]["accepted_correct"] != report["overload"]["codes"].get(200, 0)
            )
        )
        if bad:
            print("FAILED: see the report above", file=sys.stderr)
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
