"""Do the field's packages give the numbers `tcm eval` gave with its own code?

`tcm eval` used to compute MS-SSIM (numpy) and BD-rate (a hand-written PCHIP) itself; it now
delegates both to the packages the field uses, ``pytorch_msssim`` and ``bjontegaard``. This
script is the evidence that the switch did not move the published figures, on the inputs of
the README's evaluation table cut down to a few images: the first N Kodak images coded for
real with every level of the store and with JPEG 4:2:0, WebP and AVIF at their default
sweeps, plus the official TCM points of the conformance kit.

It runs in two modes, because the hand-written code is gone after the switch:

* ``--record``: on a commit whose ``tcm_serve`` still has the old code, code the images and
  write what that code gave (per-image MS-SSIM, BD-rates, and the file sizes, so a later
  run can check it codes the same bytes) to ``benchmarks/results/eval_agreement.json``;
* default: code the same images with the current ``tcm_serve`` and print, against the
  recording, the largest MS-SSIM difference per image and every BD-rate with PCHIP and with
  Akima. Two checks that need no recording ride along: the MS-SSIM wrapper (float32, as
  CompressAI's evaluation runs it) against ``pytorch_msssim`` in float64, and each PCHIP
  BD-rate against an integral of scipy's ``PchipInterpolator`` written out here.

Both modes end (and ``--table-only`` consists of) the check of the README's own table: the
24-image means in docs/results/kodak.json, measured with the old code, put through today's
BD-rate (PCHIP and Akima) and compared with the BD-rates that file records.

    .venv/bin/python benchmarks/eval_agreement.py            # ~4 min on 2 busy cores
    .venv/bin/python benchmarks/eval_agreement.py --table-only  # seconds: no coding
    .venv/bin/python benchmarks/eval_agreement.py --memory      # MS-SSIM peak on a 3.5 MP image
    .venv/bin/python benchmarks/eval_agreement.py --images 2 --store model_store
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from tcm_serve.evaluation import baselines, published, runner
from tcm_serve.evaluation.runner import OURS, Curve, bd_table, code_baseline, code_store, curves_of, load_dataset
from tcm_serve.store import ModelStore

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
RECORD = ROOT / "benchmarks" / "results" / "eval_agreement.json"
README_RUN = ROOT / "docs" / "results" / "kodak.json"
BASELINES = ("jpeg420", "webp", "avif")
ANCHOR = "jpeg420"


class MsSsimTap:
    """Stands in for ``runner.ms_ssim`` while coding: keeps what tcm_serve answers per call
    (and the time it took), and beside it pytorch_msssim in float64 on the same pixels."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.values: list[float] = []
        self.float64: list[float] = []
        self.seconds = 0.0

    def __call__(self, ref: np.ndarray, test: np.ndarray) -> float:
        t0 = time.perf_counter()
        value = self.inner(ref, test)
        self.seconds += time.perf_counter() - t0
        self.values.append(value)
        self.float64.append(_msssim_float64(ref, test))
        return value


def _msssim_float64(ref: np.ndarray, test: np.ndarray) -> float:
    import pytorch_msssim

    def nchw(a: np.ndarray) -> torch.Tensor:
        a = a[:, :, None] if a.ndim == 2 else a
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float64))[None]

    with torch.no_grad():
        return float(pytorch_msssim.ms_ssim(nchw(ref), nchw(test), data_range=255))


def code_all(n_images: int, store_dir: Path) -> tuple[list, MsSsimTap, list[Curve]]:
    """Every measurement (through ``runner``, so with tcm_serve's own metrics), the tap and the curves."""
    data = load_dataset(KODAK, n_images)
    tap = MsSsimTap(runner.ms_ssim)
    runner.ms_ssim = tap  # runner.measure looks the name up at call time
    torch.set_num_threads(1)
    ms = []
    for name in BASELINES:
        ms += code_baseline(name, baselines.CODECS[name].qualities, data)
    store = ModelStore(store_dir)
    ms += code_store(store, [e.quality for e in store.entries()], torch.device("cpu"), data)
    doc = published.load(published.default_path() or "missing: the conformance kit's rd-published.json")
    curves = curves_of(runner.summarise(ms), {}) + [
        Curve(c.name, c.label, "published", c.bpp, c.psnr) for c in published.curves(doc, "Kodak")
    ]
    return ms, tap, curves


def _key(m) -> str:
    return f"{m.codec}/{m.setting}/{m.image}"


