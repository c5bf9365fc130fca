"""Peak memory and time of whole ``tcm compress`` / ``tcm decompress`` commands on large photos,
whole-image against tiled transforms (tcm_serve/codec/tiling.py), for docs/codec.md ("Tiling").

Photos of about 3, 12, 24 and 48 megapixels (4:3) are made once from a photo in
``../shared/data/train`` (Lanczos resampling) into ``--work``. For each size and each ``--tiles``
value it runs the two commands as child processes and reads each one's peak resident memory
from the kernel (``wait4`` rusage), its wall time, the blob's bits per pixel and the PSNR of the
round trip. ``--whole-max-mp`` keeps whole-image runs (``--tile 0``) to sizes that fit this
machine's memory. "Model" is the peak of the same commands on a 256x256 image: the loaded
models and interpreter, which the table's "above model" column subtracts.

    .venv/bin/python benchmarks/bench_tiling.py --seam-figure docs/img/tiling-seam.png  # bundled store, q6
    .venv/bin/python benchmarks/bench_tiling.py --random-preset official-small --sizes 3,12,48 --whole-max-mp 3

``--random-preset`` codes with a store of one randomly initialised model of that architecture
(made in ``--work``): the official layouts use the same memory and time with random weights as
with trained ones, which this repository does not ship; its bpp and PSNR mean nothing.

Runs one command at a time (the machine's cores are the commands' own); prints a markdown
table and, with ``--json``, writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TCM_SHARED_DIR") or ROOT.parent / "shared")
SOURCE = SHARED / "data" / "train" / "debian-wallpaper-photos" / "lomiri2004_Kleiber_by_Lukas_Baubkus.jpg"
#: Megapixels -> (width, height), 4:3 like a phone camera.
SIZES = {3: (2048, 1536), 12: (4032, 3024), 24: (5664, 4248), 48: (8000, 6000)}
Image.MAX_IMAGE_PIXELS = None  # our own photos, made here
sys.path.insert(0, str(ROOT))

from tcm_serve.evaluation.metrics import psnr  # noqa: E402


def make_photo(work: Path, mp: int) -> Path:
    """The ``mp``-megapixel photo (made once)."""
    w, h = SIZES[mp]
    path = work / f"photo-{w}x{h}.png"
    if not path.exists():
        if not SOURCE.exists():
            raise SystemExit(f"needs the training photos: {SOURCE} not found")
        Image.open(SOURCE).convert("RGB").resize((w, h), Image.LANCZOS).save(path, compress_level=1)
    return path


def random_store(work: Path, name: str) -> Path:
    """A store at ``work`` holding one randomly initialised ``name`` model as quality 1 (made once)."""
    import torch

    from tcm_serve.model.config import preset
    from tcm_serve.model.tcm import TCM
    from tcm_serve.store import ModelStore

    root = work / f"store-{name}"
    if not (root / "manifest.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        checkpoint = work / f"random-{name}.pth"
        torch.save(TCM(preset(name)).state_dict(), checkpoint)
        ModelStore(root).import_checkpoint(checkpoint, 1, preset(name))
    return root


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of one child process; exits on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err}")
    return wall, usage.ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def round_trip(tcm: list[str], photo: Path, work: Path, tile: int, quality: int, common: list[str]) -> dict:
    """Compress then decompress ``photo`` with ``--tile tile``: times, peaks, bpp and PSNR."""
    blob, png = work / f"{photo.stem}-t{tile}.tcm", work / f"{photo.stem}-t{tile}.png"
    options = ["--tile", str(tile), "--max-pixels", str(10**9), "--force", *common]
    enc_s, enc_gib = run([*tcm, "compress", str(photo), "-o", str(blob), "-q", str(quality), *options])
    dec_s, dec_gib = run([*tcm, "decompress", str(blob), "-o", str(png), *options])
    src = np.asarray(Image.open(photo).convert("RGB"))
    out = np.asarray(Image.open(png).convert("RGB"))
    return {
        "encode_s": enc_s,
        "encode_gib": enc_gib,
        "decode_s": dec_s,
        "decode_gib": dec_gib,
        "bpp": 8 * blob.stat().st_size / (src.shape[0] * src.shape[1]),
        "psnr": psnr(src, out),
    }


def seam_figure(work: Path, photo: Path, tile: int, out: Path, size: int = 96, zoom: int = 4) -> None:
    """Original, whole, tiled, and the tiled-minus-whole difference (x8, gray) of a ``size``-pixel
    square centred where four cores meet, zoomed ``zoom`` x: what a seam would look like."""
    from PIL import ImageDraw

    from tcm_serve.codec.geometry import DEFAULT_HALO, Geometry
    from tcm_serve.codec.tiling import TilePlan

    src = np.asarray(Image.open(photo).convert("RGB"))
    geometry = Geometry.for_image(*src.shape[:2])
    plan = TilePlan(*geometry.padded_shape, tile, DEFAULT_HALO, equal=True)
    left, _, top, _ = geometry.pad
    cy, cx = plan.rows[1].core_start - top, plan.cols[1].core_start - left
    box = (slice(cy - size // 2, cy + size // 2), slice(cx - size // 2, cx + size // 2))
    whole = np.asarray(Image.open(work / f"{photo.stem}-t0.png").convert("RGB"))[box]
    tiled = np.asarray(Image.open(work / f"{photo.stem}-t{tile}.png").convert("RGB"))[box]
    diff = np.clip(np.abs(tiled.astype(int) - whole.astype(int)).max(axis=2) * 8, 0, 255).astype(np.uint8)
    panels = [src[box], whole, tiled, np.repeat(diff[:, :, None], 3, axis=2)]
    labels = ["original", "whole image", f"tiles of {tile}", "|tiled - whole| x 8"]
    w = size * zoom
    canvas = Image.new("RGB", (4 * w + 30, w + 24), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (panel, label) in enumerate(zip(panels, labels)):
        canvas.paste(Image.fromarray(panel).resize((w, w), Image.NEAREST), (k * (w + 10), 24))
        draw.text((k * (w + 10) + 4, 6), label, fill="black")
    canvas.save(out)
    print(f"seam figure: {out} (core corner at row {cy}, column {cx} of the image)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", help="model store (default: the bundled one)")
    ap.add_argument("--quality", type=int, default=6)
    ap.add_argument("--random-preset", help="code with a random model of this preset instead (e.g. official-small)")
    ap.add_argument("--sizes", default="3,12,24,48", help="megapixels, of " + ",".join(map(str, SIZES)))
    ap.add_argument("--tiles", default="0,1024", help="--tile values to compare (0: whole)")
    ap.add_argument("--whole-max-mp", type=int, default=12, help="largest size run whole (default 12)")
    ap.add_argument("--work", help="where photos and outputs go (default: a temporary directory)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--seam-figure", help="write a zoomed crop where tiles meet (needs a size run whole and tiled)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-tiling-"))
    work.mkdir(parents=True, exist_ok=True)
    tcm = [sys.executable, "-c", "from tcm_serve.cli import run; raise SystemExit(run())"]
    if args.random_preset:
        args.store, args.quality = str(random_store(work, args.random_preset)), 1
    common = ["--device", "cpu", *(["--store", args.store] if args.store else [])]
    small = work / "small.png"
    Image.open(SOURCE).convert("RGB").resize((256, 256), Image.LANCZOS).save(small)
    base = round_trip(tcm, small, work, 0, args.quality, common)
    model_gib = max(base["encode_gib"], base["decode_gib"])
    print(f"model: {model_gib:.2f} GiB peak on a 256x256 image", flush=True)
    rows = []
    print(
        "| photo | tile | encode s | s/MP | peak GiB (above model) | decode s | s/MP | peak GiB (above model) | bpp | PSNR |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mp in (int(s) for s in args.sizes.split(",")):
        photo = make_photo(work, mp)
        w, h = SIZES[mp]
        for tile in (int(t) for t in args.tiles.split(",")):
            if tile == 0 and mp > args.whole_max_mp:
                continue
            r = round_trip(tcm, photo, work, tile, args.quality, common)
            mpx = w * h / 1e6
            rows.append({"megapixels": mpx, "width": w, "height": h, "tile": tile, "model_gib": model_gib, **r})
            print(
                f"| {w}x{h} | {tile or 'whole'} | {r['encode_s']:.1f} | {r['encode_s'] / mpx:.2f} | "
                f"{r['encode_gib']:.2f} ({r['encode_gib'] - model_gib:.2f}) | {r['decode_s']:.1f} | "
                f"{r['decode_s'] / mpx:.2f} | {r['decode_gib']:.2f} ({r['decode_gib'] - model_gib:.2f}) | "
                f"{r['bpp']:.4f} | {r['psnr']:.3f} |",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.seam_figure:
        both = [r for r in rows if r["tile"] == 0]
        tile = next(r["tile"] for r in rows if r["tile"])
        w, h = both[-1]["width"], both[-1]["height"]
        seam_figure(work, work / f"photo-{w}x{h}.png", tile, Path(args.seam_figure))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
