"""The bundled model store: what `make serve` serves on a fresh machine.

These tests read the real `model_store/` of the repository (not a copy), so a commit that
breaks a weights file, forgets the manifest's records or ships levels out of rate order
fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcm_serve.codec.pipeline import compress_images, decompress_blob, load_model, store_resolver
from tcm_serve.imageio import read_image
from tcm_serve.runtime.preflight import verify_entries
from tcm_serve.store import ModelStore

from helpers import KODAK

BUNDLED = Path(__file__).resolve().parents[1] / "model_store"


@pytest.fixture(scope="module")
def store() -> ModelStore:
    return ModelStore(BUNDLED)


def test_bundled_store_has_four_lite_levels_with_their_records(store):
    entries = store.entries()
    assert len(entries) >= 4, "the issue asks for at least four bundled quality levels"
    lambdas = [e.lmbda for e in entries]
    assert lambdas == sorted(lambdas) and len(set(lambdas)) == len(lambdas), "quality must grow with lambda"
    for e in entries:
        assert e.preset == "lite", e
        t = e.training
        assert t and t["steps_done"] > 0 and t["lmbda"] == e.lmbda, e
        assert all("kodak" not in d.lower() for d in t["data"]), "never train on Kodak"
        ev = e.evaluation
        assert ev and ev["dataset"] == "kodak" and ev["images"] == 24, e
        assert (BUNDLED / e.file).stat().st_size < 16 * 2**20, "keep the checkpoints small (float16)"
    # Recorded Kodak results: rate and quality both rise with the level, spanning low to high rates.
    bpps = [e.evaluation["bpp"] for e in entries]
    psnrs = [e.evaluation["psnr"] for e in entries]
    assert bpps == sorted(bpps) and psnrs == sorted(psnrs), (bpps, psnrs)
    # The levels span low to high rates and ~3 dB. (The top level had to exceed 0.6 bpp until
    # stop 15 and 0.55 until stop 30: the lite model's PSNR saturates near 27.5 dB, so rate
    # bought above ~0.5 bpp adds bits, not quality. Stop 30's top level, trained at lambda 0.05
    # instead of fine-tuned to 0.5, gives more PSNR at fewer bits; docs/training.md.)
    assert bpps[0] < 0.15 and bpps[-1] > 0.5 and bpps[-1] > 4.5 * bpps[0], bpps
    assert psnrs[-1] - psnrs[0] > 2.5, psnrs


def test_bundled_weights_pass_the_serve_preflight(store):
    verify_entries(store, store.entries())  # the check `tcm serve` runs before listening


def test_bundled_levels_code_a_kodak_crop(store, tmp_path):
    """Every level round-trips a Kodak crop; higher levels spend more bits for a better image."""
    Image.open(KODAK / "kodim23.png").crop((256, 128, 512, 384)).save(tmp_path / "crop.png")
    img = read_image(tmp_path / "crop.png")
    resolve = store_resolver(store, torch.device("cpu"))
    sizes, psnrs = [], []
    for e in store.entries():
        lm = load_model(store, e.quality, torch.device("cpu"))
        c = compress_images(lm, [img])[0]
        d = decompress_blob(c.blob, resolve)
        assert d.pixels.shape == img.pixels.shape
        mse = np.mean((d.pixels.astype(np.float64) - img.pixels.astype(np.float64)) ** 2)
        sizes.append(len(c.blob))
        psnrs.append(10 * np.log10(255**2 / mse))
    assert sizes == sorted(sizes) and psnrs == sorted(psnrs), (sizes, psnrs)
    assert psnrs[0] > 20.0, psnrs
