"""Make the golden portable blobs that every test run, on every machine, must decode.

    .venv/bin/python tests/golden/make_golden.py      # from the repository root
    .venv/bin/python tests/golden/make_golden.py lite-q6-coffee-136x200   # only the named blobs

Writes ``*.tcm``, the decoded ``*.png`` and ``golden.json`` (SHA-256 of each blob and of its
decoded symbols) into this folder. Run it only when the format or a model they name
changes on purpose: these files are the proof that blobs made once keep decoding, so
regenerating them hides exactly the regression they exist to catch: name only the blobs whose
model changed, so the others keep proving that blobs made on another machine decode here. The
inputs are the
conformance kit's CC0 coffee crops; the models are the kit checkpoint (with the kit's
tables) and the bundled store's q1 and q6.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent))

#: (blob name, model, kit vector whose input.png is the image)
GOLDEN = (
    ("kit-coffee-136x200", "kit", "coffee-136x200"),
    ("kit-coffee-140x260", "kit", "coffee-140x260"),
    ("lite-q1-coffee-140x260", "bundled:1", "coffee-140x260"),
    ("lite-q6-coffee-136x200", "bundled:6", "coffee-136x200"),
)


def main() -> None:
    import torch

    from tcm_serve.codec.container import unpack
    from tcm_serve.codec.hints import decode_hints
    from tcm_serve.codec.pipeline import coded_image, compress_images, decompress_blob, load_model
    from tcm_serve.imageio import read_image, write_png
    from tcm_serve.store import DEFAULT_STORE, ModelStore

    from helpers import CONFORMANCE, kit_store_at

    wanted = set(sys.argv[1:]) or {name for name, _, _ in GOLDEN}
    unknown = wanted - {name for name, _, _ in GOLDEN}
    if unknown:
        raise SystemExit(f"make_golden.py: unknown blob(s): {', '.join(sorted(unknown))}")
    torch.set_num_threads(2)
    cpu = torch.device("cpu")
    kit_root = kit_store_at(HERE / ".kit_store")
    kept = {r["name"]: r for r in json.loads((HERE / "golden.json").read_text())["blobs"]} if sys.argv[1:] else {}
    records = []
    for name, model, vector in GOLDEN:
        if name not in wanted:
            records.append(kept[name])
            continue
        if model == "kit":
            store, quality = ModelStore(kit_root), 3
        else:
            store, quality = ModelStore(DEFAULT_STORE), int(model.split(":")[1])
        lm = load_model(store, quality, cpu)
        img = read_image(CONFORMANCE / "vectors" / vector / "input.png")
        (res,) = compress_images(lm, [img])
        f = unpack(res.blob)
        _, symbols = lm.engine.decode_latent(coded_image(f), f.header.z_shape)
        out = decompress_blob(res.blob, lambda h: lm)
        (HERE / f"{name}.tcm").write_bytes(res.blob)
        (HERE / f"{name}.png").unlink(missing_ok=True)
        write_png(HERE / f"{name}.png", out.pixels)
        records.append(
            {
                "name": name,
                "model": model,
                "quality": quality,
                "image": vector,
                "weights_sha256": lm.entry.sha256,
                "blob_sha256": hashlib.sha256(res.blob).hexdigest(),
                "symbols_sha256": symbols.sha256(),
                "bytes": len(res.blob),
                "hints": int(decode_hints(f.hints, symbols.y_symbols.size, 64)[0].size),
            }
        )
        print(name, len(res.blob), "bytes", records[-1]["symbols_sha256"][:16])
    (HERE / "golden.json").write_text(
        json.dumps({"made_with": f"torch {torch.__version__}", "blobs": records}, indent=2) + "\n"
    )
    for p in (HERE / ".kit_store").glob("*"):
        p.unlink()
    (HERE / ".kit_store").rmdir()


if __name__ == "__main__":
    main()
