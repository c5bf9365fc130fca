"""Where a large photo's memory goes: resident memory by coding stage, in one process.

``bench_tiling.py`` reports each command's peak; this says which stage reaches it. It codes
one photo (``--mp`` 3, 12, 24 or 48, made by ``bench_tiling.make_photo``) with
``compress_images`` then ``decompress_blob``, as the CLI does, while a thread samples the
process's resident memory (``/proc/self/statm``) every few milliseconds, and it wraps the
stages (tiled transforms, hyper-synthesis, the slice steps, range coding, the PNG
conversion) to know which one ran when. Prints, per stage and direction, the calls, the
seconds, and the highest resident memory seen while it ran, above the loaded model.

    .venv/bin/python benchmarks/profile_memory.py --random-preset official-small --mp 12
    .venv/bin/python benchmarks/profile_memory.py --mp 48 --quality 6     # bundled store

Memory only: times are printed for orientation, not for comparison (the sampler thread
costs a little).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402

from bench_tiling import make_photo, random_store  # noqa: E402
from tcm_serve.codec import engine as engine_mod  # noqa: E402
from tcm_serve.codec import pipeline, rans, tiling  # noqa: E402
from tcm_serve.imageio import read_image  # noqa: E402
from tcm_serve.store import ModelStore  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Sampler:
    """Resident memory sampled every ``period`` seconds, attributed to the innermost stage
    running at the time (the stack of :meth:`stage` calls)."""

    def __init__(self, period: float = 0.003) -> None:
        self.period = period
        self.stack: list[str] = ["other"]
        self.peak: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.direction = "load"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._record(rss_bytes())
            time.sleep(self.period)

    def _record(self, rss: int) -> None:
        key = f"{self.direction}: {self.stack[-1]}"
        self.peak[key] = max(self.peak[key], rss)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def wrap(self, owner: object, name: str, label: str) -> None:
        """Replace ``owner.name`` by a wrapper that runs it as stage ``label``."""
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def staged(*args, **kwargs):
            key = f"{self.direction}: {label}"
            self._record(rss_bytes())
            self.stack.append(label)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._record(rss_bytes())
                self.seconds[key] += time.perf_counter() - t0
                self.calls[key] += 1
                self.stack.pop()

        setattr(owner, name, staged)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mp", type=int, default=12, choices=(3, 12, 24, 48))
    ap.add_argument("--random-preset", help="code with random weights of this layout (e.g. official-small)")
    ap.add_argument("--quality", type=int, default=6, help="bundled store level (without --random-preset)")
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tcm-bench-tiling")
    ap.add_argument("--blob", type=Path, help="decode this .tcm only (made by --save-blob), in a fresh process")
    ap.add_argument("--save-blob", type=Path, help="write the blob here (for a later --blob run)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    photo = make_photo(args.work, args.mp)  # (only its name with --blob)
    if args.random_preset:
        store, quality = ModelStore(random_store(args.work, args.random_preset)), 1
    else:
        store, quality = ModelStore(ROOT / "model_store"), args.quality

    s = Sampler()
    for owner, name, label in (
        (tiling.Tiling, "analysis", "g_a (tiled)"),
        (tiling.Tiling, "synthesis", "g_s (tiled)"),
        (tiling.TiledEntropyStages, "hyper_synthesis", "hyper-synthesis"),
        (tiling.TiledEntropyStages, "encode_slice", "slice step"),
        (tiling.TiledEntropyStages, "slice_params", "slice parameters"),
        (tiling.TiledEntropyStages, "refine", "LRP"),
        (tiling.TiledEntropyStages, "decoder_params", "slice parameters"),
        (tiling.TiledEntropyStages, "refine_from_gate", "LRP"),
        (engine_mod.Engine, "encode_symbols", "range coding"),
        (rans.RansDecoder, "decode", "range decoding"),
        (pipeline, "tensor_to_pixels", "to pixels"),
        (pipeline, "padded_batch", "padding"),
    ):
        if hasattr(owner, name):
            s.wrap(owner, name, label)
    s.start()
    lm = pipeline.load_model(store, quality, torch.device("cpu"), tile=args.tile)
    lm.engine.portable_path  # noqa: B018 - the float64 copy is part of the model's memory
    model = rss_bytes()
    t_enc = 0.0
    if args.blob:
        blob = args.blob.read_bytes()
    else:
        s.direction = "encode"
        img = read_image(photo, max_pixels=10**9)
        t0 = time.perf_counter()
        blob = pipeline.compress_images(lm, [img])[0].blob
        t_enc = time.perf_counter() - t0
        del img
        if args.save_blob:
            args.save_blob.write_bytes(blob)
    s.direction = "decode"
    t0 = time.perf_counter()
    out = pipeline.decompress_blob(blob, lambda h: lm, max_pixels=10**9)
    t_dec = time.perf_counter() - t0
    s.stop()
    del out
    gib = 2**30
    print(f"{photo.name}, {store.root.name} q{quality}, tile {args.tile}, {args.threads} threads")
    print(f"model resident {model / gib:.2f} GiB; encode {t_enc:.1f} s, decode {t_dec:.1f} s\n")
    print("| stage | calls | s | peak GiB above model |")
    print("| --- | --- | --- | --- |")
    for key in sorted(s.peak, key=lambda k: (k.split(":")[0] != "encode", -s.peak[k])):
        if key.startswith("load"):
            continue
        print(f"| {key} | {s.calls.get(key, '')} | {s.seconds.get(key, 0):.1f} | {(s.peak[key] - model) / gib:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
