"""``tcm train``: train a TCM model on folders of images (resumes from --out)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..training.photos import MAX_SIDE
from .argtypes import (
    add_device_option,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    rd_lambda,
)


def add_parsers(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a model on folders of images",
        description="Rate-distortion training (loss lambda*255^2*MSE + bpp). Running it again with the same "
        "--out resumes exactly where the last run stopped; --steps may be raised to extend a run.",
    )
    t.add_argument(
        "data", nargs="+", metavar="DIR", help="folders of training images (sub-folders are sources sampled evenly)"
    )
    t.add_argument("--out", required=True, help="run directory: checkpoint.pt and train.log")
    arch = t.add_mutually_exclusive_group()
    arch.add_argument("--preset", default=None, help="architecture preset (default: lite)")
    arch.add_argument("--arch-json", metavar="FILE", help="TCM constructor arguments as a JSON file")
    t.add_argument(
        "--lambda", dest="lmbda", type=rd_lambda, required=True, help="rate-distortion trade-off, e.g. 0.013"
    )
    t.add_argument("--steps", type=positive_int, required=True, help="train until this many steps in total")
    t.add_argument("--batch-size", type=positive_int, default=8)
    t.add_argument("--crop", type=positive_int, default=256, help="square crop size (at least 256)")
    t.add_argument("--lr", type=positive_float, default=1e-4, help="learning rate of the network (default 1e-4)")
    t.add_argument("--aux-lr", type=positive_float, default=1e-3, help="learning rate of the quantiles (default 1e-3)")
    t.add_argument(
        "--lr-drop",
        type=positive_int,
        action="append",
        default=[],
        metavar="STEP",
        help="divide the learning rate by 10 from this step on (repeatable)",
    )
    t.add_argument("--clip", type=non_negative_float, default=1.0, help="gradient-norm clip (0 disables; default 1.0)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init", metavar="CHECKPOINT", help="start from these weights (fine-tuning to another lambda)")
    t.add_argument(
        "--max-side", type=positive_int, default=MAX_SIDE, help="downscale photos whose short side exceeds this"
    )
    t.add_argument("--checkpoint-every", type=positive_int, default=50)
    t.add_argument("--log-every", type=positive_int, default=10)
    t.add_argument("--val", metavar="DIR", help="images to report forward-pass bpp/PSNR on (never trained on)")
    t.add_argument("--val-count", type=positive_int, default=6)
    t.add_argument("--val-every", type=non_negative_int, default=0, help="validate every this many steps (0: never)")
    add_device_option(t)
    t.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: analysis/synthesis transforms under bfloat16 autocast, entropy model in float32 "
        "(faster on CPUs with AVX512-BF16/AMX and on recent GPUs; may be changed on resume)",
    )
    t.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    t.set_defaults(handler=cmd_train)

    c = sub.add_parser(
        "train-curve",
        help="a training run's validation curve (bpp, PSNR, RD cost, PSNR at a fixed rate) against steps",
        description="Read RUN/train.log and print the validation curve as a Markdown table; "
        "--plot draws it with the smoothed training loss.",
    )
    c.add_argument(
        "run",
        metavar="RUN",
        nargs="+",
        help="the --out directory of tcm train (or its train.log); several runs that continue each "
        "other (each started with --init from the previous one's final weights) make one curve",
    )
    c.add_argument(
        "--lambda", dest="lmbda", type=rd_lambda, help="the run's lambda (default: read from RUN/checkpoint.pt)"
    )
    c.add_argument(
        "--at-bpp", type=positive_float, default=0.4, help="rate to move PSNR to along the RD tangent (default 0.4)"
    )
    c.add_argument("--every", type=positive_int, default=1, help="print every N-th validation record (and the last)")
    c.add_argument("--plot", metavar="OUT.png", help="also draw the curve (needs matplotlib)")
    c.add_argument("--title", default=None, help="plot title (default: the run directory)")
    c.set_defaults(handler=cmd_train_curve)


def _arch(args) -> dict:
    from ..errors import ConfigError
    from ..model.config import TCMConfig, preset

    if args.arch_json:
        try:
            data = json.loads(Path(args.arch_json).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read --arch-json {args.arch_json}: {exc}") from None
        return TCMConfig.from_dict(data).to_dict()
    return preset(args.preset or "lite").to_dict()


def _val_images(folder: str, count: int) -> list:
    import numpy as np
    import torch
    from PIL import Image

    from ..training.photos import image_files

    files = image_files(Path(folder))[:count]
    if not files:
        from ..errors import ConfigError

        raise ConfigError(f"no images in --val {folder}")
    out = []
    for f in files:
        with Image.open(f) as im:
            out.append(torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float() / 255.0)
    return out


def cmd_train(args) -> int:
    import torch

    from ..cpu import bf16_warning
    from ..devices import resolve_device, set_reproducible_kernels
    from ..training.trainer import LOG, TrainConfig, Trainer, forward_validator, text_progress

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    set_reproducible_kernels(device)
    if args.precision == "bf16" and device.type == "cpu" and (why := bf16_warning()):
        print(f"tcm train: warning: {why}", file=sys.stderr, flush=True)
    cfg = TrainConfig(
        arch=_arch(args),
        lmbda=args.lmbda,
        data=[str(Path(d).resolve()) for d in args.data],
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        aux_lr=args.aux_lr,
        lr_drops=sorted(args.lr_drop),
        clip=args.clip,
        seed=args.seed,
        init=args.init,
        max_side=args.max_side,
        precision=args.precision,
    )
    trainer = Trainer(cfg, Path(args.out), device)
    print(f"tcm train: {trainer.start()}; log {Path(args.out) / LOG}", flush=True)
    validate = forward_validator(_val_images(args.val, args.val_count), device) if args.val else None
    step = trainer.run(
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        validate=validate,
        validate_every=args.val_every,
        progress=text_progress(),
    )
    print(f"\ntcm train: step {step}/{cfg.steps}, checkpoint {Path(args.out) / 'checkpoint.pt'}", flush=True)
    return 0 if step >= cfg.steps else 3


def _run_end(run: Path) -> tuple[float | None, int | None, str]:
    """(lambda, final step, why the lambda is unknown) from a run's checkpoint, loaded once:
    it holds weights and both optimisers' state (tens of MB). The step is where a run
    continuing this one began."""
    import torch

    from ..training.trainer import CHECKPOINT

    ckpt = (run if run.is_dir() else run.parent) / CHECKPOINT
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for non-checkpoints; all mean the same
        return None, None, f"cannot read the run's lambda from {ckpt} ({type(exc).__name__}): pass --lambda"
    record = state if isinstance(state, dict) else {}
    try:
        step = int(record["step"])
    except (KeyError, TypeError, ValueError):
        step = None
    try:
        return float(record["training"]["lmbda"]), step, ""
    except (KeyError, TypeError, ValueError) as exc:
        return None, step, f"cannot read the run's lambda from {ckpt} ({type(exc).__name__}): pass --lambda"


def cmd_train_curve(args) -> int:
    from ..errors import ConfigError
    from ..training import curve

    runs = [Path(r) for r in args.run]
    ends = [_run_end(r) for r in runs]
    train, val = curve.chain([curve.read_log(r) for r in runs], [step for _, step, _ in ends])
    if not val:
        raise ConfigError(f"{' '.join(args.run)}: no validation records (train with --val and --val-every)")
    if args.lmbda is not None:
        lmbda = args.lmbda
    else:
        for run_lmbda, _, why in ends:
            if run_lmbda is None:
                raise ConfigError(why)
        lambdas = {run_lmbda for run_lmbda, _, _ in ends if run_lmbda is not None}  # None raised above
        if len(lambdas) > 1:
            raise ConfigError(
                f"the runs were trained with different lambdas ({', '.join(map(str, sorted(lambdas)))}): "
                "one curve needs one lambda (pass --lambda to force one)"
            )
        lmbda = lambdas.pop()
    print(curve.markdown_table(val, lmbda, args.at_bpp, args.every), end="")
    if args.plot:
        title = (
            args.title
            or f"{' + '.join((r.resolve() if r.is_dir() else r.resolve().parent).name for r in runs)} (lambda {lmbda:g})"
        )
        curve.plot(train, val, lmbda, args.at_bpp, args.plot, title)
        print(f"plot: {args.plot}")
    return 0
