"""The HTTP API in-process (httpx.ASGITransport): every error status, models, probes, metrics,
logs, config and the client's error mapping. The real server is in test_server.py."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import logging
import threading
import time

import anyio
import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tcm_serve.api import create_app
from tcm_serve.api import headers as tcm_headers
from tcm_serve.api.errors import STATUS, status_for
from tcm_serve.api.logs import JsonFormatter
from tcm_serve.client import AsyncTcmClient, error_from_response
from tcm_serve.codec import effort as effort_module
from tcm_serve.codec.container import pack, unpack
from tcm_serve.codec.effort import MAX_EFFORT
from tcm_serve.codec.pipeline import compress_images, decompress_blob, load_model
from tcm_serve.config import load_settings
from tcm_serve.errors import ConfigError, FormatError, ImageError, ImageTooLargeError, TcmError
from tcm_serve.imageio import decode_image
from tcm_serve.runtime.errors import NotReadyError, QueueFullError
from tcm_serve.store import ModelStore

from helpers import cpu_allocation_error, make_png

MAX_PIXELS = 200_000
MAX_BODY = 1_000_000


# -- fixtures and helpers --------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(service_store):
    settings = load_settings(
        model_store=str(service_store),
        devices="cpu",
        max_batch_size=4,
        max_batch_delay_ms=5,
        max_queue=8,
        max_body_bytes=MAX_BODY,
        max_pixels=MAX_PIXELS,
        request_timeout_s=60,
        shutdown_grace_s=10,
    )
    app = create_app(settings)
    app.state.pool.start()
    assert app.state.pool.wait_ready(120), app.state.pool.not_ready_reason()
    yield app
    app.state.pool.shutdown(10)


@pytest.fixture(scope="module")
def idle_app(service_store):
    """An app whose lifespan never ran: the pool is not started (models not loaded)."""
    return create_app(load_settings(model_store=str(service_store), devices="cpu"))


@pytest.fixture(scope="module")
def local_model(service_store):
    return load_model(ModelStore(service_store), 3, torch.device("cpu"))


def run(app, fn):
    """Run ``await fn(client)`` against the app in a fresh event loop."""

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=120) as client:
            return await fn(client)

    return anyio.run(main)


def post(app, url, content=b"", **kw):
    return run(app, lambda c: c.post(url, content=content, **kw))


def get(app, url):
    return run(app, lambda c: c.get(url))


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    if code is not None:
        assert body["error"] == code, body
    return body


def png_pixels(data: bytes) -> tuple[str, np.ndarray]:
    img = Image.open(io.BytesIO(data))
    return img.mode, np.asarray(img)


# -- round trips ------------------------------------------------------------------------------
def test_compress_raw_and_multipart_match_the_local_codec(app, service_images, local_model):
    data = service_images["rgb200x136"]
    raw = post(app, "/compress?quality=3", data, headers={"content-type": "image/png"})
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"] == "application/x-tcm"
    assert raw.headers["x-tcm-quality"] == "3"
    assert (raw.headers["x-tcm-width"], raw.headers["x-tcm-height"]) == ("200", "136")
    expected = compress_images(local_model, [decode_image(data)])[0]
    assert raw.content == expected.blob  # same bytes as the CLI / pipeline
    assert float(raw.headers["x-tcm-bpp"]) == pytest.approx(expected.bpp, abs=1e-6)
    multi = run(app, lambda c: c.post("/compress", params={"quality": 3}, files={"file": ("a.png", data, "image/png")}))
    assert multi.status_code == 200 and multi.content == raw.content
    octet = post(app, "/compress?quality=3", data, headers={"content-type": "application/octet-stream"})
    assert octet.content == raw.content


def test_compress_with_effort(app, service_images, monkeypatch):
    """``effort`` searches the latents (tests/test_effort.py); the answer says which effort
    made it, the blob decodes like any other, and the service's limit, the level range
    and the size cap are refused before any work, each with its status."""
    data = service_images["rgb200x136"]
    plain = post(app, "/compress?quality=3", data)
    assert plain.status_code == 200 and plain.headers["x-tcm-effort"] == "0"
    tried = post(app, "/compress?quality=3&effort=1", data)
    assert tried.status_code == 200, tried.text
    assert tried.headers["x-tcm-effort"] == "1" and tried.content != plain.content
    decoded = post(app, "/decompress", tried.content, headers={"content-type": "application/x-tcm"})
    assert decoded.status_code == 200 and png_pixels(decoded.content)[1].shape == (136, 200, 3)
    body = assert_error(post(app, "/compress?effort=2", data), 422, "bad_parameter")
    assert "TCM_MAX_EFFORT" in body["detail"]
    assert_error(post(app, f"/compress?effort={MAX_EFFORT + 1}", data), 422)
    assert_error(post(app, "/compress?effort=high", data), 422)
    monkeypatch.setattr(effort_module, "MAX_EFFORT_PIXELS", 128 * 128)
    body = assert_error(post(app, "/compress?effort=1", data), 413)
    assert "effort 0" in body["detail"]


def test_compare_with_effort(app, service_images, monkeypatch):
    """/compare takes the same ``effort`` as /compress (the web page's control): its blob is
    /compress's at that effort, the report says which, and the same limits hold."""
    data = service_images["rgb200x136"]
    assert get(app, "/v1/models").json()["max_effort"] == 1  # what the page offers
    r = post(app, "/compare?quality=3&effort=1", data)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["effort"] == 1
    assert base64.b64decode(report["tcm"]["blob_base64"]) == post(app, "/compress?quality=3&effort=1", data).content
    assert post(app, "/compare?quality=3", data).json()["effort"] == 0
    assert "TCM_MAX_EFFORT" in assert_error(post(app, "/compare?effort=2", data), 422, "bad_parameter")["detail"]
    # the search leaves half the time left to the decode and the classic codecs' searches
    pool, submitted = app.state.pool, []
    real_submit = pool.submit_compress

    def recording(image, q, deadline, *rest):
        submitted.append((time.monotonic(), deadline, rest[-1]))
        return real_submit(image, q, deadline, *rest)

    monkeypatch.setattr(pool, "submit_compress", recording)
    monkeypatch.setattr(app.state.settings, "request_timeout_s", 100.0)
    assert post(app, "/compare?quality=3&effort=1", data).status_code == 200
    assert post(app, "/compare?quality=3", data).status_code == 200
    (t1, searched, e1), (t0, plain, e0) = submitted
    assert (e1, e0) == (1, 0) and 45 < searched - t1 < 51 and 95 < plain - t0 <= 100
    monkeypatch.setattr(effort_module, "MAX_EFFORT_PIXELS", 128 * 128)
    assert_error(post(app, "/compare?effort=1", data), 413)


def test_decompress_round_trip_keeps_mode_and_size(app, service_images, local_model):
    for name in ("rgb300x260", "gray64"):
        blob = post(app, "/compress", service_images[name]).content
        r = post(app, "/decompress", blob, headers={"content-type": "application/x-tcm"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        mode, px = png_pixels(r.content)
        src_mode, src = png_pixels(service_images[name])
        assert mode == src_mode  # grayscale stays grayscale
        assert px.shape == src.shape
        assert int(r.headers["x-tcm-width"]) == src.shape[1]
        # the same pixels as the local codec (the CLI) decodes; the kit model is a small
        # test checkpoint (~15 dB on natural images), so quality itself is not the point
        local = decompress_blob(blob, lambda h: local_model).pixels
        assert np.array_equal(px.reshape(local.shape), local)
        multi = run(app, lambda c, b=blob: c.post("/decompress", files={"file": ("x.tcm", b, "application/x-tcm")}))
        assert multi.status_code == 200 and multi.content == r.content


def test_quality_routing_and_default(app, service_images):
    data = service_images["gray64"]
    for q in (2, 3):
        r = post(app, f"/compress?quality={q}", data)
        assert r.headers["x-tcm-quality"] == str(q)
        assert unpack(r.content).header.quality == q
    r = post(app, "/compress", data)
    assert r.headers["x-tcm-quality"] == "3"  # default: the highest served


def test_bitstream_choice(app, service_images, local_model):
    """Portable (version 2) by default; exact (version 1, the reference's strings) on request;
    both decode through the API; anything else is a 422."""
    data = service_images["rgb200x136"]
    portable = post(app, "/compress?quality=3", data)
    exact = post(app, "/compress?quality=3&bitstream=exact", data)
    assert portable.headers["x-tcm-format-version"] == "2" and unpack(portable.content).header.backend == "portable-f64"
    assert exact.headers["x-tcm-format-version"] == "1" and unpack(exact.content).header.backend == "torch-cpu"
    assert post(app, "/compress?quality=3&bitstream=portable", data).content == portable.content
    expected = compress_images(local_model, [decode_image(data)], portable=False)[0]
    assert exact.content == expected.blob
    for blob in (portable.content, exact.content):
        assert post(app, "/decompress", blob).status_code == 200
    body = assert_error(post(app, "/compress?bitstream=f32", data), 422, "bad_parameter")
    assert "bitstream" in body["detail"]


def test_drop_alpha(app):
    rgba = make_png(40, 50, "RGBA")
    assert_error(post(app, "/compress", rgba), 400, "bad_image")
    r = post(app, "/compress?drop_alpha=true", rgba)
    assert r.status_code == 200


# -- every error status ---------------------------------------------------------------------------
def test_400_malformed_image_and_blob(app, service_images):
    assert_error(post(app, "/compress", b"this is not an image"), 400, "bad_image")
    png = service_images["rgb200x136"]
    assert_error(post(app, "/compress", png[: len(png) // 2]), 400, "bad_image")  # truncated
    assert_error(post(app, "/compress", b""), 400, "bad_image")
    blob = post(app, "/compress", service_images["gray64"]).content
    assert_error(post(app, "/decompress", b"garbage"), 400, "malformed_blob")
    assert_error(post(app, "/decompress", blob[:-10]), 400)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0xFF
    assert_error(post(app, "/decompress", bytes(flipped)), 400)
    assert_error(post(app, "/decompress", b""), 400, "malformed_blob")
    # a multipart body without the field, and a field that is not a file
    assert_error(
        run(app, lambda c: c.post("/compress", files={"other": ("a.png", png, "image/png")})), 400, "bad_request"
    )
    assert_error(
        run(app, lambda c: c.post("/compress", data={"file": "abc"}, files={"x": ("a", b"1")})), 400, "bad_request"
    )


def test_400_corrupt_bitstream_with_valid_container(app, service_images):
    """A blob whose container is intact (CRCs recomputed) but whose y stream is garbage
    fails only itself: 400, and the service keeps working."""
    blob = post(app, "/compress", service_images["gray64"]).content
    f = unpack(blob)
    bad = pack(dataclasses.replace(f, y_string=bytes(b ^ 0x5A for b in f.y_string)))
    body = assert_error(post(app, "/decompress", bad), 400)
    assert body["error"] in ("corrupt_bitstream", "entropy_parameter_drift")
    assert post(app, "/decompress", blob).status_code == 200


def test_413_too_large(app, service_images, local_model):
    big = b"\x89PNG" + bytes(MAX_BODY)
    assert_error(post(app, "/compress", big), 413, "too_large")

    async def chunked(c):  # no Content-Length: the limit applies while streaming
        async def gen():
            for _ in range(MAX_BODY // 65536 + 2):
                yield bytes(65536)

        return await c.post("/decompress", content=gen())

    assert_error(run(app, chunked), 413, "too_large")
    # pixels: 500x420 = 210000 > MAX_PIXELS
    assert_error(post(app, "/compress", make_png(420, 500)), 413, "too_large")
    # a strip with few pixels that pads to a huge tensor: refused before any model work
    body = assert_error(post(app, "/compress", make_png(1, 60_000)), 413, "too_large")
    assert "pads to 60032x256" in body["detail"], body
    # a blob that decodes to an image over the limit (made locally, where no limit applies)
    img = decode_image(make_png(420, 500))
    blob = compress_images(local_model, [img])[0].blob
    body = assert_error(post(app, "/decompress", blob), 413, "too_large")
    assert "500x420 image" in body["detail"], body
    # the limit is on the image, like the encoder's: 460x400 pads to 512x512 (over the limit)
    # but is accepted for compression, so its blob must decode
    img = decode_image(make_png(400, 460))
    r = post(app, "/compress", make_png(400, 460))
    assert r.status_code == 200, r.text
    r = post(app, "/decompress", r.content)
    assert r.status_code == 200 and decode_image(r.content).pixels.shape == img.pixels.shape, r.text
    # multipart over the limit
    r = run(app, lambda c: c.post("/compress", files={"file": ("a.png", big, "image/png")}))
    assert_error(r, 413, "too_large")


def test_415_unsupported_media_type(app, service_images):
    png = service_images["gray64"]
    assert_error(
        post(app, "/compress", png, headers={"content-type": "application/json"}), 415, "unsupported_media_type"
    )
    assert_error(post(app, "/decompress", b"x", headers={"content-type": "text/plain"}), 415, "unsupported_media_type")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    assert_error(post(app, "/compress", gif.getvalue()), 415, "unsupported_media_type")


def test_422_bad_parameters(app, service_images, local_model):
    png = service_images["gray64"]
    for q in ("abc", "0", "256", "1.5"):
        assert_error(post(app, f"/compress?quality={q}", png), 422, "bad_parameter")
    assert_error(post(app, "/compress?quality=9", png), 422, "bad_parameter")  # not served
    assert_error(post(app, "/compress?drop_alpha=perhaps", png), 422, "bad_parameter")
    # a misspelt parameter is refused, not ignored (it would code at the default quality)
    body = assert_error(post(app, "/compress?qualty=2", png), 422, "bad_parameter")
    assert "qualty" in body["detail"] and "quality" in body["detail"], body
    assert_error(post(app, "/decompress?quality=2", b"x"), 422, "bad_parameter")
    # a blob from a model the service does not hold
    blob = post(app, "/compress", png).content
    f = unpack(blob)
    for header in (
        dataclasses.replace(f.header, quality=7),
        dataclasses.replace(f.header, weights_hash=bytes(8)),
    ):
        other = pack(dataclasses.replace(f, header=header))
        assert_error(post(app, "/decompress", other), 422, "model_not_found")


def test_404_and_405_are_json(app):
    assert_error(get(app, "/nope"), 404, "not_found")
    assert_error(get(app, "/compress"), 405, "method_not_allowed")


class _Gate:
    """Holds the device worker inside its next batch until released."""

    def __init__(self, pool, monkeypatch):
        self.entered = threading.Event()
        self.release = threading.Event()
        worker = pool.workers[0]
        original = worker._compress

        def gated(jobs):
            self.entered.set()
            self.release.wait(60)
            return original(jobs)

        monkeypatch.setattr(worker, "_compress", gated)


async def _wait_for(predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.01)


def test_429_when_the_queue_is_full_and_others_unaffected(app, service_images, monkeypatch):
    pool = app.state.pool
    monkeypatch.setattr(pool.batcher, "max_queue", 2)
    gate = _Gate(pool, monkeypatch)
    png = service_images["gray64"]

    async def scenario(c):
        first = asyncio.create_task(c.post("/compress", content=png))
        await _wait_for(gate.entered.is_set)  # the worker holds the first request
        queued = [asyncio.create_task(c.post("/compress", content=png)) for _ in range(2)]
        await _wait_for(lambda: pool.batcher.depth == 2)
        rejected = await c.post("/compress", content=png)
        rejected_blob = await c.post("/decompress", content=b"anything")
        gate.release.set()
        done = await asyncio.gather(first, *queued)
        return rejected, rejected_blob, done

    rejected, rejected_blob, done = run(app, scenario)
    assert_error(rejected, 429, "queue_full")
    assert int(rejected.headers["retry-after"]) >= 1
    assert_error(rejected_blob, 429, "queue_full")
    assert [r.status_code for r in done] == [200, 200, 200]
    assert len({r.content for r in done}) == 1


def test_a_refused_request_is_not_decoded_and_bad_input_frees_its_place(app, service_images, monkeypatch):
    """The queue place is taken before the body is decoded: a request past the bound gets
    429 without its image being decoded, and a request that fails on its input gives its
    place back."""
    import tcm_serve.api.routes.codec as codec_routes

    pool = app.state.pool
    monkeypatch.setattr(pool.batcher, "max_queue", 1)
    gate = _Gate(pool, monkeypatch)
    png = service_images["gray64"]
    decoded = []
    original = codec_routes.decode_image
    monkeypatch.setattr(codec_routes, "decode_image", lambda data, **kw: decoded.append(1) or original(data, **kw))

    async def scenario(c):
        first = asyncio.create_task(c.post("/compress", content=png))
        await _wait_for(gate.entered.is_set)  # the worker holds the first request
        bad = await c.post("/compress", content=b"not an image", headers={"content-type": "image/png"})
        assert pool.batcher.reserved == 0 and pool.batcher.depth == 0
        queued = asyncio.create_task(c.post("/compress", content=png))
        await _wait_for(lambda: pool.batcher.depth == 1)
        n_decoded = len(decoded)
        rejected = await c.post("/compress", content=png)
        assert len(decoded) == n_decoded  # refused before decoding
        gate.release.set()
        return bad, rejected, await asyncio.gather(first, queued)

    bad, rejected, done = run(app, scenario)
    assert_error(bad, 400, "bad_image")
    assert_error(rejected, 429, "queue_full")
    assert [r.status_code for r in done] == [200, 200]
    assert (pool.batcher.depth, pool.batcher.reserved) == (0, 0)


@pytest.mark.parametrize("route", ["/compress", "/decompress"])
def test_a_slow_upload_gets_408_and_gives_its_queue_place_back(app, service_images, monkeypatch, route):
    """A request holds a queue place while its body arrives; a client that trickles its
    body must not hold it past the request deadline (else a few slow clients could keep
    everyone else at 429)."""
    pool = app.state.pool
    monkeypatch.setattr(app.state.settings, "request_timeout_s", 0.5)
    monkeypatch.setattr(pool.batcher, "max_queue", 1)
    png = service_images["gray64"]

    async def trickle():
        yield png[:10]
        await asyncio.sleep(2.0)
        yield png[10:]

    async def scenario(c):
        slow = asyncio.create_task(c.post(route, content=trickle()))
        await _wait_for(lambda: pool.batcher.reserved == 1)
        blocked = await c.post("/compress", content=png)  # the slow client holds the only place
        return blocked, await slow

    blocked, slow = run(app, scenario)
    assert_error(blocked, 429, "queue_full")
    assert_error(slow, 408, "request_timeout")
    assert (pool.batcher.depth, pool.batcher.reserved) == (0, 0)
    monkeypatch.undo()
    assert post(app, "/compress", png).status_code == 200


@pytest.mark.parametrize("route", ["/compress", "/decompress"])
def test_a_client_that_hangs_up_mid_upload_is_not_a_server_error(app, service_images, route, caplog):
    """A disconnect while the body arrives is the client's doing: 499 client_closed in the
    metrics, no 500, no "bug" log line, and the queue place is given back."""
    pool = app.state.pool
    head = service_images["gray64"][:20]
    sent: list[dict] = []

    async def main():
        messages = iter([{"type": "http.request", "body": head, "more_body": True}, {"type": "http.disconnect"}])

        async def receive():
            return next(messages, {"type": "http.disconnect"})

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": route,
            "raw_path": route.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver"), (b"content-type", b"application/octet-stream")],
            "client": ("127.0.0.1", 5000),
            "server": ("testserver", 80),
        }
        await app(scope, receive, send)

    before = get(app, "/metrics").text
    with caplog.at_level(logging.INFO):
        anyio.run(main)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 499
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert body["error"] == "client_closed" and "disconnected after sending 20 bytes" in body["detail"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    after = get(app, "/metrics").text

    def count(text: str, code: str) -> float:
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            if f.name == "tcm_requests"
            for s in f.samples
            if s.name == "tcm_requests_total" and s.labels["endpoint"] == route and s.labels["code"] == code
        )

    assert count(after, "499") == count(before, "499") + 1 and count(after, "500") == count(before, "500")
    assert (pool.batcher.depth, pool.batcher.reserved) == (0, 0)


def test_504_past_the_deadline_and_the_service_recovers(app, service_images, monkeypatch):
    pool = app.state.pool
    gate = _Gate(pool, monkeypatch)
    monkeypatch.setattr(app.state.settings, "request_timeout_s", 0.5)
    png = service_images["gray64"]

    async def scenario(c):
        first = asyncio.create_task(c.post("/compress", content=png))
        await _wait_for(gate.entered.is_set)
        second = await c.post("/compress", content=png)  # queued behind the held batch
        r1 = await first
        gate.release.set()
        return r1, second

    r1, r2 = run(app, scenario)
    assert_error(r1, 504, "deadline_exceeded")
    assert_error(r2, 504, "deadline_exceeded")
    monkeypatch.undo()
    assert post(app, "/compress", png).status_code == 200
    assert pool.batcher.depth == 0


def test_503_not_ready_and_shutting_down(idle_app, service_images):
    body = assert_error(get(idle_app, "/readyz"), 503, "not_ready")
    assert "not started" in body["detail"]
    r = post(idle_app, "/compress", service_images["gray64"])
    assert_error(r, 503, "not_ready")
    assert int(r.headers["retry-after"]) >= 1
    assert get(idle_app, "/healthz").status_code == 200  # alive, just not ready
    assert run(idle_app, lambda c: c.head("/readyz")).status_code == 503  # HEAD tells the same
    models = get(idle_app, "/v1/models").json()
    assert models["ready"] is False and all(not m["loaded"] for m in models["models"])


def test_503_shutting_down(service_store, service_images):
    app = create_app(load_settings(model_store=str(service_store), devices="cpu"))
    app.state.pool.batcher.close()
    r = post(app, "/compress", service_images["gray64"])
    assert_error(r, 503, "shutting_down")
    assert "retry-after" in r.headers
    assert "shutting down" in get(app, "/readyz").json()["detail"]


def test_bad_input_never_yields_500(app, service_images):
    """Random bytes, truncations and bit flips of valid inputs: always a 4xx."""
    rng = np.random.default_rng(7)
    png = service_images["rgb200x136"]
    blob = post(app, "/compress", service_images["gray64"]).content
    bodies = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in (1, 7, 72, 500, 5000)]
    for src in (png, blob):
        for _ in range(6):
            cut = int(rng.integers(1, len(src)))
            bodies.append(src[:cut])
            flipped = bytearray(src)
            flipped[int(rng.integers(0, len(src)))] ^= 1 << int(rng.integers(0, 8))
            bodies.append(bytes(flipped))

    async def scenario(c):
        out = []
        for b in bodies:
            out.append((await c.post("/compress", content=b)).status_code)
            out.append((await c.post("/decompress", content=b)).status_code)
        return out

    codes = run(app, scenario)
    assert all(c < 500 for c in codes), codes
    assert post(app, "/decompress", blob).status_code == 200


def test_status_table_covers_the_hierarchy():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    # Written out independently of STATUS: a new error class fails here until someone
    # decides its status (the fallback would silently make it a 500).
    expected = {
        "BackendMismatchError": 422,
        "BitstreamError": 400,
        "CheckpointError": 500,
        "ConfigError": 500,
        "DriftError": 400,
        "FormatError": 400,
        "ImageError": 400,
        "ImageTooLargeError": 413,
        "ModelNotFoundError": 422,
        "StoreError": 500,
        "UnsupportedImageFormatError": 415,
        "UnsupportedVersionError": 400,
        "BadParameterError": 422,
        "BadRequestError": 400,
        "ClientClosedError": 499,
        "DeadlineExceededError": 504,
        "InternalError": 500,
        "NotReadyError": 503,
        "QueueFullError": 429,
        "RequestTimeoutError": 408,
        "RequestTooLargeError": 413,
        "RetryableError": 503,
        "UnauthorizedError": 401,
        "ServiceError": 500,
        "ShuttingDownError": 503,
        "UnsupportedMediaTypeError": 415,
        "WorkerDiedError": 503,
        # the client's and the CLI's own errors (never raised by the service)
        "ConnectionFailedError": 500,
        "RemoteError": 500,
        "CliError": 500,
        "ExportError": 500,
        "EvalError": 500,
    }
    # every module that defines an error class, so the result does not depend on which
    # other tests ran first
    import tcm_serve.cli.main
    import tcm_serve.cli.onnx
    import tcm_serve.client
    import tcm_serve.evaluation.runner  # noqa: F401

    seen = {cls.__name__: status_for(cls.__new__(cls)) for cls in subclasses(TcmError)}
    assert seen == expected
    assert status_for(ImageTooLargeError("x")) == 413
    assert status_for(FormatError("x")) == 400
    assert STATUS[QueueFullError] == 429 and STATUS[NotReadyError] == 503


# -- models, probes, metrics, logs -------------------------------------------------------------
def test_models_and_probes(app, service_store):
    m = get(app, "/v1/models").json()
    assert m["qualities"] == [2, 3] and m["default_quality"] == 3 and m["ready"] is True
    entries = {e.quality: e for e in ModelStore(service_store).entries()}
    for info in m["models"]:
        e = entries[info["quality"]]
        assert info["lambda"] == pytest.approx(0.013)
        assert info["weights_sha256"] == e.sha256
        assert info["weights_hash"] == e.weights_hash.hex()
        assert info["config"]["N"] == 32 and info["config"]["num_slices"] == 2
        assert info["loaded"] is True
        assert info["devices"] == [dict(info["devices"][0], device="cpu", state="ready", loaded=True)]
    assert get(app, "/healthz").json() == {"status": "ok"}
    assert get(app, "/readyz").status_code == 200
    for probe in ("/healthz", "/readyz"):  # HEAD answers like GET (load balancers use either)
        assert run(app, lambda c, probe=probe: c.head(probe)).status_code == 200
    docs = get(app, "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = get(app, "/openapi.json").json()
    assert {"/compress", "/decompress", "/v1/models", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert set(spec["paths"]["/healthz"]) == {"get"}
    compress = spec["paths"]["/compress"]["post"]
    # every header the route answers with is documented, and so is every parameter it takes
    assert set(compress["responses"]["200"]["headers"]) == set(tcm_headers.COMPRESS_HEADERS)
    assert {p["name"] for p in compress["parameters"]} == {"quality", "drop_alpha", "bitstream", "effort"}
    for route in ("/compress", "/compare"):  # the values this service takes, not the codec's range
        params = {p["name"]: p["schema"] for p in spec["paths"][route]["post"]["parameters"]}
        assert params["effort"]["maximum"] == 1 and params["quality"]["anyOf"][0]["enum"] == [2, 3]


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_scrape_and_parse(app, service_images):
    png = service_images["gray64"]
    before = _families(get(app, "/metrics").text)

    def count(fams, endpoint, code, quality=None):
        return (
            sum(
                s.value
                for s in fams["tcm_requests"].samples
                if s.name == "tcm_requests_total"
                and s.labels["endpoint"] == endpoint
                and s.labels["code"] == code
                and (quality is None or s.labels["quality"] == quality)
            )
            if "tcm_requests" in fams
            else 0
        )

    blob = post(app, "/compress?quality=2", png).content
    post(app, "/decompress", blob)
    post(app, "/compress", b"junk")
    r = get(app, "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    fams = _families(r.text)
    assert count(fams, "/compress", "200", "2") == count(before, "/compress", "200", "2") + 1
    assert count(fams, "/decompress", "200", "2") == count(before, "/decompress", "200", "2") + 1
    assert count(fams, "/compress", "400") == count(before, "/compress", "400") + 1
    for name, kind in (
        ("tcm_request_duration_seconds", "histogram"),
        ("tcm_stage_duration_seconds", "histogram"),
        ("tcm_batch_size", "histogram"),
        ("tcm_queue_depth", "gauge"),
        ("tcm_queue_reserved", "gauge"),
        ("tcm_queue_capacity", "gauge"),
        ("tcm_bits_per_pixel", "histogram"),
        ("tcm_models_loaded", "gauge"),
        ("tcm_requests_in_flight", "gauge"),
    ):
        assert fams[name].type == kind, name
    stages = {s.labels["stage"] for s in fams["tcm_stage_duration_seconds"].samples}
    assert {"queue", "transform", "entropy_coding", "image_io"} <= stages
    loaded = [s.value for s in fams["tcm_models_loaded"].samples]
    assert loaded == [2.0]
    bpp_count = [
        s.value for s in fams["tcm_bits_per_pixel"].samples if s.name.endswith("_count") and s.labels["quality"] == "2"
    ]
    assert bpp_count and bpp_count[0] >= 1
    assert "tcm_device_memory_bytes" not in fams  # CPU only
    assert fams["tcm_queue_reserved"].samples[0].value == 0.0  # every request gave its place back
    assert fams["tcm_queue_capacity"].samples[0].value == app.state.settings.max_queue
    # the restart counter exists at 0 before any restart, so increase() sees the first one
    restarts = {s.labels["device"]: s.value for s in fams["tcm_worker_restarts"].samples if s.name.endswith("_total")}
    assert restarts == {"cpu": 0.0}
    # each app has its own registry
    other = create_app(load_settings(model_store=app.state.settings.model_store, devices="cpu"))
    assert "tcm_requests_total{" not in other.state.metrics.render().decode()


def test_request_log_line_and_request_id(app, service_images, caplog):
    with caplog.at_level(logging.INFO, logger="tcm.access"):
        r = post(app, "/compress", service_images["gray64"], headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    records = [rec for rec in caplog.records if rec.name == "tcm.access"]
    assert records, "no access log line"
    line = json.loads(JsonFormatter().format(records[-1]))
    assert line["id"] == "abc-123" and line["route"] == "/compress" and line["status"] == 200
    assert line["bytes_in"] == len(service_images["gray64"]) and line["bytes_out"] == len(r.content)
    assert line["duration_ms"] > 0
    assert {"queue", "transform", "entropy_coding", "image_io"} <= set(line["timings_ms"])
    r2 = post(app, "/compress", b"x", headers={"x-request-id": "bad id with spaces"})
    assert r2.headers["x-request-id"] != "bad id with spaces"


# -- client ---------------------------------------------------------------------------------------
def test_async_client_round_trip_and_errors(app, service_images, tmp_path):
    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with AsyncTcmClient("http://testserver", transport=transport) as c:
            blob = await c.compress(service_images["gray64"], quality=2)
            png = await c.decompress(blob)
            path = tmp_path / "x.tcm"
            path.write_bytes(blob)
            assert await c.decompress(path) == png  # a path works as well as bytes
            with pytest.raises(FormatError, match="cannot read .tcm file"):
                await c.decompress(tmp_path / "missing.tcm")
            models = await c.models()
            health = await c.health()
            with pytest.raises(ImageError) as bad:
                await c.compress(b"nope")
            with pytest.raises(FormatError):
                await c.decompress(b"nope")
            return blob, png, models, health, bad.value

    blob, png, models, health, err = anyio.run(scenario)
    assert unpack(blob).header.quality == 2
    assert png_pixels(png)[0] == "L"
    assert models["qualities"] == [2, 3] and health == {"status": "ok"}
    assert err.status == 400 and err.code == "bad_image"


def test_error_from_response_maps_codes():
    def resp(status, body, headers=None):
        return httpx.Response(status, json=body, headers=headers)

    e = error_from_response(resp(429, {"error": "queue_full", "detail": "full"}, {"retry-after": "3"}))
    assert isinstance(e, QueueFullError) and e.retry_after == 3 and e.status == 429
    e = error_from_response(resp(413, {"error": "too_large", "detail": "big"}))
    assert isinstance(e, ImageTooLargeError) and str(e) == "big"
    e = error_from_response(resp(418, {"error": "teapot", "detail": "short and stout"}))
    assert isinstance(e, TcmError) and e.code == "teapot" and e.status == 418
    e = error_from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(e, TcmError) and e.status == 502


# -- configuration -----------------------------------------------------------------------------------
def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("TCM_QUALITIES", "3, 2")
    monkeypatch.setenv("TCM_DEVICES", "cuda:0, cuda:1")
    monkeypatch.setenv("TCM_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("TCM_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("TCM_BITSTREAM", " Exact")
    s = load_settings(port=9001)
    assert s.qualities == [2, 3] and s.devices == "cuda:0,cuda:1" and s.max_batch_size == 8
    assert s.port == 9001 and s.log_level == "debug" and s.bitstream == "exact"
    monkeypatch.delenv("TCM_BITSTREAM")
    assert load_settings().bitstream == "portable"
    for bad in (
        {"port": 70000},
        {"devices": "gpu"},
        {"qualities": "0"},
        {"max_batch_size": 0},
        {"qualities": "2", "default_quality": 3},
        {"log_level": "loud"},
        {"bitstream": "f32"},
    ):
        with pytest.raises(ConfigError):
            load_settings(**bad)


def test_bad_service_configuration_fails_at_start(service_store, tmp_path):
    with pytest.raises(ConfigError, match="not in the model store"):
        create_app(load_settings(model_store=str(service_store), qualities="5"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no models"):
        create_app(load_settings(model_store=str(tmp_path / "empty")))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            create_app(load_settings(model_store=str(service_store), devices="cuda"))
    # timeouts past what threading accepts: refused at start, not an OverflowError at shutdown
    with pytest.raises(ConfigError, match="shutdown_grace_s"):
        load_settings(model_store=str(service_store), shutdown_grace_s=1e10)
    with pytest.raises(ConfigError, match="request_timeout_s"):
        load_settings(model_store=str(service_store), request_timeout_s=1e12)


def test_failed_allocations_are_413_not_bugs():
    """Every way torch reports a failed allocation maps to 413 too_large; other errors stay
    internal (500). The CPU allocator's error is a plain RuntimeError, made for real here."""
    from tcm_serve.errors import ImageTooLargeError, is_out_of_memory
    from tcm_serve.runtime.worker import as_service_error

    cpu = cpu_allocation_error()
    for exc in (cpu, MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")):
        assert is_out_of_memory(exc), exc
        assert isinstance(as_service_error(exc), ImageTooLargeError)
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("can't allocate memory"))  # only allocator errors


def test_an_image_that_decodes_too_slowly_gets_504_and_frees_its_place(app, service_images, monkeypatch):
    """Image decoding runs under the request deadline as well (a decode bomb must not hold a
    queue place for ever); the slow decode here is a stand-in for such a file."""
    import threading

    from tcm_serve.api.routes import codec as codec_routes

    release = threading.Event()
    real = codec_routes.decode_image

    def slow_decode(*args, **kwargs):
        release.wait(30)
        return real(*args, **kwargs)

    pool = app.state.pool
    monkeypatch.setattr(codec_routes, "decode_image", slow_decode)
    monkeypatch.setattr(app.state.settings, "request_timeout_s", 0.5)
    try:
        body = assert_error(post(app, "/compress", service_images["gray64"]), 504, "deadline_exceeded")
    finally:
        release.set()
    assert "did not decode" in body["detail"], body
    assert (pool.batcher.depth, pool.batcher.reserved) == (0, 0)
    monkeypatch.undo()
    assert post(app, "/compress", service_images["gray64"]).status_code == 200


# -- /compare ---------------------------------------------------------------------------------------
def test_compare_gives_the_tcm_result_and_the_classics_at_its_size(app, service_images):
    """The blob is the one /compress makes; its decoded image is what /decompress gives; JPEG
    and WebP land within 3 % of its size; every score is there."""
    data = service_images["rgb300x260"]
    r = post(app, "/compare?quality=3", data)
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["width"], report["height"], report["quality"], report["mode"]) == (300, 260, 3, "RGB")
    tcm = report["tcm"]
    blob = base64.b64decode(tcm["blob_base64"])
    assert blob == post(app, "/compress?quality=3", data).content and tcm["bytes"] == len(blob)
    assert tcm["format_version"] == 2 and tcm["bpp"] == pytest.approx(8 * len(blob) / (300 * 260))
    decoded = post(app, "/decompress", blob).content
    assert np.array_equal(png_pixels(base64.b64decode(tcm["png_base64"]))[1], png_pixels(decoded)[1])
    assert png_pixels(base64.b64decode(report["original_png_base64"]))[1].shape == (260, 300, 3)
    by_name = {c["name"]: c for c in report["codecs"]}
    assert {"jpeg420", "webp"} <= set(by_name) and set(by_name) | set(report["unavailable"]) >= {"avif"}
    for name in ("jpeg420", "webp"):
        c = by_name[name]
        assert c["reachable"] and abs(c["bytes"] - len(blob)) <= 0.03 * len(blob), c
        assert 10 < c["psnr"] < 60 and 0 < c["ms_ssim"] <= 1
        assert png_pixels(base64.b64decode(c["png_base64"]))[1].shape == (260, 300, 3)
    assert 0 < tcm["psnr"] < 60 and tcm["compress_seconds"] > 0 and tcm["decompress_seconds"] > 0


def test_compare_small_and_gray_images(app, service_images):
    """An image too small for MS-SSIM's five scales gets null there; grayscale stays gray."""
    report = post(app, "/compare", service_images["gray64"]).json()
    assert report["mode"] == "L" and report["tcm"]["ms_ssim"] is None
    assert all(c["ms_ssim"] is None for c in report["codecs"])
    assert png_pixels(base64.b64decode(report["tcm"]["png_base64"]))[0] == "L"


def test_compare_refuses_what_compress_refuses(app):
    assert_error(post(app, "/compare", b"not an image"), 400, "bad_image")
    assert_error(post(app, "/compare", make_png(420, 500)), 413, "too_large")  # over MAX_PIXELS
    assert_error(post(app, "/compare?bitstream=exact", make_png(40, 40)), 422, "bad_parameter")
    assert_error(post(app, "/compare?quality=9", make_png(40, 40)), 422, "bad_parameter")
    assert_error(post(app, "/compare", b"{}", headers={"content-type": "application/json"}), 415)


def test_compare_has_its_own_pixel_limit(service_store):
    """compare_max_pixels bounds /compare below max_pixels (it does several times the work)."""
    settings = load_settings(model_store=str(service_store), devices="cpu", qualities="3", compare_max_pixels=5000)
    small = create_app(settings)
    small.state.pool.start()
    try:
        assert small.state.pool.wait_ready(120), small.state.pool.not_ready_reason()
        body = assert_error(post(small, "/compare", make_png(80, 80)), 413, "too_large")
        assert "5,000" in body["detail"]
        assert post(small, "/compress", make_png(80, 80)).status_code == 200
    finally:
        small.state.pool.shutdown(10)


def test_compare_past_its_deadline_is_504(app, service_images, monkeypatch):
    """The equal-size search checks the request deadline between encodes."""
    import tcm_serve.evaluation.equal_size as equal_size

    real = equal_size.encode

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(equal_size, "encode", slow)
    monkeypatch.setattr(app.state.settings, "request_timeout_s", 2.0)
    assert_error(post(app, "/compare", service_images["gray64"]), 504, "deadline_exceeded")


def test_devices_say_why_there_is_no_gpu(monkeypatch, caplog):
    """``cuda`` without a usable GPU fails with the reason (GPU deployments ask for it, so a
    node with a broken driver never serves at CPU speed); ``auto`` says why it chose the CPU."""
    from tcm_serve.devices import resolve_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ConfigError, match=r"CUDA is not available: this torch \(.*\) is a CPU-only build"):
        resolve_devices("cuda")
    with caplog.at_level(logging.INFO, logger="tcm.runtime"):
        assert resolve_devices("auto") == [torch.device("cpu")]
    assert any("serving on the CPU because this torch" in r.getMessage() for r in caplog.records), caplog.text
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(
        torch.cuda,
        "init",
        lambda: (_ for _ in ()).throw(
            RuntimeError("The NVIDIA driver on your system is too old (found version 12020).")
        ),
    )
    with pytest.raises(ConfigError, match="driver on your system is too old"):
        resolve_devices("cuda")


def test_compare_concurrency_is_bounded(app, service_images, monkeypatch):
    """A second comparison while one runs is refused (429, before its body is read); the
    first completes."""
    import tcm_serve.evaluation.equal_size as equal_size

    real = equal_size.encode
    started = threading.Event()

    def slow(*args, **kwargs):
        started.set()
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(equal_size, "encode", slow)

    async def scenario(c):
        first = asyncio.create_task(c.post("/compare", content=service_images["gray64"]))
        await asyncio.to_thread(started.wait, 60)
        second = await c.post("/compare", content=service_images["gray64"])
        return await first, second

    first, second = run(app, scenario)
    assert first.status_code == 200, first.text
    body = assert_error(second, 429, "queue_full")
    assert "compare_concurrency" in body["detail"] and second.headers["retry-after"] == "5"


def test_the_renamed_store_variable_is_refused(monkeypatch, service_store):
    """TCM_STORE would otherwise be ignored and the bundled models served in its place."""
    monkeypatch.setenv("TCM_STORE", str(service_store))
    with pytest.raises(ConfigError, match="TCM_STORE was renamed TCM_MODEL_STORE"):
        load_settings(model_store=str(service_store))
    monkeypatch.delenv("TCM_STORE")
    assert load_settings(model_store=str(service_store)).model_store == str(service_store)
