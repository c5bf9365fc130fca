"""``tcm eval``: metrics, BD-rate, the Pillow baselines, published points, and the command end to end.

MS-SSIM and BD-rate are the field's packages (``pytorch_msssim``, ``bjontegaard``): the tests
here check our wrappers against values worked out independently (closed forms, and the
float64 numbers of the hand-written implementation they replaced; see docs/evaluation.md).
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tcm_serve.cli.main import main
from tcm_serve.evaluation import baselines, published
from tcm_serve.evaluation.bdrate import BD_METHODS, BDError, bd_rate
from tcm_serve.evaluation.metrics import MS_SSIM_MIN_SIDE, ms_ssim, psnr
from tcm_serve.evaluation.runner import (
    OURS,
    Curve,
    Measurement,
    bd_table,
    code_baseline,
    load_dataset,
    ours_at,
    summarise,
)

from helpers import KIT_QUALITY, KODAK, make_png


def _kodak(name: str) -> np.ndarray:
    return np.asarray(Image.open(KODAK / f"{name}.png").convert("RGB"))


def _posterise(a: np.ndarray) -> np.ndarray:
    """A deterministic distortion that needs no codec library: 16 levels per channel."""
    return ((a.astype(np.int32) // 16) * 16 + 8).astype(np.uint8)


# -- metrics -----------------------------------------------------------------------------------
def test_psnr_known_values():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255), abs=1e-12)  # MSE 1: 48.13 dB
    b = a.copy()
    b[..., 0] += 4  # one channel off by 4: MSE 16/3 over all samples (RGB PSNR, not a channel mean)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / (16 / 3)), abs=1e-12)


@pytest.mark.parametrize(
    ("rows", "cols", "expected_f64"),
    [
        # even sides; and odd sides, which exercise the zero-padded 2x2 pooling
        (slice(100, 300), slice(200, 456), 0.9734239351744217),
        (slice(0, 201), slice(0, 333), 0.9559390559004556),
    ],
)
def test_ms_ssim_matches_an_independent_float64_implementation(rows, cols, expected_f64):
    """The expected values are the project's former numpy MS-SSIM (float64 throughout, same
    parameters), which agreed with pytorch_msssim in float64 to 1e-15: the wrapper, in
    float32 as CompressAI's evaluation runs it, must be within float32 rounding of them."""
    a = np.ascontiguousarray(_kodak("kodim23")[rows, cols])
    b = _posterise(a)
    assert ms_ssim(a, b) == pytest.approx(expected_f64, abs=5e-6)
    assert psnr(a, b) == pytest.approx(34.6, abs=0.05)


def test_ms_ssim_of_flat_images_has_a_closed_form():
    """Flat images: every contrast-structure term is 1 and the luminance term is the same at
    every pixel and scale (176 = 11 * 2**4 halves evenly down to the 11-pixel window), so
    MS-SSIM = l ** 0.1333 with l = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 255)^2, per
    channel, then the channel mean. Catches a wrong data range (black against 10 is 0.689
    with 255, 0.16 with 1), weight or channel handling. The tolerance is float32's: its
    variances of a flat 200 are off by ~1e-3, which moves the contrast terms by ~2e-5."""
    c1 = (0.01 * 255) ** 2
    ref = np.empty((176, 176, 3), np.uint8)
    test = np.empty_like(ref)
    expected = []
    for ch, (x, y) in enumerate([(0, 10), (40, 90), (200, 180)]):
        ref[..., ch], test[..., ch] = x, y
        expected.append(((2 * x * y + c1) / (x * x + y * y + c1)) ** 0.1333)
    assert expected[0] == pytest.approx(0.689, abs=1e-3)
    assert ms_ssim(ref, test) == pytest.approx(float(np.mean(expected)), abs=1e-4)
    for ch in range(3):
        assert ms_ssim(ref[..., ch], test[..., ch]) == pytest.approx(expected[ch], abs=1e-4)


