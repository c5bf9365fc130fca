"""The ONNX Runtime backend: export and cache, parity with PyTorch, and the backend rule.

Tolerances (stated in docs/performance.md):

* each exported stage vs the PyTorch stage: max absolute difference <= 1e-4 (the same
  tolerance as the conformance kit's float checks; measured ~1e-6);
* decoded images: within 1 level of the reference's ``decoded.png`` (conformance vectors)
  or of the PyTorch decode.

The backend rule: a blob records which backend computed its entropy parameters; it is
decoded with that backend or refused, never silently wrong (the symbol checksum is the
safety net underneath). Both directions are tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcm_serve.codec.container import TcmFile, pack, unpack
from tcm_serve.codec.engine import CodedImage, symbols_crc32
from tcm_serve.codec.geometry import Geometry
from tcm_serve.codec.onnx_graphs import (
    GraphSet,
    ensure_graphs,
    graph_names,
    open_sessions,
    optimized_path,
    parity_report,
    runtime_key,
)
from tcm_serve.codec.padding import crop, pad, pixels_to_tensor, tensor_to_pixels
from tcm_serve.codec.pipeline import compress_images, decompress_blob, load_model, store_resolver
from tcm_serve.codec.tiling import Tiling
from tcm_serve.errors import BackendMismatchError, DriftError
from tcm_serve.imageio import decode_image
from tcm_serve.store import ModelStore

from helpers import KIT_QUALITY, KIT_VECTORS, make_png

STAGE_TOL = 1e-4
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def onnx_dir(kit_store, tmp_path_factory) -> Path:
    """The kit model's graphs, exported once (about 20-40 s on this 2-core machine)."""
    store = ModelStore(kit_store)
    entry = store.entry(KIT_QUALITY)
    out = tmp_path_factory.mktemp("onnx")
    ensure_graphs(store.load_model(entry), entry, out)
    return out


@pytest.fixture(scope="module")
def onnx_lm(kit_store, onnx_dir):
    return load_model(ModelStore(kit_store), KIT_QUALITY, CPU, "onnx", onnx_dir)


@pytest.fixture(scope="module")
def torch_lm(kit_store):
    return load_model(ModelStore(kit_store), KIT_QUALITY, CPU, "torch")


@pytest.fixture(scope="module")
def kodak_crop(kodak_dir):
    """A 200x232 crop of a Kodak photo (real content: many symbols near table boundaries)."""
    px = np.array(Image.open(kodak_dir / "kodim23.png").convert("RGB"))[150:350, 250:482]
    return decode_image(_png(px))


@pytest.fixture(scope="module")
def blobs(torch_lm, onnx_lm, kodak_crop):
    """The crop compressed once by each backend, as exact (version-1) blobs: the backend rule
    below is theirs (portable blobs decode with either backend: tests/test_portable.py)."""
    return {
        "torch": compress_images(torch_lm, [kodak_crop], portable=False)[0],
        "onnx": compress_images(onnx_lm, [kodak_crop], portable=False)[0],
    }


