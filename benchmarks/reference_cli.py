"""The reference procedure as whole commands, the baseline of benchmarks/bench_commands.py.

What a user of the official code runs to code images: a process that loads the checkpoint
(``torch.load``, ``load_state_dict``, then ``update()``, which builds the CDF tables when the
checkpoint has none, as the official ones have none), pads each image (centred) to a
multiple of 128 as the official evaluation script does, runs the official ``compress``
(benchmarks/reference_procedure.py) and writes the strings; another process reads them, runs
the official ``decompress``, crops and writes a PNG. The networks are this project's modules
with the reference's attention (the same arithmetic as the official class); the file layout
of the strings is this script's own (the official code writes none).

    python benchmarks/reference_cli.py compress --checkpoint W.pt --preset lite -o OUT a.png b.png
    python benchmarks/reference_cli.py decompress --checkpoint W.pt --preset lite -o OUT OUT/a.ref
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np
import torch
from PIL import Image

import reference_procedure as ref
from tcm_serve.codec.tables import prepare_entropy_tables
from tcm_serve.model.checkpoint import load_into, read_state_dict
from tcm_serve.model.config import preset
from tcm_serve.model.tcm import TCM

#: The official evaluation script pads (centred) to a multiple of 128.
PAD_TO = 128


def load(checkpoint: str, preset_name: str) -> TCM:
    """The official start-up: build, load the weights, ``update()`` the entropy tables."""
    ref.use_reference_attention()
    model = TCM(preset(preset_name)).eval()
    load_into(model, read_state_dict(checkpoint))
    prepare_entropy_tables(model)
    return model


def _padded(path: Path) -> tuple[torch.Tensor, int, int]:
    px = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    h, w = px.shape[:2]
    x = torch.from_numpy(px).permute(2, 0, 1)[None]
    ph, pw = -h % PAD_TO, -w % PAD_TO
    x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return x, h, w


def compress(model: TCM, images: list[Path], out: Path) -> None:
    for path in images:
        x, h, w = _padded(path)
        result = ref.compress(model, x)
        (y_string,), (z_string,) = result["strings"]
        zh, zw = result["shape"]
        head = struct.pack("<6I", h, w, zh, zw, len(y_string), len(z_string))
        (out / (path.stem + ".ref")).write_bytes(head + y_string + z_string)


def decompress(model: TCM, blobs: list[Path], out: Path) -> None:
    for path in blobs:
        data = path.read_bytes()
        h, w, zh, zw, ny, nz = struct.unpack_from("<6I", data)
        y_string = data[24 : 24 + ny]
        z_string = data[24 + ny : 24 + ny + nz]
        x_hat = ref.decompress(model, [[y_string], [z_string]], (zh, zw))
        ph, pw = x_hat.shape[2] - h, x_hat.shape[3] - w
        x_hat = x_hat[:, :, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        px = (x_hat[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        Image.fromarray(px).save(out / (path.stem + ".png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("op", choices=("compress", "decompress"))
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--preset", required=True)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    model = load(args.checkpoint, args.preset)
    args.out.mkdir(parents=True, exist_ok=True)
    (compress if args.op == "compress" else decompress)(model, args.inputs, args.out)


if __name__ == "__main__":
    main()
