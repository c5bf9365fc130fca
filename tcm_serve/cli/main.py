"""``tcm``: compress / decompress / inspect images and manage the model store.

Every expected failure prints ``tcm: error: <one line>`` on stderr and exits non-zero
(2 for usage, 1 otherwise); a traceback is a bug. Heavy imports (torch) happen inside
the commands so that ``tcm --help`` and ``tcm inspect`` stay fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from functools import partial
from importlib import import_module
from pathlib import Path
from typing import NoReturn

from ..cpu import prepare_threads
from ..errors import TcmError, is_out_of_memory
from ..files import atomic_write
from ..imageio import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from .argtypes import (
    add_backend_option,
    add_bitstream_option,
    add_device_option,
    add_effort_option,
    add_store_option,
    add_tile_option,
    codec_choice,
    open_store,
    positive_int,
    quality,
    rd_lambda,
)

#: Modules under tcm_serve/cli/ that define further subcommands. Each has ``add_parsers(sub)``,
#: and every parser it adds sets ``handler`` (via ``set_defaults``) to a function of ``args``.
EXTENSIONS = ("serve", "train", "evaluate", "onnx")

EXIT_ERROR = 1
EXIT_USAGE = 2


class CliError(TcmError):
    code = "cli_error"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, like every other failure
        self.exit(EXIT_USAGE, f"tcm: error: {message} (see tcm --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tcm", description="TCM learned image compression (CVPR 2023) - codec, store and service.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("compress", help="compress images to .tcm files")
    c.add_argument("inputs", nargs="+", metavar="IN", help="image files or directories of images")
    c.add_argument("-o", "--output", help="output file (one input) or directory (default: next to each input)")
    c.add_argument("-q", "--quality", type=quality, help="quality level in the store (default: the highest available)")
    add_device_option(c)
    add_backend_option(c)
    add_bitstream_option(c)
    add_tile_option(c, "the analysis transform")
    add_effort_option(c)
    c.add_argument("--drop-alpha", action="store_true", help="discard an alpha channel instead of refusing the image")
    c.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images with more pixels than this (default {DEFAULT_MAX_PIXELS:,})",
    )
    c.add_argument("--force", action="store_true", help="overwrite existing output files")
    add_store_option(c)

    d = sub.add_parser("decompress", help="decompress .tcm files to PNG")
    d.add_argument("inputs", nargs="+", metavar="IN", help=".tcm files or directories of them")
    d.add_argument("-o", "--output", help="output file (one input) or directory (default: next to each input)")
    add_device_option(d)
    add_backend_option(d)
    add_tile_option(d, "the synthesis transform")
    d.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse blobs that decode to images with more pixels than this (default {DEFAULT_MAX_PIXELS:,})",
    )
    d.add_argument("--force", action="store_true", help="overwrite existing output files")
    add_store_option(d)

    i = sub.add_parser("inspect", help="show every header field of a .tcm file")
    i.add_argument("file", metavar="FILE.tcm")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    m = sub.add_parser("models", help="list or import models in the store")
    msub = m.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    ml = msub.add_parser("list", help="list the quality levels in the store")
    ml.add_argument("--json", action="store_true")
    add_store_option(ml)
    mi = msub.add_parser("import", help="check an official-format checkpoint and add it to the store")
    mi.add_argument("checkpoint", metavar="CHECKPOINT")
    mi.add_argument("-q", "--quality", type=quality, required=True)
    arch = mi.add_mutually_exclusive_group()
    arch.add_argument(
        "--preset",
        help="architecture preset: official-small (default for official checkpoints), official-large, lite, conformance-small; a tcm train checkpoint names its own",
    )
    arch.add_argument("--arch-json", metavar="FILE", help="TCM constructor arguments as a JSON file")
    mi.add_argument("--lambda", dest="lmbda", type=rd_lambda, help="rate-distortion lambda the model was trained with")
    mi.add_argument("--metric", default="mse", choices=["mse", "ms-ssim"])
    mi.add_argument("--source", help="where the weights came from (recorded in the manifest)")
    mi.add_argument("--replace", action="store_true", help="replace an existing entry for this quality")
    mi.add_argument(
        "--half", action="store_true", help="store the weights in float16 (half the file; cast back at load)"
    )
    add_store_option(mi)
    for module in EXTENSIONS:
        import_module(f"{__package__}.{module}").add_parsers(sub)
    return p


# -- helpers -------------------------------------------------------------------------------
def _expand(inputs: Sequence[str], suffixes: AbstractSet[str]) -> list[Path]:
    files: list[Path] = []
    for raw in inputs:
        if raw == "-":
            raise CliError("'-' (standard input) is not supported: give file or directory paths")
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
            if not found:
                raise CliError(f"directory {p} holds no {'/'.join(sorted(suffixes))} files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif p.exists():
            raise CliError(f"{p} is not a regular file or a directory")
        else:
            raise CliError(f"no such file or directory: {p}")
    return files


def _output_paths(files: list[Path], output: str | None, suffix: str, force: bool) -> list[Path]:
    """Where each input's result goes; every check happens before any work or any write.

    ``-o`` names the output file for a single input, else a directory (created, after the
    checks, if missing). An output ending in ``suffix`` for several inputs is refused rather
    than silently becoming a directory named like a file.
    """
    out_dir: Path | None = None
    if output is None:
        outs = [f.with_suffix(suffix) for f in files]
    elif output == "-":
        raise CliError("'-o -' (standard output) is not supported: give a file or directory path")
    else:
        o = Path(output)
        if len(files) == 1 and not o.is_dir() and not output.endswith(os.sep):
            if not o.parent.is_dir():
                raise CliError(f"output directory {o.parent} does not exist")
            outs = [o]
        else:
            if o.exists() and not o.is_dir():
                raise CliError(f"{len(files)} inputs need -o to be a directory, but {o} is a file")
            if not o.exists() and o.suffix.lower() == suffix:
                raise CliError(f"{len(files)} inputs need -o to be a directory, not a {suffix} file name: {o}")
            out_dir = o
            outs = [o / (f.stem + suffix) for f in files]
    if len(set(outs)) != len(outs):
        raise CliError("two inputs would write the same output file; use distinct names or -o per file")
    for src, dst in zip(files, outs):
        if dst.resolve() == src.resolve():
            raise CliError(f"output {dst} would overwrite its input")
        if dst.exists() and not force:
            raise CliError(f"{dst} exists (use --force to overwrite)")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    return outs


class _Progress:
    """A one-line progress bar on stderr, shown only for several files."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.show = total, 0, total > 1

    def step(self, name: str) -> None:
        self.done += 1
        if self.show:
            width = 24
            filled = width * self.done // self.total
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {name[:40]:<40}")
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


