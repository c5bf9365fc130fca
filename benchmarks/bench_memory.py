"""Peak resident memory of a real ``tcm serve``, for the sizing table in docs/deploy.md.

For each quality set (``--qualities``, e.g. ``4`` and ``1,2,4,6``) it starts ``tcm serve`` on
127.0.0.1 (a free port, CPU, batch 1), waits for /readyz and reads the server's high-water
mark (VmHWM in /proc/<pid>/status): "ready". Then, one after the other, it compresses and
decompresses a Kodak image (768x512) and the same image scaled 2x (1536x1024) at the
highest quality served, checks that each decompression gives an image of the right size,
and reads the high-water mark after each round trip. Memory is what the sizing table is
about; the run prints no timings. Loopback only; every request has a deadline.

    .venv/bin/python benchmarks/bench_memory.py                                  # bundled store
    .venv/bin/python benchmarks/bench_memory.py --qualities 4 1,2,4,6 --backend onnx

With ``--backend onnx`` the graphs are exported into a temporary directory first (by the
server, as in production), so "ready" includes what onnxruntime holds.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TCM_SHARED_DIR") or ROOT.parent / "shared")
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


from tcm_serve.cli.local import ServerStartError, environment_without_settings, free_port, serve_command, wait_ready  # noqa: E402
from tcm_serve.client import TcmClient  # noqa: E402

from fuzzing import proc_status  # noqa: E402


def peak_rss_gib(pid: int) -> float:
    """The process's resident high-water mark (VmHWM), GiB."""
    return proc_status(pid)["VmHWM"] / 2**20


def sample_images() -> list[tuple[str, bytes]]:
    """(label, PNG bytes): a Kodak image and the same image scaled 2x."""
    src = SHARED / "data" / "kodak" / "kodim01.png"
    if not src.exists():
        raise SystemExit(f"needs the Kodak images: {src} not found")
    img = Image.open(src).convert("RGB")
    out = []
    for scale in (1, 2):
        im = img.resize((img.width * scale, img.height * scale), Image.BICUBIC) if scale > 1 else img
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append((f"{im.width}x{im.height}", buf.getvalue()))
    return out


def round_trip(url: str, png: bytes, quality: int) -> tuple[int, int]:
    """Compress then decompress through the API; the decoded image's (width, height)."""
    with TcmClient(url, timeout=600) as client:
        blob = client.compress(png, quality=quality)
        return Image.open(io.BytesIO(client.decompress(blob))).size


def measure(store: str, qualities: str, backend: str, images: list[tuple[str, bytes]]) -> list[float]:
    """[ready, after each image's round trip] peak RSS in GiB of one server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as onnx_dir, tempfile.TemporaryFile() as log:
        options = ["--max-batch-size", "1", "--qualities", qualities, "--backend", backend, "--onnx-dir", onnx_dir]
        options += ["--max-pixels", str(4 * 1536 * 1024), "--log-level", "warning"]
        cmd = serve_command(store, port, *options)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environment_without_settings(), stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                wait_ready(url, proc, timeout=900)
            except ServerStartError:
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace")[-3000:])
                raise
            peaks = [peak_rss_gib(proc.pid)]
            top = max(int(q) for q in qualities.split(","))
            for label, png in images:
                size = round_trip(url, png, top)
                if f"{size[0]}x{size[1]}" != label:
                    raise SystemExit(f"decoded {size}, expected {label}")
                peaks.append(peak_rss_gib(proc.pid))
            return peaks
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=str(ROOT / "model_store"))
    ap.add_argument(
        "--qualities",
        nargs="+",
        default=None,
        help="quality sets to serve, one server each (default: the lowest level alone, then all)",
    )
    ap.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    args = ap.parse_args()
    from tcm_serve.errors import TcmError
    from tcm_serve.store import ModelStore

    try:
        levels = sorted(e.quality for e in ModelStore(args.store).entries())
    except TcmError as exc:
        raise SystemExit(f"bench_memory: {exc}") from None
    sets = args.qualities or [str(levels[0]), ",".join(map(str, levels))]
    images = sample_images()
    print(f"store {args.store}, backend {args.backend}, CPU, batch 1; peak resident memory (VmHWM), GiB")
    print("| qualities | ready | " + " | ".join(f"+ {label} round trip" for label, _ in images) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in images) + " |")
    for qs in sets:
        peaks = measure(args.store, qs, args.backend, images)
        print(f"| {qs} | " + " | ".join(f"{p:.2f}" for p in peaks) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