def bd_rows(curves: list[Curve], **kw) -> dict[str, dict]:
    return {
        f"{r.test} vs {r.anchor}": {"bd_rate": r.bd_rate, "bd_psnr": r.bd_psnr, "psnr_range": r.psnr_range}
        for r in bd_table(curves, ANCHOR, **kw)
    }


def scipy_pchip_bd_rate(test: Curve, anchor: Curve) -> float | None:
    """BD-rate straight from scipy: PCHIP of log10(bpp) over PSNR, integrated over the overlap."""
    from scipy.interpolate import PchipInterpolator

    def interp(c: Curve) -> PchipInterpolator:
        p, r = np.asarray(c.psnr), np.log10(np.asarray(c.bpp))
        order = np.argsort(p)
        return PchipInterpolator(p[order], r[order])

    fa, ft = interp(anchor), interp(test)
    lo, hi = max(min(anchor.psnr), min(test.psnr)), min(max(anchor.psnr), max(test.psnr))
    if not hi > lo:
        return None
    d = (ft.integrate(lo, hi) - fa.integrate(lo, hi)) / (hi - lo)
    return float((10.0**d - 1.0) * 100.0)


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def record(args) -> None:
    ms, tap, curves = code_all(args.images, args.store)
    doc = {
        "what": "tcm eval's hand-written MS-SSIM (numpy) and BD-rate (PCHIP) on these inputs, before the switch",
        "commit": _commit(),
        "images": sorted({m.image for m in ms}),
        "bytes": {_key(m): m.bytes for m in ms},
        "ms_ssim": {_key(m): m.ms_ssim for m in ms},
        "ms_ssim_seconds": round(tap.seconds, 2),
        "ms_ssim_calls": len(tap.values),
        "bd": bd_rows(curves),
    }
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {RECORD.relative_to(ROOT)}: {len(ms)} measurements, MS-SSIM took {tap.seconds:.1f} s")


def compare(args) -> None:
    old = json.loads(RECORD.read_text())
    ms, tap, curves = code_all(len(old["images"]), args.store)
    changed = [k for k, m in ((_key(m), m) for m in ms) if old["bytes"].get(k) != m.bytes]
    if changed:
        raise SystemExit(f"coded different bytes than the recording for {len(changed)} settings, e.g. {changed[0]}")

    print(f"MS-SSIM, {len(ms)} decoded images: recorded ({old['commit']}) vs now; now vs pytorch_msssim in float64")
    worst_old = worst_f64 = 0.0
    for image in old["images"]:
        mine = [m for m in ms if m.image == image]
        d_old = max(abs(m.ms_ssim - old["ms_ssim"][_key(m)]) for m in mine)
        idx = [i for i, m in enumerate(ms) if m.image == image]
        d_f64 = max(abs(tap.values[i] - tap.float64[i]) for i in idx)
        worst_old, worst_f64 = max(worst_old, d_old), max(worst_f64, d_f64)
        print(f"  {image:<12} max |old - new| {d_old:.2e}   max |new - float64| {d_f64:.2e}   ({len(mine)} settings)")
    print(f"  all images   max |old - new| {worst_old:.2e}   max |new - float64| {worst_f64:.2e}")
    print(
        f"  time in MS-SSIM: {old['ms_ssim_seconds']:.1f} s recorded ({old['ms_ssim_calls']} calls), {tap.seconds:.1f} s now"
    )

    by_name = {c.name: c for c in curves}
    methods = {"pchip": bd_rows(curves)}
    if "method" in inspect.signature(bd_table).parameters:
        methods = {m: bd_rows(curves, method=m) for m in ("pchip", "akima")}
    print("\nBD-rate (%) against the recording; scipy = PchipInterpolator integrated here")
    print(f"  {'pair':<40} {'old':>9} {'pchip':>9} {'scipy':>9} {'akima':>9}")
    worst = {"pchip": 0.0, "scipy": 0.0, "akima-pchip": 0.0, "bd_psnr": 0.0}
    for pair, o in old["bd"].items():
        new = methods["pchip"][pair]
        test, anchor = pair.split(" vs ")
        sci = scipy_pchip_bd_rate(by_name[test], by_name[anchor])
        ak = methods.get("akima", {}).get(pair, {}).get("bd_rate")
        if o["bd_rate"] is None:
            print(f"  {pair:<40} {'n/a':>9} {'n/a' if new['bd_rate'] is None else new['bd_rate']:>9}")
            continue
        worst["pchip"] = max(worst["pchip"], abs(new["bd_rate"] - o["bd_rate"]))
        worst["scipy"] = max(worst["scipy"], abs(new["bd_rate"] - sci)) if sci is not None else worst["scipy"]
        if o["bd_psnr"] is not None and new["bd_psnr"] is not None:
            worst["bd_psnr"] = max(worst["bd_psnr"], abs(new["bd_psnr"] - o["bd_psnr"]))
        if ak is not None:
            worst["akima-pchip"] = max(worst["akima-pchip"], abs(ak - new["bd_rate"]))
        akt = "-" if ak is None else f"{ak:+.3f}"
        print(f"  {pair:<40} {o['bd_rate']:>+9.3f} {new['bd_rate']:>+9.3f} {sci:>+9.3f} {akt:>9}")
    print(
        f"  max |old - pchip| {worst['pchip']:.1e} %   max |pchip - scipy| {worst['scipy']:.1e} %   "
        f"max |BD-PSNR old - new| {worst['bd_psnr']:.1e} dB   max |akima - pchip| {worst['akima-pchip']:.2f} %"
    )
    if OURS not in by_name:
        print("note: the store had no models, so no tcm rows")


