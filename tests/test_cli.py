"""The `tcm` CLI end to end, with a store imported from the conformance checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcm_serve.cli.main import main
from tcm_serve.codec.container import unpack
from tcm_serve.codec.geometry import Geometry
from tcm_serve.codec.padding import crop, pad, pixels_to_tensor, tensor_to_pixels

from helpers import KIT_CHECKPOINT, KIT_QUALITY, KIT_VECTORS, cpu_allocation_error, index_drift

TCM = [sys.executable, "-m", "tcm_serve.cli.main"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, needle: str | None = None) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tcm: error: ")
    assert "Traceback" not in err
    if needle:
        assert needle in lines[0], lines[0]


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    Image.fromarray(arr).save(path, **kw)
    return path


@pytest.fixture()
def store_args(kit_store):
    return ["--store", str(kit_store)]


def test_models_list(capsys, kit_store):
    code, out, _ = run_cli(capsys, "models", "list", "--json", "--store", str(kit_store))
    assert code == 0
    data = json.loads(out)
    (entry,) = data["models"]
    assert entry["quality"] == KIT_QUALITY and entry["arch"]["N"] == 32 and entry["preset"] == "conformance-small"
    assert entry["lambda"] == 0.013
    code, out, _ = run_cli(capsys, "models", "list", "--store", str(kit_store))
    assert code == 0 and "conformance-small" in out


def test_models_import_with_arch_json_and_errors(capsys, tmp_path):
    arch = tmp_path / "arch.json"
    arch.write_text(
        json.dumps(
            {
                "N": 32,
                "M": 320,
                "config": [2] * 6,
                "head_dim": [8, 16, 32, 32, 16, 8],
                "num_slices": 2,
                "max_support_slices": 5,
            }
        )
    )
    store = tmp_path / "store"
    code, out, err = run_cli(
        capsys,
        "models",
        "import",
        str(KIT_CHECKPOINT),
        "-q",
        "5",
        "--arch-json",
        str(arch),
        "--lambda",
        "0.013",
        "--store",
        str(store),
    )
    assert code == 0, err
    manifest = json.loads((store / "manifest.json").read_text())
    (entry,) = manifest["models"]
    assert entry["quality"] == 5 and entry["sha256"] == hashlib.sha256((store / entry["file"]).read_bytes()).hexdigest()
    # duplicate quality without --replace
    code, _, err = run_cli(
        capsys, "models", "import", str(KIT_CHECKPOINT), "-q", "5", "--arch-json", str(arch), "--store", str(store)
    )
    assert_one_line_error(code, err, "already exists")
    # wrong architecture for the checkpoint: names the first offending key
    code, _, err = run_cli(
        capsys, "models", "import", str(KIT_CHECKPOINT), "-q", "6", "--preset", "official-small", "--store", str(store)
    )
    assert_one_line_error(code, err, "has shape")
    # bad arch JSON, bad quality, unknown preset, missing checkpoint
    arch.write_text("{not json")
    code, _, err = run_cli(
        capsys, "models", "import", str(KIT_CHECKPOINT), "-q", "7", "--arch-json", str(arch), "--store", str(store)
    )
    assert_one_line_error(code, err, "not valid JSON")
    code, _, err = run_cli(
        capsys, "models", "import", str(KIT_CHECKPOINT), "-q", "7", "--preset", "nope", "--store", str(store)
    )
    assert_one_line_error(code, err, "unknown preset")
    code, _, err = run_cli(
        capsys,
        "models",
        "import",
        str(tmp_path / "missing.pth"),
        "-q",
        "7",
        "--preset",
        "conformance-small",
        "--store",
        str(store),
    )
    assert_one_line_error(code, err, "not found")
    with pytest.raises(SystemExit) as exc:
        main(["models", "import", str(KIT_CHECKPOINT), "-q", "0", "--store", str(store)])
    assert exc.value.code == 2
    # the failed imports left the store as it was
    assert json.loads((store / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in store.iterdir()) == sorted(["manifest.json", entry["file"]])


def test_store_checksum_mismatch_is_refused(capsys, kit_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(kit_store, store)
    manifest = json.loads((store / "manifest.json").read_text())
    weights = store / manifest["models"][0]["file"]
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    img = _save(tmp_path / "a.png", np.zeros((20, 30, 3), np.uint8))
    code, _, err = run_cli(capsys, "compress", str(img), "--store", str(store))
    assert_one_line_error(code, err, "fails its checksum")


def test_conformance_vector_through_cli_matches_reference_strings(
    capsys, store_args, conformance_dir, tmp_path, kit_engine
):
    """`tcm compress --bitstream exact` on the kit input writes exactly the reference
    strings (a version-1 blob), and `tcm inspect` reports their SHA-256. The y string is
    compared where this CPU reproduces the reference's exact indexes (index_drift: it may
    not, at the reference's own close calls; tests/test_conformance.py covers that case)."""
    for name in KIT_VECTORS:
        vector_input = np.array(Image.open(conformance_dir / "vectors" / name / "input.png").convert("RGB"))
        x = pad(pixels_to_tensor(vector_input), Geometry.for_image(*vector_input.shape[:2]).pad)[None]
        same_indexes = index_drift(kit_engine.analyse(x, portable=False)[0].y_indexes, name).size == 0
        folder = conformance_dir / "vectors" / name
        expected = json.loads((folder / "expected.json").read_text())["compress"]
        out = tmp_path / f"{name}.tcm"
        code, _, err = run_cli(
            capsys,
            "compress",
            str(folder / "input.png"),
            "-o",
            str(out),
            "-q",
            str(KIT_QUALITY),
            "--device",
            "cpu",
            "--bitstream",
            "exact",
            *store_args,
        )
        assert code == 0, err
        code, text, _ = run_cli(capsys, "inspect", str(out), "--json")
        fields = json.loads(text)
        assert fields["format_version"] == 1
        assert fields["z_string_sha256"] == expected["z_string_sha256"]
        if same_indexes:
            assert fields["y_string_sha256"] == expected["y_string_sha256"]
        assert (fields["width"], fields["height"], fields["mode"], fields["quality"]) == (
            int(name.split("x")[1]),
            int(name.split("-")[1].split("x")[0]),
            "RGB",
            KIT_QUALITY,
        )
        assert fields["backend"] == "torch-cpu"
        code, text, _ = run_cli(capsys, "inspect", str(out))
        assert code == 0 and "y_string_sha256" in text