class _PerFile:
    """Runs one command over many files: a failing file prints one line and the rest go on.

    A single input fails as any command does (the caller's ``tcm: error:`` line, exit 1).
    With several, each failure prints ``tcm: error: FILE: reason`` as it happens and
    :meth:`finish` prints a summary and returns exit status 1 if anything failed.
    """

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.progress = _Progress(len(files))
        self.failed: list[Path] = []

    def run(self, src: Path, work) -> None:
        try:
            work()
        except (TcmError, OSError) as exc:  # OSError: this file's output could not be written
            if isinstance(exc, OSError):
                where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
                exc = CliError(f"{exc.strerror or exc}{where}")
            message = str(exc) if str(exc).startswith(str(src)) else f"{src}: {exc}"  # name the file once
            if len(self.files) == 1:
                raise type(exc)(message) from None
            self.failed.append(src)
            if self.progress.show:
                sys.stderr.write("\r\033[K")  # clear the progress line before the message
            print(f"tcm: error: {message}", file=sys.stderr)
        self.progress.step(src.name)

    def finish(self, verb: str, elapsed: float, extra: str = "") -> int:
        done = len(self.files) - len(self.failed)
        failed = f"; {len(self.failed)} failed" if self.failed else ""
        print(f"{verb} {done} of {len(self.files)} file(s){extra} in {elapsed:.2f} s{failed}")
        return EXIT_ERROR if self.failed else 0


# -- commands ---------------------------------------------------------------------------------
def cmd_compress(args) -> int:
    from ..codec.container import check_bitstream
    from ..codec.pipeline import compress_images, latent_search, load_model
    from ..devices import resolve_device, set_reproducible_kernels
    from ..imageio import read_image

    files = _expand(args.inputs, IMAGE_SUFFIXES)
    outs = _output_paths(files, args.output, ".tcm", args.force)
    codec = codec_choice(args)
    store = open_store(codec)
    entries = store.entries()
    if not entries:
        raise CliError(f"model store {store.root} has no models (add one with: tcm models import)")
    quality = args.quality if args.quality is not None else entries[-1].quality
    portable = check_bitstream(codec.bitstream)
    device = resolve_device(args.device)
    set_reproducible_kernels(device)
    t0 = time.perf_counter()
    lm = load_model(store, quality, device, codec.backend, codec.onnx_dir, tile=codec.tile)
    load_s = time.perf_counter() - t0
    latent_search(lm.entry, args.effort)  # a model effort cannot search for is refused before any image
    run = _PerFile(files)
    total = {"bits": 0, "pixels": 0}
    t1 = time.perf_counter()

    def one(src: Path, dst: Path) -> None:
        img = read_image(src, max_pixels=args.max_pixels, drop_alpha=args.drop_alpha)
        (res,) = compress_images(lm, [img], portable=portable, effort=args.effort)
        atomic_write(dst, res.blob)  # replaced whole or not at all
        total["bits"] += 8 * len(res.blob)
        total["pixels"] += img.width * img.height
        if len(files) == 1:
            print(
                f"{src} -> {dst}: {img.width}x{img.height} {img.mode}, q{quality}, {len(res.blob)} bytes, {res.bpp:.4f} bpp"
            )

    for src, dst in zip(files, outs):
        run.run(src, partial(one, src, dst))
    elapsed = time.perf_counter() - t1
    done = max(len(files) - len(run.failed), 1)
    return run.finish(
        "compressed",
        elapsed,
        f" at q{quality}{f' effort {args.effort}' if args.effort else ''} on {device} "
        f"({codec.bitstream} bitstream, {codec.backend} backend): "
        f"{total['bits'] / max(total['pixels'], 1):.4f} bpp "
        f"(container included), {elapsed / done:.2f} s/image, model load {load_s:.2f} s,",
    )


