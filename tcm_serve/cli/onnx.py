"""``tcm export-onnx``: export a store's models to ONNX graphs for the onnx backend.

The onnx backend (``--backend onnx``, ``TCM_BACKEND=onnx``) exports missing graphs on
first use; this command does it ahead of time (e.g. while building an image, or into a
writable directory when the store is read-only: ``--out DIR`` then ``TCM_ONNX_DIR=DIR``).
Graphs are named after the weights' SHA-256, so re-running after new weights were
imported rebuilds them, and re-running otherwise reuses them (``--force`` rebuilds).
"""

from __future__ import annotations

import argparse
import time

from ..errors import TcmError
from .argtypes import add_store_option, codec_choice, open_store, quality


class ExportError(TcmError):
    code = "export_failed"


def add_parsers(sub) -> None:
    p = sub.add_parser("export-onnx", help="export store models to ONNX graphs (for --backend onnx)")
    add_store_option(p)
    p.add_argument("-q", "--quality", type=quality, help="quality level to export (default: every level in the store)")
    p.add_argument("--out", help="directory for the graphs (default: the store directory, next to the checkpoints)")
    p.add_argument("--force", action="store_true", help="rebuild graphs even when up to date")
    p.add_argument(
        "--check", action="store_true", help="after export, compare every graph with PyTorch on a test input"
    )
    p.set_defaults(handler=cmd_export_onnx)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..codec.onnx_graphs import ensure_graphs, parity_report

    store = open_store(codec_choice(args))
    entries = store.entries()
    if args.quality is not None:
        entries = [store.entry(args.quality)]
    if not entries:
        raise ExportError(f"model store {store.root} has no models (add one with: tcm models import)")
    out = args.out or store.root
    for entry in entries:
        t0 = time.perf_counter()
        model = store.load_model(entry)
        graphs, built = ensure_graphs(model, entry, out, force=args.force)
        graphs.verify()
        what = f"exported in {time.perf_counter() - t0:.1f} s" if built else "up to date"
        print(f"q{entry.quality}: {len(graphs.names)} graphs {graphs.directory}/{graphs.prefix}-*.onnx ({what})")
        if args.check:
            for name, diff in parity_report(model, graphs).items():
                print(f"  {name:<8} max |onnx - torch| = {diff:.2e}")
    return 0