def test_kodak_round_trip_psnr_matches_forward(capsys, store_args, kodak_dir, kit_engine, tmp_path):
    """A Kodak image through `tcm compress` / `tcm decompress`: the decoded PSNR equals
    the PSNR of the model's forward pass (clamped, cropped, 8-bit)."""
    src = kodak_dir / "kodim23.png"
    tcm_file, png_file = tmp_path / "k.tcm", tmp_path / "k.png"
    code, out, err = run_cli(capsys, "compress", str(src), "-o", str(tcm_file), *store_args)
    assert code == 0, err
    assert "bpp" in out
    code, _, err = run_cli(capsys, "decompress", str(tcm_file), "-o", str(png_file), *store_args)
    assert code == 0, err
    original = np.array(Image.open(src).convert("RGB"))
    decoded = np.array(Image.open(png_file))
    assert decoded.shape == original.shape
    p = Geometry.for_image(*original.shape[:2]).pad
    with torch.no_grad():
        x_hat = kit_engine.model(pad(pixels_to_tensor(original), p)[None])["x_hat"][0]
    forward = tensor_to_pixels(crop(x_hat, p), "RGB")

    def psnr(a, b):
        return 10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))

    assert abs(psnr(decoded, original) - psnr(forward, original)) < 0.01
    assert np.mean(decoded != forward) < 1e-3
    header = unpack(tcm_file.read_bytes()).header
    assert (header.width, header.height) == (768, 512)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (64, 64), (129, 257)])
def test_any_size_round_trips(capsys, store_args, tmp_path, shape):
    rng = np.random.default_rng(sum(shape))
    img = _save(tmp_path / "in.png", rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8))
    code, _, err = run_cli(capsys, "compress", str(img), "-o", str(tmp_path / "o.tcm"), *store_args)
    assert code == 0, err
    code, _, err = run_cli(capsys, "decompress", str(tmp_path / "o.tcm"), "-o", str(tmp_path / "o.png"), *store_args)
    assert code == 0, err
    assert np.array(Image.open(tmp_path / "o.png")).shape == (*shape, 3)


