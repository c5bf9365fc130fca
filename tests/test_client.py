"""The Python client against answers that are not tcm-serve's (a wrong --url, a proxy, a
redirect): each is a one-line error, never a page saved as an image or a KeyError."""

from __future__ import annotations

import anyio
import httpx
import pytest

from tcm_serve.client import AsyncTcmClient, RemoteError, TcmClient
from tcm_serve.errors import ConfigError

PNG = b"\x89PNG\r\n\x1a\n" + bytes(16)
TCM = b"\x89TCM" + bytes(16)
TCM_HEADERS = {"x-tcm-quality": "3", "x-tcm-bpp": "0.5", "x-tcm-width": "4", "x-tcm-height": "4"}


def _client(handler) -> TcmClient:
    return TcmClient("http://tcm.test", transport=httpx.MockTransport(handler))


def _redirect(request: httpx.Request) -> httpx.Response:
    return httpx.Response(301, headers={"location": "https://tcm.test/"}, text="<html>Moved Permanently</html>")


def _web_page(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/html"}, text="<html>some other app</html>")


@pytest.mark.parametrize(
    "handler, needle",
    [(_redirect, "HTTP 301 Moved Permanently, redirect to https://tcm.test/"), (_web_page, "is not a PNG")],
)
def test_decompress_refuses_a_body_that_is_not_a_png(handler, needle):
    with _client(handler) as c, pytest.raises(RemoteError) as exc:
        c.decompress(TCM)
    assert needle in str(exc.value) and "did not answer like tcm-serve" in str(exc.value)


@pytest.mark.parametrize(
    "response, needle",
    [
        (httpx.Response(200, content=b"<html>", headers=TCM_HEADERS), "is not a .tcm blob"),
        (httpx.Response(200, content=TCM), "header 'X-TCM-Quality' is missing"),
        (httpx.Response(200, content=TCM, headers={**TCM_HEADERS, "x-tcm-bpp": "lots"}), "bad X-TCM header"),
        (httpx.Response(302, headers={"location": "/login"}), "redirect to /login"),
    ],
)
def test_compress_refuses_answers_without_a_blob_and_its_headers(response, needle):
    with _client(lambda request: response) as c, pytest.raises(RemoteError) as exc:
        c.compress_full(PNG)
    assert needle in str(exc.value)


def test_json_endpoints_refuse_a_non_json_body():
    with _client(_web_page) as c, pytest.raises(RemoteError, match="not a JSON object"):
        c.health()


def test_a_good_answer_still_passes():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/compress":
            return httpx.Response(200, content=TCM, headers=TCM_HEADERS)
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    with _client(handler) as c:
        res = c.compress_full(PNG)
        assert (res.blob, res.quality, res.bpp, res.width, res.height) == (TCM, 3, 0.5, 4, 4)
        assert c.decompress(res.blob) == PNG


def test_a_malformed_url_is_a_config_error():
    with pytest.raises(ConfigError, match="invalid service URL"):
        TcmClient("http://[::1")
    with pytest.raises(ConfigError, match="invalid service URL"):
        AsyncTcmClient("http://[::1")


def test_async_client_checks_answers_too():
    async def main():
        async with AsyncTcmClient("http://tcm.test", transport=httpx.MockTransport(_redirect)) as c:
            await c.decompress(TCM)

    with pytest.raises(RemoteError, match="HTTP 301"):
        anyio.run(main)


def test_the_client_imports_without_torch():
    """A program that only talks to a running service needs httpx, not torch, numpy or Pillow."""
    import subprocess
    import sys

    code = "import sys, tcm_serve.client; print(sorted(m for m in ('torch', 'numpy', 'PIL', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr)


def test_effort_is_sent_only_when_asked_for():
    """``effort=`` reaches /compress as the ``effort`` query parameter; effort 0 sends none,
    so the client keeps working against services older than the parameter."""
    seen: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        return httpx.Response(200, headers=TCM_HEADERS, content=TCM)

    with _client(answer) as c:
        c.compress(PNG, quality=3, effort=2)
        c.compress(PNG, quality=3)

    async def run_async() -> None:
        async with AsyncTcmClient("http://tcm.test", transport=httpx.MockTransport(answer)) as c:
            await c.compress(PNG, effort=1)

    anyio.run(run_async)
    assert seen == [{"quality": "3", "effort": "2"}, {"quality": "3"}, {"effort": "1"}]