def test_ms_ssim_properties():
    a = np.ascontiguousarray(_kodak("kodim01")[:192, :256])
    assert ms_ssim(a, a) == 1.0
    mild = np.clip(a.astype(int) + np.indices(a.shape).sum(0) % 3 - 1, 0, 255).astype(np.uint8)
    strong = _posterise(a)
    assert 1.0 > ms_ssim(a, mild) > ms_ssim(a, strong) > 0.5
    assert ms_ssim(a, strong) == pytest.approx(ms_ssim(strong, a), abs=1e-6)
    # grayscale (H, W, 1) and (H, W) agree, and equal RGB with three equal channels
    g = a[:, :, 1:2]
    gs = _posterise(g)
    assert ms_ssim(g, gs) == pytest.approx(ms_ssim(g[:, :, 0], gs[:, :, 0]), abs=1e-15)
    assert ms_ssim(g, gs) == pytest.approx(ms_ssim(np.repeat(g, 3, 2), np.repeat(gs, 3, 2)), abs=1e-12)


def test_ms_ssim_refuses_small_or_mismatched_images():
    a = np.zeros((MS_SSIM_MIN_SIDE - 1, 300, 3), np.uint8)
    with pytest.raises(ValueError, match="at least 161"):
        ms_ssim(a, a)
    b = np.zeros((MS_SSIM_MIN_SIDE, MS_SSIM_MIN_SIDE, 3), np.uint8)
    assert ms_ssim(b, b) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(b, b[:, :, :1])


# -- BD-rate -----------------------------------------------------------------------------------
PSNR = [28.0, 30.5, 32.0, 34.8, 37.0]
RATE = [0.15, 0.27, 0.40, 0.71, 1.10]


@pytest.mark.parametrize("method", BD_METHODS)
def test_bd_rate_of_a_uniformly_cheaper_curve(method):
    """0.8x the rate at every PSNR: log-rate shifted by a constant, which both interpolants
    carry through exactly, so -20 % by hand (and +25 % the other way round)."""
    r = bd_rate(RATE, PSNR, [0.8 * v for v in RATE], PSNR, method=method)
    assert r.bd_rate == pytest.approx(-20.0, abs=1e-9) and r.method == method
    assert r.psnr_range == (28.0, 37.0)
    assert r.bd_psnr > 0
    back = bd_rate([0.8 * v for v in RATE], PSNR, RATE, PSNR, method=method)
    assert back.bd_rate == pytest.approx(25.0, abs=1e-9)  # 1/0.8 - 1
    same = bd_rate(RATE, PSNR, RATE, PSNR, method=method)
    assert same.bd_rate == pytest.approx(0.0, abs=1e-12) and same.bd_psnr == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("method", BD_METHODS)
def test_bd_rate_exact_for_log_linear_curves_sampled_at_different_points(method):
    """PCHIP and Akima reproduce a straight line, so differently sampled curves (different
    PSNRs and counts) still give the exact answer."""

    def rate(p, scale):
        return scale * 0.01 * 10 ** (0.1 * np.asarray(p))

    pa = np.array([26.0, 29.0, 31.5, 36.0, 40.0])
    pt = np.array([27.3, 30.1, 33.3, 38.2])
    r = bd_rate(rate(pa, 1.0), pa, rate(pt, 1.5), pt, method=method)
    assert r.bd_rate == pytest.approx(50.0, abs=1e-9)
    assert r.psnr_range == pytest.approx((27.3, 38.2))
    assert r.bd_psnr == pytest.approx(-10 * math.log10(1.5), abs=1e-9)  # slope 0.1 decade per dB
    narrow = bd_rate(rate(pa, 1.0), pa, rate(pt, 1.5), pt, psnr_range=(30.0, 32.0), method=method)
    assert narrow.bd_rate == pytest.approx(50.0, abs=1e-9) and narrow.psnr_range == (30.0, 32.0)


def test_bd_rate_reference_example():
    """The bjontegaard package's example points, given in its README's order (rate falling):
    the project's former hand-written PCHIP gave -4.417485350589045 % and +0.1196928 dB."""
    args = (
        [9487.76, 4593.60, 2486.44, 1358.24],
        [40.037, 38.615, 36.845, 34.851],
        [9787.80, 4469.00, 2451.52, 1356.24],
        [40.121, 38.651, 36.970, 34.987],
    )
    r = bd_rate(*args)
    assert r.bd_rate == pytest.approx(-4.417485350589045, abs=1e-9)
    assert r.bd_psnr == pytest.approx(0.11969278542479489, abs=1e-9)
    # Akima bends differently between the points: close to PCHIP, not equal
    akima = bd_rate(*args, method="akima")
    assert akima.bd_rate == pytest.approx(r.bd_rate, abs=0.5) and akima.bd_rate != pytest.approx(r.bd_rate, abs=1e-6)