def test_grayscale_stays_grayscale(capsys, store_args, tmp_path):
    gray = np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (150, 1))
    img = _save(tmp_path / "g.png", gray)
    assert run_cli(capsys, "compress", str(img), *store_args)[0] == 0
    assert unpack((tmp_path / "g.tcm").read_bytes()).header.mode == "L"
    code, _, err = run_cli(capsys, "decompress", str(tmp_path / "g.tcm"), *store_args)
    assert_one_line_error(code, err, "exists")  # the default output is the original g.png: never clobbered
    assert run_cli(capsys, "decompress", str(tmp_path / "g.tcm"), "-o", str(tmp_path / "d.png"), *store_args)[0] == 0
    out = Image.open(tmp_path / "d.png")
    assert out.mode == "L" and out.size == (200, 150)


def test_directory_of_images_with_progress_and_summary(capsys, store_args, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        _save(src / f"im{i}.png", rng.integers(0, 256, size=(40 + i, 50, 3), dtype=np.uint8))
    (src / "notes.txt").write_text("not an image")
    code, out, err = run_cli(capsys, "compress", str(src), "-o", str(tmp_path / "out"), *store_args)
    assert code == 0, err
    assert "compressed 3 of 3 file(s)" in out and "bpp" in out and "portable" in out
    assert "3/3" in err  # progress bar
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["im0.tcm", "im1.tcm", "im2.tcm"]
    code, out, err = run_cli(capsys, "decompress", str(tmp_path / "out"), "-o", str(tmp_path / "dec"), *store_args)
    assert code == 0, err
    assert "decompressed 3 of 3 file(s)" in out
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["im0.png", "im1.png", "im2.png"]


def test_many_files_go_on_past_a_failing_one(capsys, store_args, tmp_path):
    """One bad file among many: one line for it, the others decoded, a summary, exit 1."""
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        _save(src / f"im{i}.png", rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8))
    (src / "im1.png").write_bytes(b"not a png at all")
    code, out, err = run_cli(capsys, "compress", str(src), "-o", str(tmp_path / "out"), *store_args)
    assert code == 1
    assert "compressed 2 of 3 file(s)" in out and "1 failed" in out
    lines = [line for line in err.splitlines() if line.strip().startswith("tcm: error:") or "tcm: error:" in line]
    assert len(lines) == 1 and "im1.png" in lines[0], err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["im0.tcm", "im2.tcm"]
    blobs = tmp_path / "out"
    good = (blobs / "im0.tcm").read_bytes()
    (blobs / "bad.tcm").write_bytes(good[:-7])  # truncated
    (blobs / "zz.tcm").write_bytes(good[:60] + bytes(b ^ 0xFF for b in good[60:]))  # CRC mismatch
    code, out, err = run_cli(capsys, "decompress", str(blobs), "-o", str(tmp_path / "dec"), *store_args)
    assert code == 1
    assert "decompressed 2 of 4 file(s)" in out and "2 failed" in out
    errors = [line[line.index("tcm: error:") :] for line in err.splitlines() if "tcm: error:" in line]
    assert len(errors) == 2 and "bad.tcm" in errors[0] and "truncated" in errors[0] and "zz.tcm" in errors[1], err
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["im0.png", "im2.png"]


def test_alpha_refused_unless_dropped(capsys, store_args, tmp_path):
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., 3] = 128
    img = _save(tmp_path / "a.png", rgba)
    code, _, err = run_cli(capsys, "compress", str(img), *store_args)
    assert_one_line_error(code, err, "alpha")
    assert not (tmp_path / "a.tcm").exists()
    code, _, err = run_cli(capsys, "compress", str(img), "--drop-alpha", *store_args)
    assert code == 0, err