def _png(px: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return buf.getvalue()


# -- export and cache -------------------------------------------------------------------------
def test_graph_set_is_complete_and_verified(kit_store, onnx_dir):
    entry = ModelStore(kit_store).entry(KIT_QUALITY)
    gs = GraphSet.for_entry(entry, onnx_dir)
    assert gs.complete()
    gs.verify()
    assert gs.names == tuple(graph_names(2)) == ("g_a", "h_a", "hyper_s", "slice0", "lrp0", "slice1", "lrp1", "g_s")
    for name in gs.names:  # the weights hash is in every file name
        assert entry.sha256[:12] in gs.path(name).name
    index = json.loads(gs.index_path.read_text())
    assert index["weights_sha256"] == entry.sha256 and set(index["sha256"]) == set(gs.names)


def test_cached_graphs_are_reused_and_new_weights_get_new_graphs(kit_store, onnx_dir, tmp_path):
    store = ModelStore(kit_store)
    entry = store.entry(KIT_QUALITY)
    _, built = ensure_graphs(store.load_model(entry), entry, onnx_dir)
    assert not built  # up to date: nothing exported
    # Other weights for the same quality level: another name, so not complete (rebuilt on
    # use), and the current graphs are stale from its point of view.
    other = replace(entry, sha256="0" * 64)
    gs_other = GraphSet.for_entry(other, onnx_dir)
    assert not gs_other.complete()
    assert set(gs_other.stale()) >= {GraphSet.for_entry(entry, onnx_dir).path("g_a")}


def test_tampered_graph_fails_verification(kit_store, onnx_dir, tmp_path):
    import shutil

    from tcm_serve.errors import StoreError

    entry = ModelStore(kit_store).entry(KIT_QUALITY)
    gs = GraphSet.for_entry(entry, onnx_dir)
    copy = GraphSet.for_entry(entry, tmp_path)
    for p in [gs.index_path] + [gs.path(n) for n in gs.names]:
        shutil.copy(p, tmp_path / p.name)
    with open(copy.path("lrp0"), "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(StoreError, match="lrp0.*checksum"):
        copy.verify()


def test_optimised_graphs_are_cached_per_machine_kind(kit_store, onnx_dir, onnx_lm, blobs, tmp_path, monkeypatch):
    """onnxruntime optimises each graph once per machine kind (runtime_key): the next process
    loads the optimised copy, which computes the same bits as a fresh optimisation (an exact
    blob made with fresh sessions decodes with cached ones), a damaged copy is rebuilt, and
    a directory that cannot be written just goes without."""
    import shutil

    entry = ModelStore(kit_store).entry(KIT_QUALITY)
    gs = GraphSet.for_entry(entry, onnx_dir)
    key = runtime_key(CPU)
    assert all(optimized_path(gs, n, key).is_file() for n in gs.names)  # onnx_lm wrote them

    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    for p in [gs.index_path] + [gs.path(n) for n in gs.names]:
        shutil.copy(p, fresh_dir / p.name)
    fresh = GraphSet.for_entry(entry, fresh_dir)
    first, _ = open_sessions(fresh, CPU, 1, names=["g_s", "slice0"])  # optimised now, copies written
    assert optimized_path(fresh, "g_s", key).is_file()
    cached, _ = open_sessions(fresh, CPU, 1, names=["g_s", "slice0"])
    rng = np.random.default_rng(3)
    for name, session in first.items():
        # latents of the smallest padded image (256x256): whole attention windows
        feed = {i.name: rng.standard_normal((1, i.shape[1], 16, 16)).astype(np.float32) for i in session.get_inputs()}
        for a, b in zip(session.run(None, feed), cached[name].run(None, feed)):
            assert np.array_equal(a, b), name

    optimized_path(fresh, "g_s", key).write_bytes(b"not a graph")
    open_sessions(fresh, CPU, 1, names=["g_s"])
    assert optimized_path(fresh, "g_s", key).stat().st_size > 1000  # rebuilt

    read_only = tmp_path / "ro"
    read_only.mkdir()
    shutil.copy(gs.path("h_a"), read_only / gs.path("h_a").name)
    monkeypatch.setattr("tcm_serve.codec.onnx_graphs.os.access", lambda *a, **k: False)
    open_sessions(GraphSet.for_entry(entry, read_only), CPU, 1, names=["h_a"])
    assert [p.name for p in read_only.iterdir()] == [gs.path("h_a").name]
    monkeypatch.undo()

    # an exact (version-1) blob whose entropy parameters fresh sessions computed decodes with
    # a model opened entirely from the optimised copies
    again = load_model(ModelStore(kit_store), KIT_QUALITY, CPU, "onnx", onnx_dir)
    ours = decompress_blob(blobs["onnx"].blob, lambda h: again).pixels
    assert np.array_equal(ours, decompress_blob(blobs["onnx"].blob, lambda h: onnx_lm).pixels)


@pytest.mark.slow
def test_cli_export_onnx_reports_up_to_date(kit_store, onnx_dir):
    out = subprocess.run(
        [sys.executable, "-m", "tcm_serve.cli.main", "export-onnx", "--store", str(kit_store), "--out", str(onnx_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert f"q{KIT_QUALITY}: 8 graphs" in out.stdout and "up to date" in out.stdout


# -- parity --------------------------------------------------------------------------------------
def test_every_stage_matches_pytorch(kit_store, onnx_dir, torch_lm):
    """On random inputs (other sizes than the export's run in the vector tests below)."""
    entry = ModelStore(kit_store).entry(KIT_QUALITY)
    report = parity_report(torch_lm.engine.model, GraphSet.for_entry(entry, onnx_dir), image=(256, 256))
    assert set(report) == set(graph_names(2))
    assert max(report.values()) <= STAGE_TOL, report


def test_batched_graphs(onnx_lm, torch_lm):
    """Dynamic batch axis: g_a and g_s on a batch of 2 equal PyTorch per image."""
    x = torch.rand(2, 3, 256, 384, generator=torch.Generator().manual_seed(3))
    st, so = torch_lm.engine.stages, onnx_lm.engine.stages
    with torch.no_grad():
        y_t = st.g_a(x)
        y_o = so.g_a(x)
        assert y_o.shape == y_t.shape and float((y_o - y_t).abs().max()) <= STAGE_TOL
        assert float((so.g_s(y_t) - st.g_s(y_t)).abs().max()) <= STAGE_TOL


@pytest.fixture(scope="module", params=KIT_VECTORS)
def vector(request, conformance_dir):
    folder = conformance_dir / "vectors" / request.param
    return {
        "input": np.array(Image.open(folder / "input.png").convert("RGB")),
        "internals": dict(np.load(folder / "compress_internals.npz")),
        "decoded_png": np.array(Image.open(folder / "decoded.png").convert("RGB")),
        "expected": json.loads((folder / "expected.json").read_text()),
        "y_string": (folder / "y_string.bin").read_bytes(),
        "z_string": (folder / "z_string.bin").read_bytes(),
    }


def test_onnx_decodes_reference_strings_within_one_level(vector, onnx_lm):
    """The reference's strings, decoded with ONNX entropy parameters and ONNX synthesis:
    the same symbols and indexes (checked by the checksum) and decoded.png within 1 level."""
    ref = vector["internals"]
    crc = symbols_crc32(ref["z_symbols"], ref["y_symbols"], ref["y_indexes"])
    z_shape = tuple(vector["expected"]["compress"]["shape"])
    coded = CodedImage(vector["z_string"], vector["y_string"], crc, "onnx-cpu")
    x_hat = onnx_lm.engine.decompress([coded], z_shape)[0]
    png = tensor_to_pixels(crop(x_hat, Geometry.for_image(*vector["input"].shape[:2]).pad), "RGB").astype(int)
    assert np.abs(png - vector["decoded_png"].astype(int)).max() <= 1


def test_onnx_round_trip_of_vectors_within_one_level(vector, onnx_lm, torch_lm):
    """Compress and decompress with ONNX: the strings are the reference's (the symbols did
    not move on these vectors) and the image is within 1 level of decoded.png."""
    img = vector["input"]
    x = pad(pixels_to_tensor(img), Geometry.for_image(*img.shape[:2]).pad)[None]
    (coded,) = onnx_lm.engine.compress(x, portable=False)
    assert coded.backend == "onnx-cpu"
    assert (coded.z_string, coded.y_string) == (vector["z_string"], vector["y_string"])
    x_hat = onnx_lm.engine.decompress([coded], (x.shape[2] // 64, x.shape[3] // 64))[0]
    png = tensor_to_pixels(crop(x_hat, Geometry.for_image(*img.shape[:2]).pad), "RGB").astype(int)
    assert np.abs(png - vector["decoded_png"].astype(int)).max() <= 1


# -- the backend rule: decoded correctly by the other backend, or refused --------------------------
def test_torch_blob_decodes_correctly_with_onnx(torch_lm, onnx_lm, blobs):
    """An ONNX engine reproduces torch-cpu entropy parameters with the model itself: same
    symbols (checksum verified), and only g_s differs (within 1 level)."""
    blob = blobs["torch"].blob
    assert unpack(blob).header.backend == "torch-cpu"
    by_torch = decompress_blob(blob, lambda h: torch_lm)
    by_onnx = decompress_blob(blob, lambda h: onnx_lm)
    assert np.abs(by_torch.pixels.astype(int) - by_onnx.pixels.astype(int)).max() <= 1


def test_onnx_blob_is_refused_by_torch_with_one_line(kit_store, blobs):
    blob = blobs["onnx"].blob
    assert unpack(blob).header.backend == "onnx-cpu"
    with pytest.raises(BackendMismatchError) as info:
        decompress_blob(blob, store_resolver(ModelStore(kit_store), CPU, "torch"))
    msg = str(info.value)
    assert "\n" not in msg and "onnx-cpu" in msg and "--backend onnx" in msg


def test_cli_refuses_cross_backend_decode(kit_store, blobs, tmp_path):
    (tmp_path / "a.tcm").write_bytes(blobs["onnx"].blob)
    env = {k: v for k, v in os.environ.items() if k != "TCM_BACKEND"}
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "tcm_serve.cli.main",
            "decompress",
            str(tmp_path / "a.tcm"),
            "--store",
            str(kit_store),
            "--backend",
            "torch",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("tcm: error:") and "onnx-cpu" in bad.stderr
    assert not (tmp_path / "a.png").exists()


def test_forged_backend_is_never_silently_wrong(torch_lm, onnx_lm, blobs):
    """The safety net under the header rule: an ONNX blob relabelled torch-cpu (valid CRC)
    either decodes to the same image within 1 level or fails the symbol checksum."""
    f = unpack(blobs["onnx"].blob)
    forged = pack(TcmFile(replace(f.header, backend="torch-cpu"), f.z_string, f.y_string))
    honest = decompress_blob(blobs["onnx"].blob, lambda h: onnx_lm)
    try:
        out = decompress_blob(forged, lambda h: torch_lm)
    except DriftError:
        return
    assert np.abs(out.pixels.astype(int) - honest.pixels.astype(int)).max() <= 1


def test_onnx_and_torch_rates_agree(blobs):
    """The ONNX path's bpp is within 0.1% of the exact path's on a real photo crop."""
    a, b = blobs["torch"].bpp, blobs["onnx"].bpp
    assert abs(b - a) <= 1e-3 * a


# -- the service -------------------------------------------------------------------------------------
def test_service_settings_select_the_onnx_backend(kit_store, onnx_dir, blobs):
    from tcm_serve.config import load_settings
    from tcm_serve.runtime.pool import WorkerPool

    pool = WorkerPool(load_settings(model_store=str(kit_store), devices="cpu", backend="onnx", onnx_dir=str(onnx_dir)))
    pool.start()
    try:
        assert pool.wait_ready(180), pool.not_ready_reason()
        img = decode_image(make_png(136, 200, seed=5))
        comp = pool.submit_compress(img, KIT_QUALITY, deadline=_far()).future.result(120)
        assert unpack(comp.blob).header.backend == "portable-f64"
        exact = pool.submit_compress(img, KIT_QUALITY, deadline=_far(), bitstream="exact").future.result(120)
        assert unpack(exact.blob).header.backend == "onnx-cpu"
        # A torch-cpu blob is decoded too (the ONNX engine holds the exact path as well).
        for blob, shape in (
            (comp.blob, (136, 200, 3)),
            (exact.blob, (136, 200, 3)),
            (blobs["torch"].blob, (200, 232, 3)),
        ):
            dec = pool.submit_decompress(blob, unpack(blob).header, deadline=_far()).future.result(120)
            assert dec.pixels.shape == shape
    finally:
        pool.shutdown(0)


def _far() -> float:
    import time

    return time.monotonic() + 300


def test_tiled_transforms_run_on_onnx_runtime(onnx_lm, torch_lm, kodak_dir):
    """The ONNX graphs take the tiles' window size (dynamic axes); a blob whose g_a ran in tiles
    on ONNX Runtime decodes with PyTorch whole, and ONNX tiled synthesis gives the same image."""
    px = np.array(Image.open(kodak_dir / "kodim23.png").convert("RGB"))[:, :640]
    img = decode_image(_png(px))
    before, onnx_lm.engine.tiling = onnx_lm.engine.tiling, Tiling(256, 128)  # 3 cores across, 512x512 windows
    try:
        assert onnx_lm.engine.tiling.plan(512, 640).count == 3
        (c,) = compress_images(onnx_lm, [img])
        tiled = decompress_blob(c.blob, lambda h: onnx_lm).pixels
    finally:
        onnx_lm.engine.tiling = before
    whole = decompress_blob(c.blob, lambda h: torch_lm).pixels
    assert tiled.shape == whole.shape == px.shape
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 3