def test_bd_rate_refuses_what_it_cannot_compute():
    with pytest.raises(BDError, match="share no PSNR"):
        bd_rate(RATE, PSNR, RATE, [p + 20 for p in PSNR])
    with pytest.raises(BDError, match="at least two points"):
        bd_rate(RATE, PSNR, [0.5], [31.0])
    with pytest.raises(BDError, match="at least two points"):
        bd_rate(RATE, PSNR, [0.5, 0.6], [31.0, 31.0])  # one distinct PSNR
    with pytest.raises(BDError, match="unknown BD interpolation method 'cubic'"):
        bd_rate(RATE, PSNR, RATE, PSNR, method="cubic")
    # duplicates and non-positive rates are dropped, not fatal
    r = bd_rate(RATE + [0.0], PSNR + [20.0], [0.8 * v for v in RATE] + [0.9], PSNR + [28.0])
    assert r.bd_rate == pytest.approx(-20.0, abs=1e-9)


def test_bd_table_pairs():
    def c(name, kind, scale):
        return Curve(name, name, kind, tuple(scale * v for v in RATE), tuple(PSNR))

    effort = ours_at(2)
    curves = [c("jpeg420", "baseline", 1.0), c("webp", "baseline", 0.6), c(OURS, "ours", 0.3), c(effort, "ours", 0.24)]
    for method in BD_METHODS:
        rows = bd_table(curves, "jpeg420", method=method)
        got = {(r.test, r.anchor): r.bd_rate for r in rows}
        # every curve against the anchor, ours (effort 0) against the others, efforts against effort 0
        assert set(got) == {("webp", "jpeg420"), (OURS, "jpeg420"), (effort, "jpeg420"), (OURS, "webp"), (effort, OURS)}
        assert got[(OURS, "webp")] == pytest.approx(-50.0, abs=1e-9)
        assert got[(OURS, "jpeg420")] == pytest.approx(-70.0, abs=1e-9)
        assert got[(effort, OURS)] == pytest.approx(-20.0, abs=1e-9)


# -- averaging -----------------------------------------------------------------------------------
def test_summaries_average_the_way_the_field_does():
    def m(image, nbytes, p, ms):
        return Measurement("jpeg420", "q50", 50, image, 100, 80, nbytes, 8 * nbytes / 8000, p, ms, None, 0.1, 0.2)

    (s,) = summarise([m("a", 1000, 30.0, 0.90), m("b", 3000, 40.0, 0.96)])
    assert s.images == 2 and s.bpp == pytest.approx(2.0) and s.psnr == pytest.approx(35.0)  # mean of PSNRs
    assert s.ms_ssim == pytest.approx(0.93)
    (s,) = summarise([m("a", 1000, 30.0, 0.90), m("b", 3000, 40.0, None)])
    assert s.ms_ssim is None  # not a mean over a different subset of images


# -- Pillow baselines ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two_images")
    (root / "a.png").write_bytes(make_png(176, 200, seed=11))
    (root / "b.png").write_bytes(make_png(168, 192, "L", seed=12))
    (root / "README.md").write_text("not an image")
    return root


@pytest.mark.parametrize("name", list(baselines.CODECS))
def test_baseline_codecs_on_two_images(name, small_dataset):
    reason = baselines.unavailable_reason(name)
    if reason:
        pytest.skip(reason)
    data = load_dataset(small_dataset)
    assert data.names == ("a.png", "b.png")
    low, high = (20, 80)
    ms = code_baseline(name, [low, high], data)
    assert [(m.setting, m.image) for m in ms] == [
        ("q20", "a.png"),
        ("q20", "b.png"),
        ("q80", "a.png"),
        ("q80", "b.png"),
    ]
    for m in ms:
        assert m.bytes > 0 and m.bpp == pytest.approx(8 * m.bytes / (m.width * m.height))
        assert 15 < m.psnr < 60 and 0 < m.ms_ssim <= 1
    lo_s, hi_s = summarise(ms)
    assert hi_s.bpp > lo_s.bpp and hi_s.psnr > lo_s.psnr and hi_s.ms_ssim >= lo_s.ms_ssim
    # the encoded bytes are a real file of that format, and decode to the original's shape
    codec = baselines.CODECS[name]
    blob = codec.encode(data.images[0].pixels, 50)
    with Image.open(io.BytesIO(blob)) as im:
        assert im.format == codec.format and im.size == (200, 176)
    assert codec.decode(codec.encode(data.images[1].pixels, 50), 1).shape == (168, 192, 1)