def test_input_errors_are_one_line(capsys, store_args, tmp_path):
    code, _, err = run_cli(capsys, "compress", str(tmp_path / "missing.png"), *store_args)
    assert_one_line_error(code, err, "no such file")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    code, _, err = run_cli(capsys, "compress", str(bad), *store_args)
    assert_one_line_error(code, err)
    code, _, err = run_cli(capsys, "compress", str(bad), "-q", "9", *store_args)
    assert_one_line_error(code, err)
    gif = tmp_path / "x.gif"
    Image.new("RGB", (4, 4)).save(gif)
    code, _, err = run_cli(capsys, "compress", str(gif), *store_args)
    assert_one_line_error(code, err, "GIF")
    ok = _save(tmp_path / "ok.png", np.zeros((8, 8, 3), np.uint8))
    code, _, err = run_cli(capsys, "compress", str(ok), "-q", "9", *store_args)
    assert_one_line_error(code, err, "quality 9 is not in the model store")
    (tmp_path / "ok.tcm").write_bytes(b"exists")
    code, _, err = run_cli(capsys, "compress", str(ok), *store_args)
    assert_one_line_error(code, err, "exists")
    code, _, err = run_cli(capsys, "decompress", str(ok), "-o", str(tmp_path / "x.png"), *store_args)
    assert_one_line_error(code, err, "PNG image")
    code, _, err = run_cli(capsys, "compress", str(ok), "--force", "--device", "tpu", *store_args)
    assert_one_line_error(code, err, "unknown device")
    code, _, err = run_cli(capsys, "compress", str(ok), "--force", "--store", str(tmp_path / "nostore"))
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "nothing.tcm"))
    assert_one_line_error(code, err, "cannot read")


def test_blob_from_another_model_is_refused(capsys, kit_store, tmp_path):
    """A blob whose model identity the store lacks gets a one-line error, not garbage."""
    img = _save(tmp_path / "a.png", np.full((20, 20, 3), 100, np.uint8))
    assert run_cli(capsys, "compress", str(img), "--store", str(kit_store))[0] == 0
    other = tmp_path / "other"
    # Same quality number, different architecture identity (a retrained N=64 layout).
    from tcm_serve.model.config import preset
    from tcm_serve.model.tcm import TCM
    from tcm_serve.store import ModelStore

    ck = tmp_path / "random-n64.pth"
    torch.save(TCM(preset("official-small")).state_dict(), ck)
    ModelStore(other).import_checkpoint(ck, KIT_QUALITY, preset("official-small"))
    code, _, err = run_cli(
        capsys, "decompress", str(tmp_path / "a.tcm"), "-o", str(tmp_path / "b.png"), "--store", str(other)
    )
    assert_one_line_error(code, err, "blob was made by model q3")
    assert not (tmp_path / "b.png").exists()


