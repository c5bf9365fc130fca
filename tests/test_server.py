"""A real ``tcm serve`` process on 127.0.0.1: readiness, round trips, concurrency, the remote
CLI, and graceful shutdown on SIGTERM. Loopback only; every loop is bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tcm_serve.client import ConnectionFailedError, TcmClient
from tcm_serve.codec.container import unpack
from tcm_serve.errors import ImageError

from servers import START_TIMEOUT_S, Server, free_port


@pytest.fixture(scope="module")
def server(service_store, tmp_path_factory):
    srv = Server(
        service_store,
        tmp_path_factory.mktemp("server") / "serve.log",
        "--max-batch-size",
        "4",
        "--max-batch-delay-ms",
        "20",
        "--coder-threads",
        "2",
    )
    try:
        healthz_before_ready = None
        end = time.monotonic() + START_TIMEOUT_S
        while healthz_before_ready is None and time.monotonic() < end and srv.proc.poll() is None:
            try:
                healthz_before_ready = httpx.get(srv.url + "/healthz", timeout=5).status_code
            except httpx.TransportError:
                time.sleep(0.02)
        srv.healthz_first = healthz_before_ready
        srv.wait_ready()
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, srv.log()


def test_readiness_before_and_after_warm_up(server):
    # the server listens at once and answers probes while its models load and warm up
    assert server.healthz_first == 200
    assert server.readyz[-1] == 200
    assert 503 in server.readyz, "never saw the not-ready state (models load after the port opens)"
    models = httpx.get(server.url + "/v1/models").json()
    assert models["ready"] and all(m["loaded"] for m in models["models"])
    log = server.log()
    assert '"msg":"model ready"' in log


def test_round_trip_with_the_client(server, service_images, tmp_path):
    with TcmClient(server.url) as c:
        res = c.compress_full(service_images["rgb140x260"], quality=2)
        assert (res.width, res.height, res.quality) == (260, 140, 2)
        assert unpack(res.blob).header.quality == 2 and unpack(res.blob).header.version == 2
        png = c.decompress(res.blob)
        assert png.startswith(b"\x89PNG")
        exact = c.compress(service_images["rgb140x260"], quality=2, bitstream="exact")
        assert unpack(exact).header.version == 1 and c.decompress(exact).startswith(b"\x89PNG")
        path = tmp_path / "in.png"
        path.write_bytes(service_images["gray64"])
        assert unpack(c.compress(path)).header.mode == "L"
        with pytest.raises(ImageError) as exc:
            c.compress(b"not an image")
        assert exc.value.status == 400
        assert c.health() == {"status": "ok"} and c.ready()["status"] == "ready"
    with pytest.raises(ConnectionFailedError):
        TcmClient(f"http://127.0.0.1:{free_port()}", timeout=5).health()


def test_parallel_mixed_requests_equal_sequential(server, service_images):
    """32 parallel requests (compress at two qualities and three padded sizes, and
    decompress), all correct and byte-equal to the same requests made one at a time."""
    names = ["rgb200x136", "gray64", "rgb300x260", "rgb140x260"]
    with TcmClient(server.url) as c:
        blobs = {(n, q): c.compress(service_images[n], quality=q) for n in names for q in (2, 3)}
        pngs = {k: c.decompress(b) for k, b in blobs.items()}
    work = []
    for i in range(32):
        n, q = names[i % 4], (2, 3)[(i // 4) % 2]
        work.append(("c", n, q) if i % 3 else ("d", n, q))

    def one(item):
        kind, n, q = item
        # A generous client timeout: this checks correctness under concurrency, and a busy
        # CI machine may queue 32 requests on 2 cores for minutes.
        with TcmClient(server.url, timeout=600) as c:
            return c.compress(service_images[n], quality=q) if kind == "c" else c.decompress(blobs[(n, q)])

    with ThreadPoolExecutor(32) as ex:
        results = list(ex.map(one, work))
    for (kind, n, q), got in zip(work, results):
        assert got == (blobs[(n, q)] if kind == "c" else pngs[(n, q)]), (kind, n, q)

    # every request was counted (whether any were batched depends on arrival timing, so the
    # batch-size histogram is only checked for presence; test_batching covers batching)
    # (the middleware counts a request after its last byte is sent: poll, bounded)
    def counted() -> float:
        fams = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
        assert fams["tcm_batch_size"].type == "histogram"
        return sum(
            s.value
            for s in fams["tcm_requests"].samples
            if s.name == "tcm_requests_total" and s.labels["endpoint"] in ("/compress", "/decompress")
        )

    deadline = time.monotonic() + 10
    while counted() < len(work) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted() >= len(work)


def test_remote_cli_mirrors_local(server, service_images, tmp_path):
    src = tmp_path / "a.png"
    src.write_bytes(service_images["rgb200x136"])
    cmd = [sys.executable, "-m", "tcm_serve.cli.main", "remote"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCM_")}
    r = subprocess.run(
        cmd + ["compress", "--url", server.url, str(src), "-q", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    blob = (tmp_path / "a.tcm").read_bytes()
    assert unpack(blob).header.quality == 2
    r = subprocess.run(
        cmd + ["decompress", "--url", server.url, str(tmp_path / "a.tcm"), "-o", str(tmp_path / "b.png")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b.png").read_bytes().startswith(b"\x89PNG")
    bad = tmp_path / "bad.tcm"
    bad.write_bytes(b"junk")
    r = subprocess.run(
        cmd + ["decompress", "--url", server.url, str(bad)], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 1 and r.stderr.startswith("tcm: error: ") and len(r.stderr.strip().splitlines()) == 1


def test_one_json_log_line_per_request(server, service_images):
    rid = f"log-line-test-{os.getpid()}"
    r = httpx.post(
        server.url + "/compress", content=service_images["gray64"], headers={"x-request-id": rid}, timeout=120
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    # the line is written once the response is sent: poll the log, bounded
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        access = [d for d in lines if d.get("logger") == "tcm.access" and d.get("id") == rid]
        if access or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.2)  # a duplicate would follow at once
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    access = [d for d in lines if d.get("logger") == "tcm.access" and d.get("id") == rid]
    assert len(access) == 1, access
    d = access[0]
    assert d["route"] == "/compress" and d["status"] == 200
    assert {"id", "route", "status", "bytes_in", "bytes_out", "duration_ms", "timings_ms"} <= set(d)


def _in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    for fam in text_string_to_metric_families(text):
        if fam.name == "tcm_requests_in_flight":
            return sum(s.value for s in fam.samples)
    return 0.0


def test_sigterm_finishes_accepted_requests_and_exits_0(service_store, service_images, tmp_path):
    srv = Server(service_store, tmp_path / "serve.log", "--max-batch-size", "1", "--shutdown-grace-s", "60")
    try:
        srv.wait_ready()
        with TcmClient(srv.url) as c:
            expected = c.compress(service_images["rgb300x260"], quality=3)
        n = 6

        def one(_):
            with TcmClient(srv.url) as c:
                return c.compress(service_images["rgb300x260"], quality=3)

        with ThreadPoolExecutor(n) as ex:
            futures = [ex.submit(one, i) for i in range(n)]
            end = time.monotonic() + 60
            while _in_flight(srv.url) < n:  # all n accepted and being handled
                assert time.monotonic() < end, srv.log()
                time.sleep(0.01)
            srv.proc.send_signal(signal.SIGTERM)
            results = [f.result(120) for f in futures]
        assert results == [expected] * n  # no accepted request lost
        assert srv.proc.wait(60) == 0, srv.log()
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(srv.url + "/healthz", timeout=5)
        assert "Shutting down" in srv.log()
    finally:
        srv.stop()


def test_probes_answer_head_without_a_body(server):
    """Through the real server: HEAD gets the probe's status and headers, and no body."""
    for probe in ("/healthz", "/readyz"):
        r = httpx.head(server.url + probe, timeout=10)
        assert r.status_code == 200 and r.content == b"", (probe, r.status_code, r.content)
        assert r.headers["content-type"] == "application/json"
