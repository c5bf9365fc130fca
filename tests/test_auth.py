"""Optional API keys (tcm_serve/api/auth.py): off by default, Bearer keys from a file when on."""

from __future__ import annotations

import os
import time

import anyio
import httpx
import pytest

from tcm_serve.api import create_app
from tcm_serve.api.auth import ApiKeys
from tcm_serve.api.exceptions import UnauthorizedError
from tcm_serve.client import TcmClient
from tcm_serve.config import load_settings
from tcm_serve.errors import ConfigError

from helpers import make_png

KEY_A = "a" * 20 + "-first-key"
KEY_B = "b" * 20 + "-second-key"


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    path.write_text(f"# rotation: both keys valid\n{KEY_A}\n\n{KEY_B}\n")
    return path


@pytest.fixture(scope="module")
def app(service_store, keys_file):
    app = create_app(
        load_settings(model_store=str(service_store), devices="cpu", qualities="3", api_keys_file=str(keys_file))
    )
    app.state.pool.start()
    assert app.state.pool.wait_ready(120), app.state.pool.not_ready_reason()
    yield app
    app.state.pool.shutdown(10)


def call(app, method: str, url: str, key: str | None = None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=120) as c:
            return await c.request(method, url, headers=headers, **kw)

    return anyio.run(main)


def test_codec_routes_need_a_key(app):
    png = make_png(40, 50)
    for method, url in (("POST", "/compress"), ("POST", "/decompress"), ("POST", "/compare"), ("GET", "/v1/models")):
        for key in (None, "wrong-key-of-enough-length"):
            r = call(app, method, url, key, content=png)
            assert r.status_code == 401, (url, key, r.text)
            assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"].startswith("Bearer")
    missing = call(app, "POST", "/compress", content=png).json()["detail"]
    assert "Authorization: Bearer" in missing
    r = call(app, "POST", "/compress", "Basic " + KEY_A, content=png)  # the scheme is part of it
    assert r.status_code == 401
    for key in (KEY_A, KEY_B):  # every key in the file
        assert call(app, "POST", "/compress", key, content=png).status_code == 200


def test_probes_metrics_page_and_docs_stay_open(app):
    for url in ("/healthz", "/readyz", "/metrics", "/", "/docs", "/openapi.json", "/static/app.js"):
        assert call(app, "GET", url).status_code == 200, url
    metrics = call(app, "GET", "/metrics").text
    assert 'code="401"' in metrics  # refusals are counted like any answer


def test_open_paths_are_configurable(service_store, keys_file):
    app = create_app(
        load_settings(
            model_store=str(service_store),
            devices="cpu",
            qualities="3",
            api_keys_file=str(keys_file),
            open_paths="/healthz",
        )
    )
    assert call(app, "GET", "/healthz").status_code == 200
    assert call(app, "GET", "/metrics").status_code == 401
    assert call(app, "GET", "/metrics", KEY_A).status_code == 200


def test_keys_file_rules_and_rotation(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    for text, fragment in (("", "holds no key"), ("# only a comment\n", "holds no key"), ("short\n", "shorter than")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=fragment):
            ApiKeys(path)
    with pytest.raises(ConfigError, match="cannot read"):
        ApiKeys(tmp_path / "missing")
    path.write_text(KEY_A + "\n")
    keys = ApiKeys(path)
    assert keys.accepts(KEY_A) and not keys.accepts(KEY_B) and not keys.accepts("")
    monkeypatch.setattr("tcm_serve.api.auth._RECHECK_S", 0.0)
    path.write_text(KEY_B + "\n")
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new mtime even on a coarse clock
    assert keys.accepts(KEY_B) and not keys.accepts(KEY_A)  # rotated without a restart
    path.write_text("")  # a broken update keeps the keys in use
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert keys.accepts(KEY_B)


def test_a_service_with_a_bad_keys_file_does_not_start(service_store, tmp_path):
    with pytest.raises(ConfigError, match="API keys file"):
        create_app(load_settings(model_store=str(service_store), devices="cpu", api_keys_file=str(tmp_path / "nope")))


def test_the_client_sends_the_key(app, monkeypatch):
    transport = httpx.ASGITransport(app=app)

    async def models(client_kw):
        from tcm_serve.client import AsyncTcmClient

        async with AsyncTcmClient("http://testserver", transport=transport, **client_kw) as c:
            return await c.models()

    assert anyio.run(models, {"api_key": KEY_A})["qualities"] == [3]
    monkeypatch.setenv("TCM_API_KEY", KEY_B)
    assert anyio.run(models, {})["qualities"] == [3]
    monkeypatch.delenv("TCM_API_KEY")
    with pytest.raises(UnauthorizedError) as info:
        anyio.run(models, {})
    assert info.value.status == 401
    with TcmClient("http://127.0.0.1:9", api_key=KEY_A) as c:  # the header is set on the sync client too
        assert c._http.headers["authorization"] == f"Bearer {KEY_A}"