def test_real_entry_point_subprocess(tmp_path, kit_store):
    """The installed console script path: one line on stderr, exit 1, no traceback."""
    env = {**os.environ, "TCM_MODEL_STORE": str(kit_store)}
    junk = tmp_path / "junk.tcm"
    junk.write_bytes(b"\x89TCM" + b"\x00" * 100)
    proc = subprocess.run([*TCM, "decompress", str(junk)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("tcm: error: ")
    proc = subprocess.run([*TCM, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "compress" in proc.stdout
    proc = subprocess.run([*TCM, "frobnicate"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_imported_store_files_are_readable_by_others(capsys, tmp_path):
    """Store files are written to a temporary name and renamed; they must get the usual
    0o666-minus-umask mode, not mkstemp's 0o600, or a store imported by one user (or an
    image build step) could not be served by another."""
    store = tmp_path / "store"
    old = os.umask(0o022)
    try:
        code, _, err = run_cli(
            capsys,
            "models",
            "import",
            str(KIT_CHECKPOINT),
            "-q",
            "2",
            "--preset",
            "conformance-small",
            "--store",
            str(store),
        )
    finally:
        os.umask(old)
    assert code == 0, err
    modes = {p.name: p.stat().st_mode & 0o777 for p in store.iterdir()}
    assert modes and all(m == 0o644 for m in modes.values()), modes


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["compress", "x.png", "--max-pixels", "-1"], "argument --max-pixels"),
        (["compress", "x.png", "--max-pixels", "0"], "argument --max-pixels"),  # 0 used to mean "the default"
        (["decompress", "x.tcm", "--max-pixels", "many"], "argument --max-pixels"),
        (["models", "import", "x.pth", "-q", "1", "--lambda", "nan"], "lambda must be in (0, 10)"),
        (["models", "import", "x.pth", "-q", "1", "--lambda", "inf"], "lambda must be in (0, 10)"),
        (["train", "d", "--out", "o", "--lambda", "nan", "--steps", "1"], "lambda must be in (0, 10)"),
        (["train", "d", "--out", "o", "--lambda", "0.01", "--steps", "1", "--lr", "-1"], "argument --lr"),
        (["train", "d", "--out", "o", "--lambda", "0.01", "--steps", "1", "--aux-lr", "nan"], "argument --aux-lr"),
        (["train", "d", "--out", "o", "--lambda", "0.01", "--steps", "1", "--clip", "-1"], "argument --clip"),
        (["train", "d", "--out", "o", "--lambda", "0.01", "--steps", "1", "--val-every", "-5"], "argument --val-every"),
        (["train-curve", "run", "--at-bpp", "0"], "argument --at-bpp"),
        (["serve", "--backend", "tensorflow"], "argument --backend: invalid choice"),
        (["serve", "--bitstream", "v3"], "argument --bitstream: invalid choice"),
    ],
)
def test_bad_option_values_are_refused_before_any_work(capsys, argv, needle):
    """NaN, infinities, negatives and zeros where they make no sense stop at the parser
    (exit 2, one line), instead of a traceback deep inside torch or a manifest holding NaN."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert_one_line_error(2, capsys.readouterr().err, needle)


def test_bad_values_found_at_run_time_are_one_line(capsys, kit_store, tmp_path):
    ok = _save(tmp_path / "ok.png", np.zeros((8, 8, 3), np.uint8))
    code, _, err = run_cli(capsys, "compress", str(ok), "--device", "cuda:abc", "--store", str(kit_store))
    assert_one_line_error(code, err, "unknown device 'cuda:abc'")
    # an architecture with a float width: refused before the store directory is created
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"N": 32.0}))
    store = tmp_path / "new-store"
    code, _, err = run_cli(
        capsys, "models", "import", str(KIT_CHECKPOINT), "-q", "1", "--arch-json", str(arch), "--store", str(store)
    )
    assert_one_line_error(code, err, "N must be an integer, got 32.0")
    assert not store.exists()
    # a checkpoint given to train-curve instead of its run directory
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"step": 1}, ckpt)
    code, _, err = run_cli(capsys, "train-curve", str(ckpt))
    assert_one_line_error(code, err, "is not a training log")
    # a manifest edited by hand with a lambda that is not a number
    bad = tmp_path / "bad-store"
    shutil.copytree(kit_store, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["models"][0]["lambda"] = "abc"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "models", "list", "--store", str(bad))
    assert_one_line_error(code, err, "invalid lambda 'abc'")


def test_what_compresses_under_a_pixel_limit_decompresses_under_it(capsys, store_args, tmp_path):
    """The limit is on the image (width x height) on both sides: 200x130 pads to 256x256,
    over a limit of exactly 200*130, and must still decode under that limit."""
    rng = np.random.default_rng(3)
    src = _save(tmp_path / "img.png", rng.integers(0, 256, (130, 200, 3), dtype=np.uint8))
    limit = str(200 * 130)
    code, _, err = run_cli(capsys, "compress", str(src), "--max-pixels", limit, *store_args)
    assert code == 0, err
    code, _, err = run_cli(
        capsys,
        "decompress",
        str(tmp_path / "img.tcm"),
        "-o",
        str(tmp_path / "out.png"),
        "--max-pixels",
        limit,
        *store_args,
    )
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "out.png")).shape == (130, 200, 3)
    code, _, err = run_cli(
        capsys,
        "decompress",
        str(tmp_path / "img.tcm"),
        "-o",
        str(tmp_path / "out2.png"),
        "--max-pixels",
        str(200 * 130 - 1),
        *store_args,
    )
    assert_one_line_error(code, err, "200x130 image (26,000 pixels), over the limit of 25,999 pixels")
    assert not (tmp_path / "out2.png").exists()


def test_output_and_input_paths_are_checked_before_any_work(capsys, store_args, tmp_path):
    """Stdin/stdout markers, devices, a file name for several outputs and a missing output
    directory are one-line errors found before the model loads, and leave nothing behind."""
    a = _save(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    b = _save(tmp_path / "b.png", np.full((8, 8, 3), 9, np.uint8))
    code, _, err = run_cli(capsys, "compress", "-", *store_args)
    assert_one_line_error(code, err, "standard input")
    code, _, err = run_cli(capsys, "compress", str(a), "-o", "-", *store_args)
    assert_one_line_error(code, err, "standard output")
    assert not Path("-").exists()
    code, _, err = run_cli(capsys, "compress", "/dev/null", *store_args)
    assert_one_line_error(code, err, "not a regular file")
    code, _, err = run_cli(capsys, "compress", str(a), str(b), "-o", str(tmp_path / "out.tcm"), *store_args)
    assert_one_line_error(code, err, "need -o to be a directory")
    assert not (tmp_path / "out.tcm").exists()
    code, _, err = run_cli(capsys, "compress", str(a), "-o", str(tmp_path / "missing" / "a.tcm"), *store_args)
    assert_one_line_error(code, err, "does not exist")
    # several inputs into a directory that already holds one result: nothing is written
    (tmp_path / "made").mkdir()
    (tmp_path / "made" / "a.tcm").write_bytes(b"keep")
    code, _, err = run_cli(capsys, "compress", str(a), str(b), "-o", str(tmp_path / "made"), *store_args)
    assert_one_line_error(code, err, "exists")
    assert (tmp_path / "made" / "a.tcm").read_bytes() == b"keep" and not (tmp_path / "made" / "b.tcm").exists()
    code, _, err = run_cli(capsys, "compress", str(a), str(b), "-o", str(tmp_path / "new" / "dir"), *store_args)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == ["a.tcm", "b.tcm"]


def test_output_replaced_atomically_keeps_mode_and_replaces_symlinks(capsys, store_args, tmp_path):
    """--force replaces the file whole: its permission bits stay, a symlink at the output
    path is replaced rather than written through, and no temporary file is left."""
    a = _save(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "a.tcm"
    out.write_bytes(b"old")
    out.chmod(0o640)
    code, _, err = run_cli(capsys, "compress", str(a), "--force", *store_args)
    assert code == 0, err
    assert out.read_bytes()[:4] != b"old" and (out.stat().st_mode & 0o777) == 0o640
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out.unlink()
    out.symlink_to(victim)
    code, _, err = run_cli(capsys, "compress", str(a), "--force", *store_args)
    assert code == 0, err
    assert victim.read_bytes() == b"precious" and not out.is_symlink()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_out_of_memory_is_one_line(capsys, store_args, tmp_path, monkeypatch):
    """torch's CPU allocator failure (a plain RuntimeError) is the image's size, not a bug."""
    from tcm_serve.codec import pipeline

    real = cpu_allocation_error()

    def fail(*args, **kwargs):
        raise real

    monkeypatch.setattr(pipeline, "compress_images", fail)
    a = _save(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    code, _, err = run_cli(capsys, "compress", str(a), *store_args)
    assert_one_line_error(code, err, "not enough memory")
    assert not (tmp_path / "a.tcm").exists()


def test_codec_settings_without_the_environment_equal_codec_settings_defaults(monkeypatch):
    """The commands skip pydantic (0.3 s of start-up) when no codec variable is set; what they
    use then must be exactly CodecSettings' defaults, and any set variable goes through it."""
    from tcm_serve.cli.argtypes import CODEC_FIELDS, codec_settings
    from tcm_serve.config import CodecSettings

    for field in CODEC_FIELDS:
        monkeypatch.delenv(f"TCM_{field.upper()}", raising=False)
    assert CODEC_FIELDS == tuple(CodecSettings.model_fields)
    fast, full = codec_settings(), CodecSettings()
    assert (fast.store, fast.backend, fast.bitstream, fast.onnx_dir, fast.tile) == (
        full.model_store,
        full.backend,
        full.bitstream,
        full.onnx_dir,
        full.tile,
    )
    monkeypatch.setenv("tcm_backend", "ONNX")  # names are case-insensitive, values normalised
    assert codec_settings().backend == "onnx"
    code = (
        "import sys, os; [os.environ.pop(k) for k in list(os.environ) if k.upper().startswith('TCM_')]; "
        "from tcm_serve.cli.argtypes import codec_settings; codec_settings(); print('pydantic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
