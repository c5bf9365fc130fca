"""Encoder effort (tcm_serve/codec/effort.py, search.py): latents optimised per image, with a
format and a decoder that do not change.

The search runs the bundled lite models on Kodak crops (a few seconds per search here).
What is checked: the levels and their refusals, that the search never ends worse than it
started by the model's own estimate, that it is repeatable and leaves the weights and the
caller's random state alone, that its blobs decode with a decoder that never saw the
encoder (portable and exact), that it gains on a real photo, and the CLI's and the API's
handling of it (the API's in tests/test_api.py).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcm_serve.cli.main import main
from tcm_serve.codec import effort as effort_module
from tcm_serve.codec.container import unpack
from tcm_serve.codec.effort import EFFORT_STEPS, MAX_EFFORT, LatentSearch, effort_problem
from tcm_serve.codec.padding import padded_batch, to_unit
from tcm_serve.codec.pipeline import (
    compress_images,
    decompress_blob,
    image_geometry,
    load_model,
    store_resolver,
)
from tcm_serve.codec.search import coded_loss, search_latents
from tcm_serve.errors import ConfigError, ImageTooLargeError
from tcm_serve.imageio import DecodedImage, read_image
from tcm_serve.runtime.batcher import Job
from tcm_serve.store import ModelStore

from helpers import KODAK, require

BUNDLED = Path(__file__).resolve().parents[1] / "model_store"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lite():
    """The bundled q2 model: trained with lambda 0.0035 (its manifest says so)."""
    return load_model(ModelStore(BUNDLED), 2, CPU)


def kodak_crop(name: str, height: int = 256, width: int = 384) -> DecodedImage:
    img = read_image(require(KODAK / name))
    pixels = np.ascontiguousarray(img.pixels[:height, :width])
    return DecodedImage(pixels, img.mode, img.source_format)


def rd_cost(lmbda: float, img: DecodedImage, blob: bytes) -> tuple[float, float, float]:
    """(lambda * 255^2 * MSE + bpp, bpp, PSNR) of a blob decoded by a fresh decoder."""
    dec = decompress_blob(blob, store_resolver(ModelStore(BUNDLED), CPU))
    mse = float(np.mean((dec.pixels.astype(np.float64) - img.pixels.astype(np.float64)) ** 2))
    bpp = 8.0 * len(blob) / (img.width * img.height)
    return lmbda * mse + bpp, bpp, 10 * math.log10(255**2 / mse)


# -- levels and refusals -------------------------------------------------------------------
def test_levels():
    assert EFFORT_STEPS[0] == 0 and MAX_EFFORT == len(EFFORT_STEPS) - 1
    assert all(b > a for a, b in zip(EFFORT_STEPS, EFFORT_STEPS[1:]))
    assert LatentSearch.for_level(0, 0.01) is None
    search = LatentSearch.for_level(2, 0.01)
    assert search is not None and search.steps == EFFORT_STEPS[2] and search.lmbda == 0.01
    for bad in (-1, MAX_EFFORT + 1, True, 1.5, "1"):
        assert effort_problem(bad) is not None
        with pytest.raises(ValueError, match="effort must be an integer"):
            LatentSearch.for_level(bad, 0.01)  # type: ignore[arg-type]


def test_refuses_models_it_cannot_search_for():
    with pytest.raises(ConfigError, match="lambda"):
        LatentSearch.for_level(1, None)
    with pytest.raises(ConfigError, match="ms-ssim"):
        LatentSearch.for_level(1, 0.01, "ms-ssim")
    assert LatentSearch.for_level(0, None) is None  # effort 0 needs nothing


def test_large_image_refused_before_any_work(lite, monkeypatch):
    monkeypatch.setattr(effort_module, "MAX_EFFORT_PIXELS", 256 * 256)
    img = kodak_crop("kodim01.png", 256, 384)
    ran = []
    monkeypatch.setattr(lite.engine, "analyse", lambda *a, **k: ran.append(1))
    with pytest.raises(ImageTooLargeError, match="effort 0"):
        compress_images(lite, [img], effort=1)
    assert not ran


def test_jobs_of_different_effort_never_share_a_batch():
    job = lambda effort: Job("compress", 2, (256, 256), None, 0.0, variant="portable", effort=effort)  # noqa: E731
    assert job(0).key != job(1).key
    assert job(1).key == job(1).key


# -- the search ------------------------------------------------------------------------------
def test_model_likelihoods_in_eval_are_the_coded_ones(lite):
    """``from_latents`` in eval takes likelihoods at the rounded latents, straight through:
    the values are the entropy modules' own eval outputs."""
    model = lite.engine.model
    img = kodak_crop("kodim04.png", 128, 128)
    x = to_unit(padded_batch([img.pixels], [image_geometry(img).pad]))
    with torch.no_grad():
        y = model.g_a(x)
        z = model.h_a(y)
        out = model.from_latents(y, z, noisy_likelihoods=False)
        _, z_lik = model.entropy_bottleneck(z)
    assert torch.equal(out["likelihoods"]["z"], z_lik)
    assert torch.equal(model(x)["x_hat"], out["x_hat"])