def table_check() -> None:
    """The README's BD-rate table, recomputed from its own recorded means."""
    doc = json.loads(README_RUN.read_text())
    curves = []
    for name, c in doc["codecs"].items():
        pts = sorted((s["bpp"], s["psnr"]) for s in c["settings"])
        kind = "ours" if name == OURS else "baseline"
        curves.append(Curve(name, c["label"], kind, tuple(b for b, _ in pts), tuple(p for _, p in pts)))
    curves += [Curve(c["name"], c["label"], "published", tuple(c["bpp"]), tuple(c["psnr"])) for c in doc["published"]]
    anchor = doc["bd_rate"]["anchor"]
    recorded = {f"{r['test']} vs {r['anchor']}": r for r in doc["bd_rate"]["rows"]}
    now = {m: bd_rows(curves, method=m) for m in ("pchip", "akima")}
    print(f"\nREADME table ({README_RUN.relative_to(ROOT)}: 24 images, anchor {anchor}), BD-rate (%)")
    print(f"  {'pair':<40} {'recorded':>9} {'pchip':>9} {'akima':>9}")
    worst, spread = 0.0, 0.0
    for pair, r in recorded.items():
        if r["bd_rate_percent"] is None:
            continue
        p, a = now["pchip"][pair]["bd_rate"], now["akima"][pair]["bd_rate"]
        worst, spread = max(worst, abs(p - r["bd_rate_percent"])), max(spread, abs(a - p))
        print(f"  {pair:<40} {r['bd_rate_percent']:>+9.3f} {p:>+9.3f} {a:>+9.3f}")
    print(f"  max |recorded - pchip| {worst:.1e} %   max |akima - pchip| {spread:.2f} %")


def memory() -> None:
    """Peak resident memory and time of one MS-SSIM of a 2304x1536 RGB image (kodim23 tiled
    3x4, against its 16-level posterisation), in this fresh process, on one thread."""
    import resource

    from PIL import Image

    from tcm_serve.evaluation.metrics import ms_ssim

    tile = np.asarray(Image.open(KODAK / "kodim23.png").convert("RGB"))
    a = np.ascontiguousarray(np.tile(tile, (3, 3, 1))[:1536, :2304])
    b = ((a.astype(np.int32) // 16) * 16 + 8).astype(np.uint8)
    page = resource.getpagesize()
    before = int(Path("/proc/self/statm").read_text().split()[1]) * page / 2**20
    t0 = time.perf_counter()
    value = ms_ssim(a, b)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mp = a.shape[0] * a.shape[1] / 1e6
    print(
        f"MS-SSIM of {a.shape[1]}x{a.shape[0]} ({mp:.1f} MP): {value:.6f} in {seconds:.2f} s; resident "
        f"{before:.0f} MiB before, peak {peak:.0f} MiB: +{peak - before:.0f} MiB, {(peak - before) / mp:.0f} MiB/MP"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--record", action="store_true", help="write the recording (on a commit with the old code)")
    p.add_argument("--images", type=int, default=4, help="first N Kodak images (--record only; default 4)")
    p.add_argument("--store", type=Path, default=ROOT / "model_store", help="model store (default: the bundled one)")
    p.add_argument("--table-only", action="store_true", help="only recompute the README's table (no coding)")
    p.add_argument("--memory", action="store_true", help="only measure MS-SSIM's peak memory on a 3.5 MP image")
    args = p.parse_args()
    if args.memory:
        memory()
        return
    if not args.table_only:
        (record if args.record else compare)(args)
    if "method" in inspect.signature(bd_table).parameters:
        table_check()


if __name__ == "__main__":
    main()
