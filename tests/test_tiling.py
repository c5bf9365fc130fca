"""Tiled transforms (tcm_serve/codec/tiling.py) and banded float64 convolutions
(tcm_serve/model/scratch.py): any image size in memory bounded by the tile.

What must hold: the plan covers every output cell once with windows the networks accept; a
tiled network equals the whole one wherever the halo covers its reach; an image that fits one
window codes exactly as without tiling; tiled coding is as good as whole coding (PSNR, bpp,
no seams); blobs decode whatever tile size either side used; the banded convolutions compute
what plain ones do, and portable blobs made with them decode without them and back.
"""

from __future__ import annotations

import io
import itertools
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from tcm_serve.codec.geometry import ALIGN, DEFAULT_TILE, MIN_PADDED, Y_STRIDE, Z_STRIDE, Geometry, tile_problem
from tcm_serve.codec.padding import pad, pixels_to_tensor
from tcm_serve.codec.pipeline import analyse_images, compress_images, decompress_blob, load_model
from tcm_serve.codec.tiling import (
    ENTROPY_HALO,
    WHOLE,
    TiledEntropyStages,
    TilePlan,
    Tiling,
    entropy_halo,
    run_tiled,
)
from tcm_serve.evaluation.metrics import psnr
from tcm_serve.imageio import decode_image, read_image
from tcm_serve.model.scratch import BandedConv2d, band_convolutions, bound_scratch, can_band
from tcm_serve.store import ModelStore
from test_bundled_store import BUNDLED

CPU = torch.device("cpu")