def cmd_decompress(args) -> int:
    from ..codec.pipeline import decompress_blob, read_blob, store_resolver
    from ..devices import resolve_device, set_reproducible_kernels
    from ..imageio import write_png

    files = _expand(args.inputs, {".tcm"})
    outs = _output_paths(files, args.output, ".png", args.force)
    device = resolve_device(args.device)
    set_reproducible_kernels(device)
    codec = codec_choice(args)
    resolve = store_resolver(open_store(codec), device, codec.backend, codec.onnx_dir, codec.tile)
    run = _PerFile(files)
    t0 = time.perf_counter()

    def one(src: Path, dst: Path) -> None:
        try:
            blob = read_blob(src)
        except OSError as exc:
            raise CliError(f"cannot read it: {exc.strerror or exc}") from None
        out = decompress_blob(blob, resolve, args.max_pixels)
        write_png(dst, out.pixels)
        if len(files) == 1:
            print(f"{src} -> {dst}: {out.header.width}x{out.header.height} {out.mode}")

    for src, dst in zip(files, outs):
        run.run(src, partial(one, src, dst))
    return run.finish("decompressed", time.perf_counter() - t0)


def cmd_inspect(args) -> int:
    from ..codec.container import header_fields, unpack

    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    fields = header_fields(unpack(data))
    if args.json:
        print(json.dumps(fields, indent=2))
    else:
        for k, v in fields.items():
            print(f"{k:>18}: {v}")
    return 0


def cmd_models_list(args) -> int:
    store = open_store(codec_choice(args))
    entries = store.entries()
    if args.json:
        print(json.dumps({"store": str(store.root), "models": [e.to_json() for e in entries]}, indent=2))
        return 0
    if not entries:
        print(f"no models in {store.root}")
        return 0
    print(f"{'quality':>7}  {'preset':<18} {'N':>4} {'slices':>6} {'lambda':>8}  {'sha256':<12}  file")
    for e in entries:
        lam = "-" if e.lmbda is None else f"{e.lmbda:g}"
        print(
            f"{e.quality:>7}  {e.preset or 'custom':<18} {e.arch.N:>4} {e.arch.num_slices:>6} {lam:>8}  {e.sha256[:12]}  {e.file}"
        )
    return 0


def cmd_models_import(args) -> int:
    from ..model.config import PRESETS, TCMConfig, preset

    if args.arch_json:
        try:
            arch = TCMConfig.from_dict(json.loads(Path(args.arch_json).read_text()))
        except OSError as exc:
            raise CliError(f"cannot read {args.arch_json}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise CliError(f"{args.arch_json} is not valid JSON: {exc}") from None
        name = None
    elif args.preset:
        name, arch = args.preset, preset(args.preset)
    else:
        # A checkpoint from `tcm train` says what it is; an official one is official-small
        # unless told otherwise.
        from ..store import read_training_record

        record = read_training_record(args.checkpoint) if Path(args.checkpoint).is_file() else None
        if record and isinstance(record.get("arch"), dict):
            arch = TCMConfig.from_dict(record["arch"])
            name = next((k for k, v in PRESETS.items() if v == arch), None)
        else:
            name, arch = "official-small", preset("official-small")
    store = open_store(codec_choice(args))
    t0 = time.perf_counter()
    entry = store.import_checkpoint(
        args.checkpoint,
        args.quality,
        arch,
        preset=name,
        lmbda=args.lmbda,
        metric=args.metric,
        source=args.source,
        replace=args.replace,
        half=args.half,
    )
    print(
        f"imported {args.checkpoint} as quality {entry.quality} ({entry.file}, sha256 {entry.sha256[:12]}...) "
        f"into {store.root} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


COMMANDS = {
    "compress": cmd_compress,
    "decompress": cmd_decompress,
    "inspect": cmd_inspect,
}


def main(argv: Sequence[str] | None = None) -> int:
    prepare_threads()  # OpenMP reads these when torch loads, which the commands do later
    args = build_parser().parse_args(argv)
    if getattr(args, "handler", None) is not None:
        handler = args.handler
    elif args.command == "models":
        handler = cmd_models_list if args.models_command == "list" else cmd_models_import
    else:
        handler = COMMANDS[args.command]
    try:
        return handler(args)
    except TcmError as exc:
        print(f"tcm: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("tcm: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        print(
            "tcm: error: not enough memory to process this image (lower --max-pixels, or use a smaller image)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except OSError as exc:  # disk full, permission denied on output, ...
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"tcm: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
