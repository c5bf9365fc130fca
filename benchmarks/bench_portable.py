"""What portable bitstreams (format version 2) cost against exact ones (version 1).

For each Kodak image, side by side in one run (this machine is noisy; the order of the two
alternates per image): encode and decode time inside a warm process, file size, hints, and
the decoded PSNR, for the portable path (float64 entropy parameters + hints) and the exact
path (float32, the reference's strings). Models: levels of a store (real weights: sizes and
RD are meaningful), or a preset's layout with a fixed random initialisation (timing only).

    .venv/bin/python benchmarks/bench_portable.py --store model_store --qualities 1,2,4,6 --images 24
    .venv/bin/python benchmarks/bench_portable.py --preset official-small --images 3

Prints one table row per model and, with --json, writes every per-image measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tcm_serve.codec.container import unpack
from tcm_serve.codec.hints import decode_hints
from tcm_serve.codec.pipeline import LoadedModel, compress_images, decompress_blob, load_model
from tcm_serve.evaluation.metrics import psnr
from tcm_serve.imageio import read_image
from tcm_serve.model.config import preset
from tcm_serve.model.tcm import TCM
from tcm_serve.store import ModelStore

KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"
MODES = {"exact": False, "portable": True}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _random_init(name: str, tmp: Path) -> tuple[ModelStore, int]:
    """A store holding ``name``'s layout with seed-0 weights (timing only)."""
    torch.manual_seed(0)
    path = tmp / f"{name}-random.pt"
    torch.save({"state_dict": TCM(preset(name)).state_dict()}, path)
    store = ModelStore(tmp / "store")
    store.import_checkpoint(path, 1, preset(name), source="random init (benchmark)")
    return store, 1


def measure(lm: LoadedModel, images: list, repeat: int) -> list[dict]:
    """Per image and mode: best-of-``repeat`` encode / decode seconds, bytes, hints, PSNR."""
    n_tables = lm.engine.y_table.num_tables
    compress_images(lm, images[:1], portable=True)  # warm-up: first calls pay one-off set-up
    compress_images(lm, images[:1], portable=False)
    rows = []
    for i, img in enumerate(images):
        row: dict = {"image": i + 1}
        order = list(MODES) if i % 2 == 0 else list(reversed(MODES))
        for mode in order:
            enc, dec = [], []
            for _ in range(repeat):
                (res,), t_enc = _timed(lambda: compress_images(lm, [img], portable=MODES[mode]))
                out, t_dec = _timed(lambda: decompress_blob(res.blob, lambda h: lm))
                enc.append(t_enc)
                dec.append(t_dec)
            f = unpack(res.blob)
            n_symbols = lm.entry.arch.M * 16 * f.header.z_shape[0] * f.header.z_shape[1]
            hints = decode_hints(f.hints, n_symbols, n_tables)[0].size if f.header.portable else 0
            row[mode] = {
                "bytes": len(res.blob),
                "bpp": 8 * len(res.blob) / (img.width * img.height),
                "hints": int(hints),
                "symbols": n_symbols,
                "encode_s": min(enc),
                "decode_s": min(dec),
                "psnr": psnr(img.pixels, out.pixels.reshape(img.pixels.shape)),
            }
        rows.append(row)
    return rows


def summarise(label: str, rows: list[dict]) -> dict:
    def total(mode: str, key: str) -> float:
        return sum(r[mode][key] for r in rows)

    s = {
        "model": label,
        "images": len(rows),
        "bytes_overhead_pct": 100 * (total("portable", "bytes") / total("exact", "bytes") - 1),
        "hints_per_image": total("portable", "hints") / len(rows),
        "hint_rate": total("portable", "hints") / total("portable", "symbols"),
        "encode_ratio": total("portable", "encode_s") / total("exact", "encode_s"),
        "decode_ratio": total("portable", "decode_s") / total("exact", "decode_s"),
        "encode_s": {m: total(m, "encode_s") / len(rows) for m in MODES},
        "decode_s": {m: total(m, "decode_s") / len(rows) for m in MODES},
        "bpp": {m: total(m, "bpp") / len(rows) for m in MODES},
        "psnr_db": {m: statistics.fmean(r[m]["psnr"] for r in rows) for m in MODES},
    }
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--store", help="model store (real weights)")
    group.add_argument("--preset", help="a preset's layout with random weights (timing only)")
    ap.add_argument("--qualities", default="", help="comma-separated levels of --store (default: all)")
    ap.add_argument("--images", type=int, default=3, help="how many Kodak images, from kodim01")
    ap.add_argument("--repeat", type=int, default=1, help="runs per image and mode (the best counts)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    ap.add_argument("--kodak", default=str(KODAK))
    ap.add_argument("--json", help="write every measurement here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = [read_image(p) for p in sorted(Path(args.kodak).glob("kodim*.png"))[: args.images]]
    cpu = torch.device("cpu")

    models: list[tuple[str, ModelStore, int]] = []
    if args.preset:
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="bench-portable-"))
        store, q = _random_init(args.preset, tmp)
        models.append((f"{args.preset} (random init)", store, q))
    else:
        store = ModelStore(args.store or Path(__file__).resolve().parents[1] / "model_store")
        qs = [int(q) for q in args.qualities.split(",") if q] or [e.quality for e in store.entries()]
        models += [(f"{store.entry(q).preset or 'store'} q{q}", store, q) for q in qs]

    print(f"Kodak x{len(images)}, {args.threads} thread(s), backend {args.backend}, best of {args.repeat}")
    print(
        "| model | bytes | hints/image | encode s (exact -> portable) | decode s (exact -> portable) | bpp | PSNR dB (exact / portable) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    results = []
    for label, store, q in models:
        lm = load_model(store, q, cpu, args.backend)
        rows = measure(lm, images, args.repeat)
        s = summarise(label, rows)
        results.append({"summary": s, "rows": rows})
        print(
            f"| {label} | {s['bytes_overhead_pct']:+.3f}% | {s['hints_per_image']:.2f} | "
            f"{s['encode_s']['exact']:.3f} -> {s['encode_s']['portable']:.3f} ({100 * (s['encode_ratio'] - 1):+.0f}%) | "
            f"{s['decode_s']['exact']:.3f} -> {s['decode_s']['portable']:.3f} ({100 * (s['decode_ratio'] - 1):+.0f}%) | "
            f"{s['bpp']['exact']:.4f} / {s['bpp']['portable']:.4f} | {s['psnr_db']['exact']:.3f} / {s['psnr_db']['portable']:.3f} |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"threads": args.threads, "backend": args.backend, "models": results}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