def test_jpeg_subsampling_settings_are_what_they_say():
    from PIL import JpegImagePlugin

    pixels = np.asarray(Image.open(io.BytesIO(make_png(64, 64, seed=3))).convert("RGB"))
    for name, sampling in (("jpeg420", 2), ("jpeg444", 0)):
        with Image.open(io.BytesIO(baselines.CODECS[name].encode(pixels, 75))) as im:
            assert JpegImagePlugin.get_sampling(im) == sampling


# -- published points ------------------------------------------------------------------------
def test_published_points_from_the_kit(conformance_dir, tmp_path):
    doc = published.load(conformance_dir / "rd-published.json")
    assert published.match_dataset(doc, KODAK) == "Kodak"
    assert published.match_dataset(doc, tmp_path) is None
    curves = {c.model: c for c in published.curves(doc, "Kodak")}
    small = curves["Small"]
    assert small.width == "N=64" and len(small.bpp) == 6
    assert small.bpp == tuple(sorted(small.bpp)) and small.bpp[0] == 0.161 and small.psnr[-1] == 37.96
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": {"Small": {"Kodak": {"PSNR": [30.0], "Bitrate": [0.1, 0.2]}}}}))
    from tcm_serve.errors import ConfigError

    with pytest.raises(ConfigError, match="malformed"):
        published.curves(published.load(bad), "Kodak")
    with pytest.raises(ConfigError, match="no dataset"):
        published.curves(doc, "Imagenet")


# -- the command -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kodak_crop(tmp_path_factory) -> Path:
    """One Kodak image cropped to 256x192 (one 256x256 padded tile: the kit model codes it in seconds)."""
    root = tmp_path_factory.mktemp("kodak_crop")
    Image.open(KODAK / "kodim23.png").convert("RGB").crop((220, 120, 476, 312)).save(root / "kodim23.png")
    return root