# -- the plan -------------------------------------------------------------------------------
@pytest.mark.parametrize("tile", [256, 384, 1024])
@pytest.mark.parametrize("halo", [128, 256])
@pytest.mark.parametrize("equal", [False, True])
def test_plan_covers_each_pixel_once_with_aligned_windows(tile, halo, equal):
    for length in range(MIN_PADDED, 4096 + 1, ALIGN):
        spans = TilePlan(length, MIN_PADDED, tile, halo, equal).rows
        # cores: contiguous, in order, cover [0, length), none larger than the tile
        assert spans[0].core_start == 0 and spans[-1].core_end == length
        assert all(a.core_end == b.core_start for a, b in itertools.pairwise(spans))
        if len(spans) == 1:
            assert (spans[0].start, spans[0].end) == (0, length) and length <= tile + 2 * halo
            continue
        assert len(spans) == -(-length // tile), (length, tile)
        assert all(s.core_end - s.core_start <= tile for s in spans)
        if equal:  # one size, so that the windows run as a batch
            assert len({s.end - s.start for s in spans}) == 1
        for s in spans:
            # a size the networks run on, on the attention grid, inside the axis
            assert s.start % ALIGN == 0 and s.end % ALIGN == 0 and s.end - s.start >= MIN_PADDED
            assert 0 <= s.start and s.end <= length
            # the core is inside its window with the whole halo on each side, except at the axis's ends
            assert s.core_start - s.start >= min(halo, s.core_start), (length, s)
            assert s.end - s.core_end >= min(halo, length - s.core_end), (length, s)


def test_tile_values_refused_with_the_rule():
    assert tile_problem(0) is None and tile_problem(DEFAULT_TILE) is None and tile_problem(256) is None
    for bad in (128, 300, -256, 1000):
        assert "multiple of 128" in tile_problem(bad)
        with pytest.raises(ValueError, match="multiple of 128"):
            TilePlan(512, 512, bad)
    with pytest.raises(ValueError, match="halo"):
        TilePlan(512, 512, 256, 64)
    with pytest.raises(ValueError, match="halo"):
        TilePlan(512, 512, 256, 0)


def test_whole_plan_and_small_images_are_one_window():
    assert WHOLE.plan(8192, 8192).is_whole
    assert Tiling(1024, 128).plan(1280, 1280).is_whole  # fits one window: tile + 2 halo
    assert not Tiling(1024, 128).plan(1408, 1280).is_whole
    assert Tiling.for_device(1024, CPU).batch == 1 and Tiling.for_device(1024, torch.device("cuda")).batch > 1
    assert Tiling(1024, 128, batch=4).plan(4096, 4096).equal  # a batch needs windows of one size
    assert not Tiling(1024, 128).plan(4096, 4096).equal  # one at a time, cut at the edges: less work


# -- run_tiled against the whole computation ---------------------------------------------------
def _local_net(reach: int, in_ch: int = 3, out_ch: int = 5) -> nn.Module:
    """A chain of 3x3 convolutions reaching ``reach`` elements each way, float64."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(in_ch, 8, 3, padding=1)]
    for _ in range(reach - 2):
        layers += [nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1)]
    layers += [nn.Tanh(), nn.Conv2d(8, out_ch, 3, padding=1)]
    return nn.Sequential(*layers).double().eval()


@torch.no_grad()
@pytest.mark.parametrize("equal", [False, True])
def test_tiled_equals_whole_where_the_halo_covers_the_reach(equal):
    net = _local_net(reach=12)  # 12 elements of 16 pixels: 192 pixels, under a 256-pixel halo
    x = torch.randn(2, 3, 64, 80, dtype=torch.float64)  # y-like: a 1024x1280-pixel image
    plan = TilePlan(1024, 1280, 256, 256, equal)
    assert plan.count == 20
    for batch in (1, 4) if equal else (1,):
        torch.testing.assert_close(run_tiled(net, [x], [Y_STRIDE], Y_STRIDE, plan, batch), net(x), rtol=0, atol=1e-12)
    # and not where it does not: a 128-pixel halo leaves the cores' borders wrong (the test can fail)
    short = TilePlan(1024, 1280, 256, 128, equal)
    assert (run_tiled(net, [x], [Y_STRIDE], Y_STRIDE, short) - net(x)).abs().max() > 1e-6


@torch.no_grad()
def test_tiled_rescaling_networks_with_several_inputs_and_outputs_equal_whole():
    """Image -> y cells (g_a's direction), y -> image (g_s's), z -> y (the hyper-synthesis') with
    two outputs, several inputs: exact for pixel (un)shuffles."""
    x = torch.randn(1, 3, 640, 896, dtype=torch.float64)
    plan = Tiling(256, 128).plan(640, 896)
    down = lambda t: F.pixel_unshuffle(t, Y_STRIDE)  # noqa: E731
    up = lambda t: F.pixel_shuffle(t, Y_STRIDE)  # noqa: E731
    y = run_tiled(down, [x], [1], Y_STRIDE, plan)
    torch.testing.assert_close(y, down(x), rtol=0, atol=0)
    torch.testing.assert_close(run_tiled(up, [y], [Y_STRIDE], 1, plan), x, rtol=0, atol=0)
    z = F.pixel_unshuffle(x, Z_STRIDE)
    two = lambda a, b: (F.pixel_shuffle(a, 4) * 2, F.pixel_shuffle(a, 4) + b)  # noqa: E731
    got = run_tiled(two, [z, y], [Z_STRIDE, Y_STRIDE], Y_STRIDE, plan)
    want = two(z, y)
    assert isinstance(got, tuple) and all(torch.equal(g, w) for g, w in zip(got, want))


# -- the codec, tiled -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite():
    return load_model(ModelStore(BUNDLED), 6, CPU)


def _code(lm, img, tiling: Tiling, decode_tiling: Tiling | None = None, portable: bool = True):
    before = lm.engine.tiling
    lm.engine.tiling = tiling
    try:
        (c,) = compress_images(lm, [img], portable=portable)
        lm.engine.tiling = decode_tiling or tiling
        return c, decompress_blob(c.blob, lambda h: lm).pixels
    finally:
        lm.engine.tiling = before


def _old_input(px: np.ndarray, geometry) -> Tensor:
    """The padded float input as it was made before the uint8 batch (pixels_to_tensor, pad)."""
    return pad(pixels_to_tensor(px), geometry.pad)[None]


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_uint8_input_codes_exactly_as_the_float_input(lite, kodak_dir, mode):
    """The pipeline now hands the engine uint8 pixels, converted one window at a time; the
    symbols must be those of the float tensor it used to make, for colour and grayscale, odd
    sizes and two paddings in one batch."""
    src = Image.open(kodak_dir / "kodim05.png").convert(mode)
    crops = [src.crop((0, 0, 301, 203)), src.crop((5, 7, 300, 250))]  # both pad to 384x256
    images = [decode_image(_png_bytes(c)) for c in crops]
    geometries = [Geometry.for_image(img.height, img.width) for img in images]
    assert len({g.padded_shape for g in geometries}) == 1 and geometries[0].pad != geometries[1].pad
    new = analyse_images(lite, images)
    old = [lite.engine.analyse(_old_input(img.pixels, g))[0] for img, g in zip(images, geometries)]
    for a, b in zip(new, old):
        assert a.sha256() == b.sha256() and np.array_equal(a.hint_positions, b.hint_positions)


def test_exact_blobs_ignore_tiling(kit_store, kodak_dir):
    """Exact (version 1) blobs are the reference's computation at any size: tiling is not
    applied to them, in compression or decompression."""
    from helpers import KIT_QUALITY

    lm = load_model(ModelStore(kit_store), KIT_QUALITY, CPU)
    img = decode_image(_png_bytes(Image.open(kodak_dir / "kodim05.png").convert("RGB").crop((0, 0, 640, 384))))
    whole, whole_px = _code(lm, img, WHOLE, portable=False)
    tiled, tiled_px = _code(lm, img, Tiling(256, 128), portable=False)
    assert Tiling(256, 128).plan(384, 640).count > 1
    assert tiled.blob == whole.blob and np.array_equal(tiled_px, whole_px)


def _border_band(length: int, borders: list[int], reach: int = 8) -> np.ndarray:
    band = np.zeros(length, bool)
    for b in borders:
        band[max(b - reach, 0) : b + reach] = True
    return band


@pytest.mark.parametrize("name", ["kodim01", "kodim23"])
def test_tiled_coding_is_as_good_as_whole_with_no_seams(lite, kodak_dir, name):
    """Small tiles (256 px: 3 cores across a Kodak image) against the whole image: PSNR within
    0.02 dB, bpp within 0.5%, and along the cores' borders (8 pixels each side) no more error
    than the whole image has there; any tile size decodes the other's blobs."""
    img = read_image(kodak_dir / f"{name}.png")
    src = img.pixels
    small = Tiling(256, 128)
    whole, whole_px = _code(lite, img, WHOLE)
    tiled, tiled_px = _code(lite, img, small)
    assert abs(psnr(src, tiled_px) - psnr(src, whole_px)) <= 0.02
    assert abs(tiled.bpp / whole.bpp - 1) <= 0.005
    # seams: the squared error in bands across the interior core borders, tiled vs whole
    plan = small.plan(*whole.header.geometry.padded_shape)
    left, _, top, _ = whole.header.pad
    rows = _border_band(src.shape[0], [s.core_start - top for s in plan.rows[1:]])
    cols = _border_band(src.shape[1], [s.core_start - left for s in plan.cols[1:]])
    seam = rows[:, None] | cols[None, :]
    assert seam.mean() > 0.04, "the bands cover a real part of the image"

    def mse(px):
        return np.mean((px.astype(np.float64) - src)[seam] ** 2)

    assert mse(tiled_px) <= 1.01 * mse(whole_px), (mse(tiled_px), mse(whole_px))
    # a blob decodes whatever tiling either side uses (the decoded symbols are checked by the CRC)
    _, cross_px = _code(lite, img, small, decode_tiling=WHOLE)
    assert np.abs(cross_px.astype(int) - tiled_px.astype(int)).max() <= 2


# -- tiled entropy-parameter networks ------------------------------------------------------------
def _entropy_chain(stages, z_hat: Tensor, y: Tensor, num_slices: int) -> list[Tensor]:
    """Everything the slice chain computes from z_hat and y, as the codec runs it."""
    means, scales = stages.hyper_synthesis(z_hat)
    out, decoded = [means, scales], []
    for i, y_slice in enumerate(y.chunk(num_slices, 1)):
        p = stages.slice_params(i, means, scales, decoded)
        decoded.append(stages.refine(i, p.mean_support, torch.round(y_slice - p.mu) + p.mu))
        out += [p.mu, p.scale, decoded[-1]]
    return out


def _encoder_chain(stages, z_hat: Tensor, y: Tensor, num_slices: int) -> list[Tensor]:
    """The same as the encoder runs it: slice parameters, rounding and LRP fused per slice
    (per tile for tiled stages: ``TiledEntropyStages.encode_slice``)."""
    from tcm_serve.codec.backends import encode_slice

    fused = stages.encode_slice if isinstance(stages, TiledEntropyStages) else partial(encode_slice, stages)
    means, scales = stages.hyper_synthesis(z_hat)
    out, decoded = [], []
    for i, y_slice in enumerate(y.chunk(num_slices, 1)):
        e = fused(i, means, scales, decoded, y_slice, i < num_slices - 1)
        out += [e.scale, e.y_q] + ([e.refined] if e.refined is not None else [])
        if e.refined is not None:
            decoded.append(e.refined)
    return out


def _decoder_chain(stages: TiledEntropyStages, z_hat: Tensor, y: Tensor, num_slices: int) -> list[Tensor]:
    """As the decoder runs it: each slice's parameters, then LRP; for a tiled image with the
    mean attention's gate kept instead of its output, which LRP finishes per tile."""
    means, scales = stages.hyper_synthesis(z_hat)
    out, decoded = [means, scales], []
    tiled = not stages._plan(means).is_whole
    for i, y_slice in enumerate(y.chunk(num_slices, 1)):
        p = stages.decoder_params(i, means, scales, decoded)
        assert (p.mean_gate is not None, p.mean_support is None) == (tiled, tiled)
        y_hat = torch.round(y_slice - p.mu) + p.mu
        if p.mean_gate is not None:
            decoded.append(stages.refine_from_gate(i, p.mean_gate, y_hat))
        else:
            decoded.append(stages.refine(i, p.mean_support, y_hat))
        out += [p.mu, p.scale, decoded[-1]]
    return out


@torch.no_grad()
@pytest.mark.parametrize("name", ["lite", "official-small", "lite-deep-hyper"])
def test_tiled_entropy_networks_compute_what_the_whole_ones_do(name):
    """The hyper-synthesis, slice networks and LRP in float64 by tiles (cores of 256 across a
    1536x1024 image; the encoder's fused steps and the decoder's, whose LRP recomputes the
    attention output per tile from its kept gate) against whole: equal to rounding (1e-10 relative) with the halo
    ``entropy_halo`` gives the layout, and for the official depths with 256 (their reach is
    less); far off with 128 (the test can fail). ``lite-deep-hyper``: a hyper stage of 4
    blocks, whose reach ``entropy_halo`` must grow with."""
    from dataclasses import replace

    from tcm_serve.codec.backends import TorchStages
    from tcm_serve.model.config import preset
    from tcm_serve.model.tcm import TCM

    torch.manual_seed(0)
    cfg = replace(preset("lite"), config=(2, 2, 2, 4, 2, 2)) if name == "lite-deep-hyper" else preset(name)
    whole = TorchStages(TCM(cfg).entropy_copy(torch.float64, CPU), CPU)
    z_hat = torch.round(3 * torch.randn(1, cfg.hyper_channels, 1024 // Z_STRIDE, 1536 // Z_STRIDE, dtype=torch.float64))
    y = 4 * torch.randn(1, cfg.M, 1024 // Y_STRIDE, 1536 // Y_STRIDE, dtype=torch.float64)
    want = _entropy_chain(whole, z_hat, y, cfg.num_slices)
    want_encoder = _encoder_chain(whole, z_hat, y, cfg.num_slices)

    def worst(halo: int, decoder: bool = False) -> float:
        tiled = TiledEntropyStages(whole, tile=256, halo=halo)
        assert TilePlan(1024, 1536, 256, halo).count > 1
        got = _entropy_chain(tiled, z_hat, y, cfg.num_slices)
        got_encoder = _encoder_chain(tiled, z_hat, y, cfg.num_slices)
        assert len(got_encoder) == len(want_encoder) == 3 * cfg.num_slices - 1
        pairs = [*zip(got, want), *zip(got_encoder, want_encoder)]
        if decoder:
            pairs += zip(_decoder_chain(tiled, z_hat, y, cfg.num_slices), want)
        return max(float(((g - w).abs() / (w.abs() + 1e-3)).max()) for g, w in pairs)

    assert worst(entropy_halo(cfg), decoder=True) < 1e-10
    if cfg.config[3] == 2:
        assert entropy_halo(cfg) == ENTROPY_HALO and worst(256) < 1e-10
    assert worst(128) > 1e-3


# -- banded float64 convolutions ---------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 5])
def test_banded_convolution_equals_the_plain_one(k):
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 7, k, padding=k // 2).double()
    x = torch.randn(2, 6, 37, 23, dtype=torch.float64)
    banded = BandedConv2d(conv, max_bytes=1)  # one row per band
    assert banded.band_rows(x) == 1
    with torch.no_grad():
        torch.testing.assert_close(banded(x), conv(x), rtol=0, atol=1e-12)
        assert torch.equal(BandedConv2d(conv, max_bytes=2**40)(x), conv(x))  # one band: the conv itself


@torch.no_grad()
def test_grouped_window_attention_is_bit_identical_and_bound_scratch_sets_it():
    from tcm_serve.model.layers import WMSA

    torch.manual_seed(2)
    for shifted, dtype in itertools.product((False, True), (torch.float32, torch.float64)):
        attn = WMSA(32, 32, 16, 8, shifted).to(dtype).eval()
        x = torch.randn(1, 48, 64, 32, dtype=dtype)  # 48 windows
        whole = attn(x)
        attn.max_windows = 5
        assert torch.equal(attn(x), whole), (shifted, dtype)  # bit for bit
    net = bound_scratch(nn.Sequential(WMSA(32, 32, 16, 8, False).double(), nn.Conv2d(4, 4, 3, padding=1)), 2**20)
    assert net[0].max_windows == 2**20 // (2 * 8**4 * 8) and isinstance(net[1], BandedConv2d)


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_banded_transformer_layers_compute_what_whole_ones_do(dtype):
    """A transformer layer in bands of rows (plain and shifted windows, bands that do not
    divide the height) against all rows at once: the same numbers per position and window,
    only the matrix products' row counts differ, so equal to rounding; outside
    ``banded_transformers`` and while training, never banded."""
    from tcm_serve.model.layers import SwinLayer
    from tcm_serve.model.scratch import banded_transformers

    torch.manual_seed(3)
    for shifted in (False, True):
        layer = SwinLayer(32, 32, 16, 8, shifted).to(dtype).eval()
        x = torch.randn(1, 56, 40, 32, dtype=dtype)  # 7 x 5 windows
        whole = layer(x)
        row_bytes = 40 * 4 * 32 * x.element_size()
        with banded_transformers(layer, max_bytes=20 * row_bytes):
            assert layer._band_rows(x) == 20  # bands of 16 rows for the attention, 20 for the MLP
            banded = layer(x)
        assert layer.band_bytes == 0
        torch.testing.assert_close(banded, whole, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)
    with banded_transformers(layer, max_bytes=1), torch.enable_grad():
        assert layer._band_rows(x) == x.shape[1]


@torch.no_grad()
def test_tcm_block_inference_fusion_is_the_training_sum():
    """The TCM block's in-place fusion at inference gives the training path's result bit for
    bit (the same sum, added the other way round)."""
    from tcm_serve.model.layers import ConvTransBlock

    torch.manual_seed(4)
    block = ConvTransBlock(16, 16, 8, 8, shifted=True).eval()
    x = torch.randn(1, 32, 32, 24)
    with torch.enable_grad():
        want = block(x).detach()
    assert torch.equal(block(x), want)


def test_only_same_size_convolutions_are_banded():
    assert not can_band(nn.Conv2d(3, 3, 3, stride=2, padding=1))
    assert not can_band(nn.Conv2d(3, 3, 3, padding=0))
    with pytest.raises(ValueError, match="cannot band"):
        BandedConv2d(nn.Conv2d(3, 3, 3, stride=2, padding=1))
    net = band_convolutions(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, 2, 1)))
    assert [type(m).__name__ for m in net] == ["BandedConv2d", "Conv2d", "Conv2d"]


def test_portable_blobs_decode_across_banding(kodak_dir):
    """The float64 entropy path banded one row at a time against unbanded: each decodes the
    other's portable blobs to the same symbols (the container's CRC checks them)."""
    store = ModelStore(BUNDLED)
    plain, narrow = load_model(store, 2, CPU, tile=0), load_model(store, 2, CPU, tile=0)
    for m in plain.engine.portable_path.stages.inner.model.modules():
        if isinstance(m, BandedConv2d):
            m.max_bytes = 2**40
    for m in narrow.engine.portable_path.stages.inner.model.modules():
        if isinstance(m, BandedConv2d):
            m.max_bytes = 1
    img = decode_image(_crop_png(kodak_dir / "kodim07.png", 384, 256))
    for enc, dec in ((plain, narrow), (narrow, plain)):
        (c,) = compress_images(enc, [img])
        out = decompress_blob(c.blob, lambda h, dec=dec: dec)
        assert out.pixels.shape == img.pixels.shape


def _crop_png(path, width: int, height: int) -> bytes:
    return _png_bytes(Image.open(path).convert("RGB").crop((0, 0, width, height)))


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# -- the knob: --tile and TCM_TILE ------------------------------------------------------------
def test_tile_option_and_setting(capsys, monkeypatch, tmp_path, kodak_dir):
    """``--tile`` and ``TCM_TILE`` take the same values; a bad one is one line and no output;
    a blob made with one tile size decodes with another."""
    from tcm_serve.cli.main import main
    from tcm_serve.config import load_settings
    from tcm_serve.errors import ConfigError

    src = tmp_path / "kodim05.png"
    src.write_bytes((kodak_dir / "kodim05.png").read_bytes())
    blob, png = tmp_path / "a.tcm", tmp_path / "a.png"
    for bad in ("100", "abc", "-256"):
        with pytest.raises(SystemExit) as exc:
            main(["compress", str(src), "-o", str(blob), "-q", "1", "--tile", bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and "--tile" in err[0], err
        assert not blob.exists()
    monkeypatch.setenv("TCM_TILE", "300")
    assert main(["compress", str(src), "-o", str(blob), "-q", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tile must be 0 (off) or a multiple of 128" in err[0], err
    with pytest.raises(ConfigError, match="tile"):
        load_settings()
    monkeypatch.setenv("TCM_TILE", "256")
    assert load_settings().tile == 256 and load_settings(tile=0).tile == 0
    assert main(["compress", str(src), "-o", str(blob), "-q", "1"]) == 0  # TCM_TILE=256: tiled
    assert main(["decompress", str(blob), "-o", str(png), "--tile", "0"]) == 0  # decoded whole
    assert Image.open(png).size == (768, 512)


# -- the service: a 24 MP photo ------------------------------------------------------------------
#: Peak memory a ``tcm serve`` of one bundled level may reach coding a 24 MP photo: measured
#: 2.5 GiB for ``tcm compress`` of 24 MP at q6 with the default tile (docs/codec.md, "Tiling"),
#: plus the service's request buffers and a margin. Whole-image coding took 9 GiB at 12 MP.
SERVER_24MP_PEAK = 6 * 2**30


#: The CPU deployment's settings (Kubernetes overlay; the CPU image and compose carry the same).
CPU_OVERLAY_ENV = BUNDLED.parent / "deploy" / "overlays" / "cpu" / "tcm.env"


def cpu_deployment_limits() -> list[str]:
    """``tcm serve`` options for the CPU deployment's image, body, queue and time limits."""
    lines = CPU_OVERLAY_ENV.read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    keys = ("TCM_MAX_PIXELS", "TCM_MAX_BODY_BYTES", "TCM_MAX_QUEUE", "TCM_REQUEST_TIMEOUT_S")
    return [arg for key in keys for arg in ("--" + key[4:].lower().replace("_", "-"), env[key])]


@pytest.mark.slow
def test_a_24_megapixel_photo_through_a_real_server(tmp_path, shared_dir):
    """/compress and /decompress of a 5664x4248 photo on a real ``tcm serve`` with the CPU
    deployment's limits (default tile): it round-trips, and the server's peak memory stays
    under ``SERVER_24MP_PEAK``."""
    import httpx

    from fuzzing import proc_status
    from servers import Server

    source = shared_dir / "data" / "train" / "debian-wallpaper-photos" / "lomiri2004_Kleiber_by_Lukas_Baubkus.jpg"
    buf = io.BytesIO()
    Image.open(source).convert("RGB").resize((5664, 4248), Image.LANCZOS).save(buf, format="JPEG", quality=92)
    photo = buf.getvalue()
    srv = Server(BUNDLED, tmp_path / "serve.log", "--qualities", "2", *cpu_deployment_limits())
    try:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=630) as http:
            r = http.post("/compress?quality=2", content=photo, headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
            r = http.post("/decompress", content=r.content, headers={"content-type": "application/x-tcm"})
            assert r.status_code == 200, r.text
        out = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
        src = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
        assert out.shape == src.shape == (4248, 5664, 3)
        assert psnr(src, out) > 28, psnr(src, out)
        peak = proc_status(srv.proc.pid)["VmHWM"] * 1024
        assert peak < SERVER_24MP_PEAK, peak / 2**30
    finally:
        srv.stop()


# -- buffers outside the heap (tcm_serve/tuning.py) ------------------------------------------------
def test_large_buffers_are_mapped_outside_the_heap_and_small_ones_are_not(monkeypatch):
    """A CPU buffer of at least OUTSIDE_HEAP_BYTES gets an anonymous mapping of its own (of
    exactly its size, writable, the requested shape and dtype); smaller ones, and other
    devices, come from torch's allocator. Trimming the heap is safe to call at any time."""
    import mmap

    from tcm_serve import tuning

    maps: list[int] = []
    real_mmap = mmap.mmap

    def counting_mmap(fileno: int, length: int, **kw: int) -> mmap.mmap:
        maps.append(length)
        return real_mmap(fileno, length, **kw)

    monkeypatch.setattr(tuning.mmap, "mmap", counting_mmap)
    cpu = torch.device("cpu")
    shape = (1, 4, 1024, tuning.OUTSIDE_HEAP_BYTES // (4 * 1024 * 8))  # float64: exactly the threshold
    big = tuning.empty_outside_heap(shape, torch.float64, cpu)
    assert maps == [tuning.OUTSIDE_HEAP_BYTES]
    assert big.shape == shape and big.dtype == torch.float64
    big.fill_(2.5)
    assert float(big.sum()) == 2.5 * big.numel()
    small = tuning.empty_outside_heap((1, 4, 8, 8), torch.float32, cpu)
    assert small.shape == (1, 4, 8, 8) and maps == [tuning.OUTSIDE_HEAP_BYTES]
    tuning.release_free_memory()
