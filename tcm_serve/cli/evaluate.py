"""``tcm eval``: rate-distortion evaluation of the store's models against JPEG/WebP/AVIF."""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from ..codec.effort import effort_problem
from ..evaluation.bdrate import BD_METHODS, DEFAULT_BD_METHOD
from .argtypes import add_device_option, add_store_option, codec_choice, open_store, positive_int

DEFAULT_CODECS = ("tcm", "jpeg420", "jpeg444", "webp", "avif")


def _codec_names() -> tuple[str, ...]:
    from ..evaluation.baselines import CODECS
    from ..evaluation.runner import OURS

    return (OURS, *CODECS)


def _codec_list(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    known = _codec_names()
    for n in names:
        if n not in known:
            raise argparse.ArgumentTypeError(f"unknown codec {n!r} (known: {', '.join(known)})")
    if not names:
        raise argparse.ArgumentTypeError("no codec named")
    return list(dict.fromkeys(names))


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return sorted(set(values))


def _effort_list(text: str) -> list[int]:
    """Effort levels, with 0 always among them: the baseline the others' BD-rates are
    measured against and the level ``--record`` records."""
    levels = _int_list(text)
    for v in levels:
        problem = effort_problem(v)
        if problem:
            raise argparse.ArgumentTypeError(problem)
    return sorted({0, *levels})


def _sweep(text: str) -> tuple[str, list[int]]:
    name, sep, values = text.partition("=")
    name = name.strip().lower()
    from ..evaluation.baselines import CODECS, check_qualities

    if not sep or name not in CODECS:
        raise argparse.ArgumentTypeError(
            f"expected CODEC=Q1,Q2,... with CODEC one of {', '.join(CODECS)}, got {text!r}"
        )
    qualities = _int_list(values)
    try:
        check_qualities(CODECS[name], qualities)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name, qualities


def _psnr_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI in dB, got {text!r}") from None
    if not hi > lo:
        raise argparse.ArgumentTypeError(f"empty PSNR range {text!r}")
    return lo, hi


def add_parsers(sub) -> None:
    e = sub.add_parser(
        "eval",
        help="rate-distortion evaluation: our models vs JPEG/WebP/AVIF, BD-rates, plot",
        description="Code every image of DATASET for real with each quality level of the store and with "
        "JPEG 4:2:0, JPEG 4:4:4, WebP and AVIF (Pillow) over a quality sweep; report per-setting means "
        "of bpp (file size), PSNR and MS-SSIM (pytorch_msssim), and BD-rates (the bjontegaard package, PCHIP "
        "or Akima) against the anchor and of ours against every codec. Needs the eval extra: "
        "pip install 'tcm-serve[eval]'. See docs/evaluation.md.",
    )
    e.add_argument("dataset", metavar="DATASET", help="folder of images (e.g. ../shared/data/kodak)")
    add_store_option(e)
    e.add_argument(
        "--qualities",
        type=_int_list,
        metavar="Q1,Q2,...",
        help="quality levels of the store to evaluate (default: all)",
    )
    e.add_argument(
        "--codecs",
        type=_codec_list,
        default=list(DEFAULT_CODECS),
        metavar="NAMES",
        help=f"comma-separated, from: tcm (our store), jpeg420, jpeg444, webp, avif (default: {','.join(DEFAULT_CODECS)})",
    )
    e.add_argument(
        "--sweep",
        type=_sweep,
        action="append",
        default=[],
        metavar="CODEC=Q1,Q2,...",
        help="quality sweep of a Pillow codec, e.g. webp=10,30,50,70 (repeatable; defaults in docs/evaluation.md)",
    )
    e.add_argument(
        "--effort",
        type=_effort_list,
        default=[0],
        metavar="E1,E2,...",
        help="encoder effort levels to code our models at, each its own curve (tcm, tcm-e1, ...) with its "
        "BD-rate against effort 0, which always runs (default: 0)",
    )
    e.add_argument("--limit", type=positive_int, metavar="N", help="only the first N images (in name order)")
    e.add_argument(
        "--holdout",
        action="store_true",
        help="DATASET is a training set (e.g. ../shared/data/train): score its held-out tenth, which tcm train "
        "never uses, prepared as training prepares a photo (docs/training.md)",
    )
    add_device_option(e, "for our models: ")
    e.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    e.add_argument("--anchor", default="jpeg420", help="codec the BD-rates are measured against (default: jpeg420)")
    e.add_argument(
        "--bd-range", type=_psnr_range, metavar="LO,HI", help="restrict BD-rate integrals to this PSNR range (dB)"
    )
    e.add_argument(
        "--bd-method",
        choices=BD_METHODS,
        default=DEFAULT_BD_METHOD,
        help=f"interpolation of the BD-rate curves, by the bjontegaard package (default: {DEFAULT_BD_METHOD})",
    )
    e.add_argument(
        "--published",
        metavar="FILE",
        help="official TCM RD points (rd-published.json format; default: the conformance kit's copy "
        "when found); 'none' leaves them out",
    )
    e.add_argument(
        "--published-dataset",
        metavar="NAME",
        help="which dataset's published points to show (default: the one DATASET's folder is named after, e.g. Kodak)",
    )
    e.add_argument("--csv", metavar="OUT", help="per-image and mean rows as CSV")
    e.add_argument("--json", metavar="OUT", help="per-setting means and the BD-rate table as JSON")
    e.add_argument(
        "--plot", metavar="OUT.png", help="RD curves as a PNG (needs matplotlib: pip install 'tcm-serve[eval]')"
    )
    e.add_argument(
        "--record",
        action="store_true",
        help="store each evaluated quality level's means in the store manifest (its 'evaluation' field)",
    )
    e.add_argument("--quiet", action="store_true", help="no progress on stderr")
    e.set_defaults(handler=cmd_eval)


class _Progress:
    """Status on stderr: a rewritten line on a terminal, one line per codec otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.tty, self.last = quiet, sys.stderr.isatty(), ""

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write(f"\r{message[:70]:<70}")
            sys.stderr.flush()
            return
        codec = message.split(" ", 1)[0]
        if codec != self.last:
            self.last = codec
            print(f"tcm eval: coding with {codec}", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()


def _check_output(path: str | None, what: str) -> None:
    from ..evaluation.runner import EvalError

    if path and not Path(path).resolve().parent.is_dir():
        raise EvalError(f"--{what} {path}: folder {Path(path).resolve().parent} does not exist")


def _validate(args) -> None:
    """Everything that can fail does so before any coding starts: a run can take hours."""
    from ..evaluation import report as rep
    from ..evaluation.runner import OURS, EvalError, require_bd_package

    require_bd_package()
    for name in dict(args.sweep):
        if name not in args.codecs:
            raise EvalError(f"--sweep {name}=... given but {name} is not in --codecs")
    if args.anchor not in _codec_names():
        raise EvalError(f"unknown --anchor {args.anchor!r} (known: {', '.join(_codec_names())})")
    if args.qualities and OURS not in args.codecs:
        raise EvalError("--qualities selects our models' levels, but tcm is not in --codecs")
    if args.effort != [0] and OURS not in args.codecs:
        raise EvalError("--effort codes our models, but tcm is not in --codecs")
    if args.record and OURS not in args.codecs:
        raise EvalError("--record stores our models' results, but tcm is not in --codecs")
    if args.record and args.holdout:
        raise EvalError("--record keeps the store's benchmark figures (Kodak); the hold-out is reported, not recorded")
    if args.plot:
        rep.require_matplotlib()
    for path, what in ((args.csv, "csv"), (args.json, "json"), (args.plot, "plot")):
        _check_output(path, what)


def _open_models(args):
    """(store, entries, device) for our models, or Nones when tcm is not evaluated."""
    from ..evaluation.runner import OURS, EvalError

    if OURS not in args.codecs:
        return None, None, None
    from ..codec.effort import LatentSearch
    from ..devices import resolve_device, set_reproducible_kernels

    store = open_store(codec_choice(args))
    available = store.entries()
    if not available:
        raise EvalError(
            f"model store {store.root} has no models (import or train one, or evaluate only the baselines "
            f"with --codecs jpeg420,jpeg444,webp,avif)"
        )
    qualities = args.qualities or [e.quality for e in available]
    entries = [store.entry(q) for q in qualities]  # ModelNotFoundError names the levels there are
    for e in entries:  # a model effort cannot search for fails now, not hours in
        LatentSearch.for_level(max(args.effort), e.lmbda, e.metric)
    device = resolve_device(args.device)
    set_reproducible_kernels(device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return store, entries, device


def _runnable_baselines(codecs: list[str], notes: list[str]) -> list[str]:
    """The requested Pillow codecs this Pillow can run; the others are skipped with a note."""
    from ..evaluation import baselines

    runnable = []
    for name in codecs:
        if name not in baselines.CODECS:
            continue
        reason = baselines.unavailable_reason(name)
        if reason:
            notes.append(f"{name} skipped: {reason}")
            print(f"tcm eval: {name} skipped: {reason}", file=sys.stderr)
        else:
            runnable.append(name)
    return runnable


def cmd_eval(args) -> int:
    from ..errors import TcmError
    from ..evaluation import baselines
    from ..evaluation import report as rep
    from ..evaluation.runner import (
        EvalError,
        Report,
        bd_table,
        code_baseline,
        code_store,
        load_dataset,
        ms_ssim_note,
        ours_at,
    )
    from ..files import atomic_write_text

    _validate(args)
    notes: list[str] = []
    data = load_dataset(args.dataset, args.limit, holdout=args.holdout)
    if args.holdout:
        from ..training.photos import HOLDOUT_RULE, MAX_SIDE

        notes.append(
            f"images: the training hold-out of {args.dataset} ({HOLDOUT_RULE}), each prepared as tcm train "
            f"prepares a photo (EXIF orientation, downscaled to a short side of at most {MAX_SIDE})"
        )
    if max(args.effort) > 0:  # an image too large to search for fails now, not hours in
        from ..codec.effort import check_effort_size
        from ..codec.pipeline import image_geometry

        for name, img in zip(data.names, data.images):
            try:
                check_effort_size(*image_geometry(img).padded_shape)
            except TcmError as exc:
                raise EvalError(f"{name}: {exc}") from None
    store, entries, device = _open_models(args)
    runnable = _runnable_baselines(args.codecs, notes)
    report = Report(data, notes=notes, environment=_environment(device), bd_method=args.bd_method)
    report.published = _published_curves(args, notes)
    if report.published and args.limit is not None:
        notes.append(
            f"the published points are means over the whole dataset; --limit {args.limit} compares them with a subset"
        )
    if (note := ms_ssim_note(data)) is not None:
        notes.append(note)

    sweeps = dict(args.sweep)
    progress = _Progress(args.quiet)
    t0 = time.perf_counter()
    for name in runnable:
        report.labels[name] = baselines.CODECS[name].label
        report.measurements += code_baseline(name, sweeps.get(name, baselines.CODECS[name].qualities), data, progress)
    if entries is not None:
        presets = ", ".join(sorted({e.preset or "custom" for e in entries}))
        for effort in args.effort:
            report.labels[ours_at(effort)] = f"ours ({presets}{f', effort {effort}' if effort else ''})"
        report.models = [_model_record(e) for e in entries]
        qualities = [e.quality for e in entries]
        report.measurements += code_store(store, qualities, device, data, progress, args.effort)
    progress.done()
    elapsed = time.perf_counter() - t0

    present = {m.codec for m in report.measurements}
    if args.anchor not in present:
        notes.append(f"anchor {args.anchor} was not evaluated: only ours is compared with the others")
    bd = bd_table(report.curves(), args.anchor, args.bd_range, args.bd_method)

    if args.csv:
        atomic_write_text(args.csv, rep.csv_text(report))
    if args.json:
        atomic_write_text(args.json, rep.json_text(rep.json_doc(report, bd, args.anchor, args.bd_range)))
    if args.plot:
        rep.plot(report, args.plot)
    if args.record:
        _record(store, report, data)
    print(rep.text(report, bd))
    written = [p for p in (args.csv, args.json, args.plot) if p]
    tail = f"; wrote {', '.join(written)}" if written else ""
    print(f"coded {len(data)} image(s) with {len(present)} codec(s) in {elapsed:.1f} s{tail}")
    return 0


def _published_curves(args, notes: list[str]) -> list:
    """The official points to draw, or [] (with a note saying why none)."""
    from ..evaluation import published
    from ..evaluation.runner import Curve

    if args.published and args.published.lower() == "none":
        return []
    path = Path(args.published) if args.published else published.default_path()
    if path is None:
        notes.append("official TCM points not shown: rd-published.json not found (use --published FILE)")
        return []
    doc = published.load(path)
    dataset = args.published_dataset or published.match_dataset(doc, args.dataset)
    if dataset is None:
        notes.append(
            f"official TCM points not shown: {Path(args.dataset).name} is not one of their datasets "
            f"({', '.join(published.datasets(doc))}); pick one with --published-dataset"
        )
        return []
    return [Curve(c.name, c.label, "published", c.bpp, c.psnr) for c in published.curves(doc, dataset)]


def _model_record(entry) -> dict:
    rec = {
        "quality": entry.quality,
        "preset": entry.preset,
        "lambda": entry.lmbda,
        "sha256": entry.sha256,
        "source": entry.source,
    }
    if entry.training and "steps_done" in entry.training:
        rec["training_steps"] = entry.training["steps_done"]
    return rec


def _environment(device) -> dict:
    from importlib.metadata import version

    import numpy
    import torch

    from ..evaluation.baselines import library_versions

    env = {"python": platform.python_version(), "numpy": numpy.__version__, **library_versions()}
    # MS-SSIM and BD-rate come from these packages (and BD-rate's interpolants from scipy)
    env.update({name: version(name) for name in ("pytorch-msssim", "bjontegaard", "scipy")})
    env["torch"] = torch.__version__
    if device is not None:
        env["device"] = str(device)
    return env


def _record(store, report, data) -> None:
    from ..evaluation.runner import OURS

    for s in report.summaries():
        if s.codec != OURS:
            continue
        store.annotate(
            s.quality,
            {
                "dataset": data.root.name,
                "images": s.images,
                "bpp": round(s.bpp, 6),
                "payload_bpp": None if s.payload_bpp is None else round(s.payload_bpp, 6),
                "psnr": round(s.psnr, 4),
                "ms_ssim": None if s.ms_ssim is None else round(s.ms_ssim, 6),
                "measured": time.strftime("%Y-%m-%d"),
                "by": "tcm eval",
            },
        )
