"""Batching is invisible: batched results equal unbatched ones byte for byte, and an image
encoded in one batch decodes in any other. On trained weights (the conformance checkpoint).

What is batched and why (docs/service.md):
* the analysis and synthesis transforms (g_a, g_s): proven batch-invariant below, exactly;
* the entropy-parameter path (h_a, hyper-synthesis, slice networks, LRP), which the decoder
  recomputes: NOT batch-invariant on CPU (differences ~1e-6 measured below), so the engine
  runs it one image at a time on both sides; the spy test proves no batch ever reaches it.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from tcm_serve.codec.container import pack, unpack
from tcm_serve.codec.geometry import Geometry
from tcm_serve.codec.padding import pad, pixels_to_tensor
from tcm_serve.codec.pipeline import compress_images, decompress_batch, decompress_blob, load_model
from tcm_serve.config import load_settings
from tcm_serve.errors import FormatError
from tcm_serve.imageio import decode_image
from tcm_serve.runtime import WorkerPool
from tcm_serve.runtime.batcher import Job
from tcm_serve.store import ModelStore

from helpers import make_png


def _padded(png: bytes) -> torch.Tensor:
    img = decode_image(png)
    return pad(pixels_to_tensor(img.pixels), Geometry.for_image(img.height, img.width).pad)


@pytest.fixture(scope="module")
def batches() -> dict[str, torch.Tensor]:
    """Two padded sizes, four different images each."""
    return {
        "256x256": torch.stack([_padded(make_png(136 + 10 * i, 200 - 7 * i, seed=10 + i)) for i in range(4)]),
        "256x384": torch.stack([_padded(make_png(140, 260 + 20 * i, seed=20 + i)) for i in range(4)]),
    }


@pytest.mark.parametrize("size", ["256x256", "256x384"])
def test_analysis_and_synthesis_transforms_are_batch_invariant(kit_engine, batches, size):
    """g_a and g_s give every image exactly the same output in a batch of 2, 3 or 4 as alone:
    the basis for running them batched."""
    m = kit_engine.model
    x = batches[size]
    with torch.no_grad():
        y_alone = [m.g_a(x[i : i + 1]) for i in range(4)]
        x_alone = [m.g_s(y) for y in y_alone]
        for b in (2, 3, 4):
            y = m.g_a(x[:b])
            xs = m.g_s(torch.cat(y_alone[:b]))
            for i in range(b):
                assert torch.equal(y[i : i + 1], y_alone[i]), (size, b, i)
                assert torch.equal(xs[i : i + 1], x_alone[i]), (size, b, i)


@pytest.mark.parametrize("portable", [False, True], ids=["exact", "portable"])
def test_entropy_parameter_path_never_sees_a_batch(kit_engine, batches, monkeypatch, portable):
    """Whatever the batch, h_a, the hyper-synthesis, the slice networks and LRP run on one
    image at a time, in compression and in decompression (for exact blobs this is what keeps
    them decodable; portable blobs would tolerate it, but the code path is the same)."""
    m = kit_engine.portable_path.stages.inner.model if portable else kit_engine.model
    seen: list[tuple[str, int]] = []
    for name in ("hyper_synthesis", "slice_params", "refine"):
        original = getattr(m, name)

        def spy(*args, _name=name, _orig=original):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            seen.append((_name, tensors[0].shape[0]))
            return _orig(*args)

        monkeypatch.setattr(m, name, spy)
    hook = kit_engine.model.h_a.register_forward_pre_hook(lambda mod, args: seen.append(("h_a", args[0].shape[0])))
    x = batches["256x384"]
    try:
        coded = kit_engine.compress(x, portable)
        kit_engine.decompress(coded, (x.shape[2] // 64, x.shape[3] // 64))
    finally:
        hook.remove()
    assert {n for n, _ in seen} == {"h_a", "hyper_synthesis", "slice_params", "refine"}
    assert all(b == 1 for _, b in seen), sorted(set(seen))


def test_entropy_parameter_path_batch_invariance_measured(kit_engine, batches, capsys):
    """Measures (and prints) how far the batched entropy-parameter path is from the
    per-image one. This is why it is not batched: a difference that moves a scale across a
    table boundary changes an index, and the decoder would read the wrong symbols."""
    m = kit_engine.model
    x = batches["256x256"]
    with torch.no_grad():
        y = torch.cat([m.g_a(x[i : i + 1]) for i in range(4)])
        z_alone = torch.cat([m.h_a(y[i : i + 1]) for i in range(4)])
        z_batch = m.h_a(y)
        z_hat = torch.round(z_alone - kit_engine.z_medians) + kit_engine.z_medians
        mb, sb = m.hyper_synthesis(z_hat)
        alone = [m.hyper_synthesis(z_hat[i : i + 1]) for i in range(4)]
    d_h_a = float((z_batch - z_alone).abs().max())
    d_means = float((mb - torch.cat([a[0] for a in alone])).abs().max())
    d_scales = float((sb - torch.cat([a[1] for a in alone])).abs().max())
    with capsys.disabled():
        print(
            f"\n[batch invariance, batch 4 vs 1] h_a {d_h_a:.3g}, hyper means {d_means:.3g}, hyper scales {d_scales:.3g}"
        )
    for d in (d_h_a, d_means, d_scales):
        assert d < 1e-3  # same computation, only float reassociation


@pytest.fixture(scope="module")
def local_models(service_store):
    store = ModelStore(service_store)
    return {q: load_model(store, q, torch.device("cpu")) for q in (2, 3)}


def _pool(store, batch: int, delay_ms: float) -> WorkerPool:
    pool = WorkerPool(
        load_settings(
            model_store=str(store), devices="cpu", max_batch_size=batch, max_batch_delay_ms=delay_ms, max_queue=64
        )
    )
    pool.start()
    assert pool.wait_ready(120), pool.not_ready_reason()
    return pool


@pytest.fixture(scope="module")
def batched_pool(service_store):
    pool = _pool(service_store, batch=4, delay_ms=400)
    yield pool
    pool.shutdown(10)


def _workload():
    """(quality, png): three groups by (quality, padded size), arriving interleaved."""
    items = []
    for i in range(4):
        items.append((3, make_png(136 + 9 * i, 200 - 11 * i, seed=30 + i)))  # q3, 256x256
        if i < 3:
            items.append((2, make_png(120 + 5 * i, 180, "L" if i == 1 else "RGB", seed=40 + i)))  # q2, 256x256
        if i < 2:
            items.append((3, make_png(140, 270 + 30 * i, seed=50 + i)))  # q3, 256x384
    return items


def test_batched_service_equals_one_at_a_time(batched_pool, local_models):
    items = _workload()
    images = [decode_image(png) for _, png in items]
    deadline = time.monotonic() + 120
    jobs = [batched_pool.submit_compress(img, q, deadline) for (q, _), img in zip(items, images)]
    results = [j.future.result(120) for j in jobs]
    sizes = [j.batch_size for j in jobs]
    assert max(sizes) > 1, sizes  # batching happened
    assert sorted(set(sizes)) == [2, 3, 4], sizes  # one batch per group: 4 + 3 + 2
    for (q, _), img, res in zip(items, images, results):
        alone = compress_images(local_models[q], [img])[0]
        assert res.blob == alone.blob
        assert res.bpp == alone.bpp

    # decompression: batched through the pool, equal to decoding each blob alone
    blobs = [r.blob for r in results]
    djobs = [batched_pool.submit_decompress(b, unpack(b).header, deadline) for b in blobs]
    decoded = [j.future.result(120) for j in djobs]
    assert max(j.batch_size for j in djobs) > 1
    for (q, _), blob, out in zip(items, blobs, decoded):
        alone = decompress_blob(blob, lambda h, lm=local_models[q]: lm)
        assert out.mode == alone.mode
        assert np.array_equal(out.pixels, alone.pixels)


def test_blobs_decode_in_any_batch_composition(local_models):
    """An image encoded in a batch decodes alone, and an image encoded alone decodes in a
    batch of strangers: no dependence on batch composition in either direction."""
    lm = local_models[3]
    images = [decode_image(make_png(130 + 6 * i, 190 + 5 * i, seed=60 + i)) for i in range(4)]
    together = compress_images(lm, images, max_batch=4)
    alone = [compress_images(lm, [img], max_batch=1)[0] for img in images]
    assert [c.blob for c in together] == [c.blob for c in alone]
    blobs = [c.blob for c in together]
    singles = [decompress_blob(b, lambda h: lm).pixels for b in blobs]
    for order in ([0, 1, 2, 3], [3, 1], [2, 0, 3]):
        out = decompress_batch(lm, [blobs[i] for i in order])
        for i, d in zip(order, out):
            assert np.array_equal(d.pixels, singles[i])


def test_a_corrupt_blob_fails_only_itself_in_a_batch(batched_pool, local_models):
    lm = local_models[3]
    images = [decode_image(make_png(136, 200, seed=70 + i)) for i in range(3)]
    blobs = [c.blob for c in compress_images(lm, images)]
    f = unpack(blobs[1])
    blobs[1] = pack(replace(f, y_string=bytes(b ^ 0x5A for b in f.y_string)))
    deadline = time.monotonic() + 120
    jobs = [batched_pool.submit_decompress(b, unpack(b).header, deadline) for b in blobs]
    with pytest.raises(FormatError):
        jobs[1].future.result(120)
    for i in (0, 2):
        got = jobs[i].future.result(120)
        assert np.array_equal(got.pixels, decompress_blob(blobs[i], lambda h: lm).pixels)


def test_unbatched_pool_gives_the_same_bytes(service_store, local_models):
    pool = _pool(service_store, batch=1, delay_ms=0)
    try:
        items = _workload()[:5]
        deadline = time.monotonic() + 120
        jobs = [pool.submit_compress(decode_image(png), q, deadline) for q, png in items]
        for (q, png), j in zip(items, jobs):
            assert j.future.result(120).blob == compress_images(local_models[q], [decode_image(png)])[0].blob
            assert j.batch_size == 1
    finally:
        pool.shutdown(10)


# -- queue places (Batcher.reserve) ---------------------------------------------------------
def _job(quality: int = 1) -> Job:

    return Job("compress", quality, (256, 256), None, time.monotonic() + 60)


def test_reserved_places_count_against_the_queue_bound():
    from tcm_serve.runtime.batcher import Batcher
    from tcm_serve.runtime.errors import QueueFullError

    b = Batcher(max_queue=2, max_batch_size=4, max_batch_delay_s=0.0)
    first = b.reserve()
    b.put(_job())  # a job without a reservation takes the second place
    assert (b.depth, b.reserved) == (1, 1)
    with pytest.raises(QueueFullError):
        b.reserve()
    with pytest.raises(QueueFullError):
        b.put(_job())
    b.put(_job(), slot=first)  # the reserved place becomes a waiting job
    assert (b.depth, b.reserved) == (2, 0) and not first.held
    first.release()  # consumed: releasing again changes nothing
    assert (b.depth, b.reserved) == (2, 0)


def test_a_released_place_is_free_again_and_release_is_idempotent():
    from tcm_serve.runtime.batcher import Batcher

    b = Batcher(max_queue=1, max_batch_size=4, max_batch_delay_s=0.0)
    with b.reserve() as slot:  # e.g. the request's image turned out to be malformed
        assert b.reserved == 1
    assert b.reserved == 0 and not slot.held
    slot.release()
    assert b.reserved == 0
    b.put(_job(), slot=b.reserve())
    assert (b.depth, b.reserved) == (1, 0)


def test_a_closed_batcher_refuses_reservations_and_reserved_jobs():
    from tcm_serve.runtime.batcher import Batcher
    from tcm_serve.runtime.errors import ShuttingDownError

    b = Batcher(max_queue=4, max_batch_size=4, max_batch_delay_s=0.0)
    slot = b.reserve()
    b.close()
    with pytest.raises(ShuttingDownError):
        b.reserve()
    with pytest.raises(ShuttingDownError):
        b.put(_job(), slot=slot)
    assert (b.depth, b.reserved) == (0, 0)