def _run(argv, capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_eval_end_to_end(kit_store, kodak_crop, conformance_dir, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(kit_store, store)  # --record writes the manifest: not the shared fixture's
    baseline_codecs = ["jpeg420", "jpeg444", "webp"] + ([] if baselines.unavailable_reason("avif") else ["avif"])
    out_csv, out_json, out_png = tmp_path / "rd.csv", tmp_path / "rd.json", tmp_path / "rd.png"
    argv = [
        "eval",
        str(kodak_crop),
        "--store",
        str(store),
        "--codecs",
        ",".join([OURS, *baseline_codecs]),
        "--sweep",
        "jpeg420=10,40,90",
        "--sweep",
        "jpeg444=10,40,90",
        "--sweep",
        "webp=10,50,90",
        *(["--sweep", "avif=20,50,80"] if "avif" in baseline_codecs else []),
        "--published",
        str(conformance_dir / "rd-published.json"),
        "--published-dataset",
        "Kodak",
        "--csv",
        str(out_csv),
        "--json",
        str(out_json),
        "--plot",
        str(out_png),
        "--record",
        "--effort",
        "0,1",
        "--quiet",
        "--threads",
        "1",  # the machine is shared with training: one torch thread is faster there
    ]
    import torch

    threads = torch.get_num_threads()
    try:
        rc, out, err = _run(argv, capsys)
    finally:
        torch.set_num_threads(threads)  # --threads sets a process-wide value
    assert rc == 0, err
    assert "BD-rate" in out and "webp" in out and f"{OURS} " in out

    rows = list(csv.DictReader(out_csv.open()))
    images = [r for r in rows if r["kind"] == "image"]
    means = [r for r in rows if r["kind"] == "mean"]
    assert len(images) == len(means) == 3 * len(baseline_codecs) + 2  # one image per setting, two efforts
    ours = next(r for r in images if r["codec"] == OURS)
    assert ours["setting"] == f"q{KIT_QUALITY}" and (ours["width"], ours["height"]) == ("256", "192")
    # rate from the whole .tcm file: the entropy-coded payload plus a small container
    bpp, payload = float(ours["bpp"]), float(ours["payload_bpp"])
    assert bpp == pytest.approx(8 * int(ours["bytes"]) / (256 * 192), abs=1e-6)
    assert payload < bpp < payload + 8 * 200 / (256 * 192)
    assert math.isfinite(float(ours["psnr"])) and 0 < float(ours["ms_ssim"]) <= 1

    doc = json.loads(out_json.read_text())
    assert doc["dataset"]["names"] == ["kodim23.png"]
    assert [s["setting"] for s in doc["codecs"]["jpeg420"]["settings"]] == ["q10", "q40", "q90"]
    assert doc["codecs"][OURS]["settings"][0]["bpp"] == pytest.approx(bpp, abs=1e-6)
    pairs = {(r["test"], r["anchor"]): r for r in doc["bd_rate"]["rows"]}
    assert pairs[("webp", "jpeg420")]["bd_rate_percent"] < 0  # WebP beats JPEG
    assert ("tcm-small-paper", "jpeg420") in pairs and (OURS, "webp") in pairs
    assert pairs[(OURS, "jpeg420")]["bd_rate_percent"] is None  # one level: no curve, and a note says so
    assert "two points" in pairs[(OURS, "jpeg420")]["note"]
    assert (ours_at(1), OURS) in pairs and (ours_at(1), "jpeg420") in pairs  # effort 1: its own curve
    tried = next(r for r in images if r["codec"] == ours_at(1))
    assert tried["setting"] == ours["setting"] and (tried["bytes"], tried["psnr"]) != (ours["bytes"], ours["psnr"])
    assert doc["models"][0]["quality"] == KIT_QUALITY and doc["environment"]["pillow"]

    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out_png) as im:
        assert im.size[0] > 600

    manifest = json.loads((store / "manifest.json").read_text())
    (entry,) = manifest["models"]
    assert entry["evaluation"]["images"] == 1 and entry["evaluation"]["bpp"] == pytest.approx(bpp, abs=1e-5)
    assert entry["evaluation"]["dataset"] == kodak_crop.name


def _error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcm: error: "), err
    return lines[0]


def test_eval_bad_input_fails_in_one_line(kit_store, small_dataset, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    empty_store = tmp_path / "empty_store"
    empty_store.mkdir()
    cases = [
        (["eval", str(tmp_path / "missing"), "--codecs", "jpeg420"], 1, "is not a directory"),
        (["eval", str(empty), "--codecs", "jpeg420"], 1, "holds no images"),
        (["eval", str(small_dataset), "--store", str(empty_store)], 1, "has no models"),
        (
            ["eval", str(small_dataset), "--store", str(kit_store), "--qualities", "7"],
            1,
            "quality 7 is not in the model store",
        ),
        (["eval", str(small_dataset), "--codecs", "jpeg420,heic"], 2, "unknown codec 'heic'"),
        (
            ["eval", str(small_dataset), "--codecs", "jpeg420", "--sweep", "jpeg420=0,50"],
            2,
            "quality must be in 1..100",
        ),
        (["eval", str(small_dataset), "--codecs", "jpeg420", "--qualities", "3"], 1, "tcm is not in --codecs"),
        (["eval", str(small_dataset), "--codecs", "jpeg420", "--effort", "1"], 1, "tcm is not in --codecs"),
        (["eval", str(small_dataset), "--effort", "0,9"], 2, "effort must be an integer from 0 to"),
        (["eval", str(small_dataset), "--codecs", "jpeg420", "--sweep", "webp=50"], 1, "webp is not in --codecs"),
        (
            ["eval", str(small_dataset), "--store", str(kit_store), "--holdout", "--record"],
            1,
            "is reported, not recorded",
        ),
        (["eval", str(small_dataset), "--codecs", "jpeg420", "--holdout"], 1, "no held-out image under"),
        (
            ["eval", str(small_dataset), "--codecs", "jpeg420", "--csv", str(tmp_path / "no" / "x.csv")],
            1,
            "does not exist",
        ),
    ]
    large = tmp_path / "large"
    large.mkdir()
    (large / "big.png").write_bytes(make_png(700, 700, seed=3))  # pads to 768x768: too large for effort
    cases.append((["eval", str(large), "--store", str(kit_store), "--effort", "1"], 1, "big.png: encoder effort runs"))
    for argv, code, message in cases:
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse: usage errors exit 2
            rc = exc.code
        err = capsys.readouterr().err
        assert rc == code, (argv, err)
        assert message in _error_line(err), (argv, err)

    # --plot without matplotlib: refused before any coding, with the install command
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc, out, err = _run(["eval", str(small_dataset), "--codecs", "jpeg420", "--plot", str(tmp_path / "p.png")], capsys)
    assert rc == 1 and out == ""
    assert "pip install 'tcm-serve[eval]'" in _error_line(err)

    # without the bjontegaard package (the eval extra): refused at once, whatever the options
    monkeypatch.setitem(sys.modules, "bjontegaard", None)
    rc, out, err = _run(["eval", str(small_dataset), "--codecs", "jpeg420"], capsys)
    assert rc == 1 and out == ""
    line = _error_line(err)
    assert "bjontegaard" in line and "pip install 'tcm-serve[eval]'" in line
    with pytest.raises(SystemExit) as exc:  # an unknown method is a usage error
        main(["eval", str(small_dataset), "--codecs", "jpeg420", "--bd-method", "cubic"])
    assert exc.value.code == 2 and "invalid choice: 'cubic'" in capsys.readouterr().err


def test_eval_baselines_only_with_grayscale_and_small_images(small_dataset, tmp_path, capsys):
    """No store needed without tcm; MS-SSIM left blank (with a note) for images under 161 px."""
    (tmp_path / "ds").mkdir()
    shutil.copy(small_dataset / "a.png", tmp_path / "ds" / "a.png")
    (tmp_path / "ds" / "tiny.png").write_bytes(make_png(40, 60, seed=5))
    out_json = tmp_path / "r.json"
    rc, out, err = _run(
        [
            "eval",
            str(tmp_path / "ds"),
            "--codecs",
            "jpeg420,webp",
            "--sweep",
            "jpeg420=20,60,90",
            "--sweep",
            "webp=20,60,90",
            "--json",
            str(out_json),
            "--quiet",
            "--bd-method",
            "akima",
        ],
        capsys,
    )
    assert rc == 0, err
    assert "BD-rate (AKIMA, shared PSNR interval" in out
    doc = json.loads(out_json.read_text())
    assert doc["bd_rate"]["method"] == "akima" and "AKIMA" in doc["method"]["bd_rate"]
    assert doc["environment"]["bjontegaard"] and doc["environment"]["pytorch-msssim"]
    assert all(s["ms_ssim"] is None for s in doc["codecs"]["jpeg420"]["settings"])
    assert any("MS-SSIM left blank for 1 image" in n for n in doc["notes"])
    assert any("official TCM points not shown" in n for n in doc["notes"])
    (row,) = doc["bd_rate"]["rows"]
    assert (row["test"], row["anchor"]) == ("webp", "jpeg420") and row["bd_rate_percent"] < 0


def test_eval_skips_a_codec_this_pillow_lacks(small_dataset, tmp_path, capsys, monkeypatch):
    """Pillow without AVIF (before 11.2): the run goes on without it and says so."""
    real = baselines.unavailable_reason
    monkeypatch.setattr(
        baselines,
        "unavailable_reason",
        lambda name: "AVIF is not supported by this Pillow 11.0.0" if name == "avif" else real(name),
    )
    out_json = tmp_path / "r.json"
    rc, out, err = _run(
        [
            "eval",
            str(small_dataset),
            "--codecs",
            "jpeg420,avif",
            "--sweep",
            "jpeg420=30,70",
            "--json",
            str(out_json),
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0, err
    assert "avif skipped: AVIF is not supported" in err
    doc = json.loads(out_json.read_text())
    assert list(doc["codecs"]) == ["jpeg420"] and any("avif skipped" in n for n in doc["notes"])