def test_search_never_ends_worse_and_is_repeatable(lite):
    model = lite.engine.model
    img = kodak_crop("kodim23.png", 128, 256)
    x = to_unit(padded_batch([img.pixels], [image_geometry(img).pad]))
    with torch.no_grad():
        y = model.g_a(x)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    rng_before = torch.random.get_rng_state()
    search = LatentSearch(steps=8, lmbda=lite.entry.lmbda)
    first = search_latents(model, x, y, search)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "the caller's random state must be left alone"
    second = search_latents(model, x, y, search)
    assert first.final_loss < first.initial_loss and first.steps == 8
    assert first.final_loss == pytest.approx(coded_loss(model, x, first.y, first.z, lite.entry.lmbda))
    assert torch.equal(first.y, second.y) and torch.equal(first.z, second.z)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), f"the search changed {k}"
    assert not any(p.requires_grad for p in model.parameters())


def test_search_stops_at_its_deadline(lite):
    """Past its deadline (the service passes the request's) the search stops and returns the
    best latents so far: a worker is not held for an answer nobody waits for."""
    model = lite.engine.model
    img = kodak_crop("kodim23.png", 128, 128)
    x = to_unit(padded_batch([img.pixels], [image_geometry(img).pad]))
    with torch.no_grad():
        y = model.g_a(x)
    late = LatentSearch(steps=10_000, lmbda=lite.entry.lmbda, deadline=time.monotonic() - 1)
    found = search_latents(model, x, y, late)  # 10,000 steps would take hours
    assert torch.equal(found.y, y) and found.final_loss == found.initial_loss


@pytest.mark.parametrize("bitstream", ["portable", "exact"])
def test_effort_blob_decodes_with_a_decoder_that_never_saw_it(lite, bitstream):
    img = kodak_crop("kodim04.png", 128, 256)
    portable = bitstream == "portable"
    (plain,) = compress_images(lite, [img], portable=portable)
    (tried,) = compress_images(lite, [img], portable=portable, effort=1)
    assert tried.blob != plain.blob, "effort changed nothing"
    header, plain_header = unpack(tried.blob).header, unpack(plain.blob).header
    # nothing records the effort: the same header but for the checksum of other symbols
    assert header.version == plain_header.version and header.backend == plain_header.backend
    assert (header.width, header.height, header.z_shape) == (
        plain_header.width,
        plain_header.height,
        plain_header.z_shape,
    )
    decoded = decompress_blob(tried.blob, store_resolver(ModelStore(BUNDLED), CPU))
    assert decoded.pixels.shape == img.pixels.shape


def test_effort_gains_on_a_photo(lite):
    """The whole point, on a real Kodak crop with the real coder: effort 2 codes the image
    at a lower rate-distortion cost (the model's objective, measured on the decoded image
    and the blob's size) than effort 0."""
    img = kodak_crop("kodim04.png", 256, 384)
    (plain,) = compress_images(lite, [img])
    (tried,) = compress_images(lite, [img], effort=2)
    cost0, bpp0, psnr0 = rd_cost(lite.entry.lmbda, img, plain.blob)
    cost2, bpp2, psnr2 = rd_cost(lite.entry.lmbda, img, tried.blob)
    assert cost2 < cost0, (cost0, bpp0, psnr0, cost2, bpp2, psnr2)


# -- the CLI -------------------------------------------------------------------------------------
def test_cli_effort(capsys, tmp_path):
    src = tmp_path / "crop.png"
    Image.fromarray(kodak_crop("kodim04.png", 128, 256).pixels).save(src)
    out = tmp_path / "k.tcm"
    code = main(["compress", str(src), "-o", str(out), "-q", "1", "--effort", "1", "--store", str(BUNDLED)])
    stdout, _ = capsys.readouterr()
    assert code == 0 and "effort 1" in stdout
    code = main(["decompress", str(out), "-o", str(tmp_path / "k.png"), "--store", str(BUNDLED)])
    assert code == 0 and (tmp_path / "k.png").stat().st_size > 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["compress", str(src), "-o", str(tmp_path / "x.tcm"), "--effort", str(MAX_EFFORT + 1)])
    _, err = capsys.readouterr()
    assert exc.value.code == 2
    assert err.strip().count("\n") == 0 and f"from 0 to {MAX_EFFORT}" in err
    assert not (tmp_path / "x.tcm").exists()
