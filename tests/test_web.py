"""The web page, in a real browser against a real ``tcm serve`` on 127.0.0.1.

Headless Chromium from Debian's ``chromium`` package, driven by Playwright (pointed at the
system browser: Playwright's own browser download cannot run here). Without the browser
these tests are skipped with the command that installs it. The server serves the bundled
store (the lite models), so the comparison is between real codecs on a real Kodak photo.

``TCM_UPDATE_SCREENSHOTS=1`` also writes the comparison screenshot to docs/img/ (the one
the README shows).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tcm_serve.store import DEFAULT_STORE

from servers import Server


def _working_chromium() -> str | None:
    """Debian's chromium, if it runs (Ubuntu's chromium-browser can be a snap stub that does not)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path and subprocess.run([path, "--version"], capture_output=True, timeout=60).returncode == 0:
            return path
    return None


CHROMIUM = _working_chromium()
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None

if CHROMIUM is None or sync_playwright is None:
    pytest.skip(
        "browser tests need Chromium and Playwright: apt-get install chromium, pip install playwright "
        "(.ci/run installs the browser)",
        allow_module_level=True,
    )

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "img" / "web-compare.png"
#: Chromium flags for a closed network: no background connections, no component updates.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
WAIT_MS = 180_000


@pytest.fixture(scope="module")
def web_server(tmp_path_factory):
    """The bundled store at q2 and q4, images up to 500,000 pixels (a Kodak photo is 393,216)."""
    srv = Server(
        DEFAULT_STORE, tmp_path_factory.mktemp("web") / "serve.log", "--qualities", "2,4", "--max-pixels", "500000"
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, web_server):
    """A fresh page on the service that records every request it makes (loopback only)."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.requested = []
    pg.on("request", lambda r: pg.requested.append(r.url))
    pg.goto(web_server.url + "/")
    pg.wait_for_selector("#status.ready", timeout=WAIT_MS)
    yield pg
    context.close()
    foreign = [u for u in pg.requested if not u.startswith((web_server.url, "data:", "blob:"))]
    assert not foreign, foreign


def _rows(page) -> dict[str, int]:
    return {
        tr.get_attribute("data-codec"): int(tr.get_attribute("data-bytes"))
        for tr in page.query_selector_all("#stats tbody tr")
    }


def _download_size(page, selector: str) -> int:
    return page.evaluate(
        "async (sel) => (await (await fetch(document.querySelector(sel).href)).arrayBuffer()).byteLength", selector
    )


def test_compare_a_kodak_photo(page, web_server, kodak_dir, tmp_path):
    """Upload through the file input: the size shown is the blob's, the classics are at its
    size within 3 %, the decoded image has the photo's size, the wipe slider moves the view,
    and the .tcm offered for download decodes back through the page."""
    photo = kodak_dir / "kodim23.png"
    page.select_option("#quality", "4")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#viewer:not([hidden])", timeout=WAIT_MS)
    page.wait_for_function("document.getElementById('img-right').naturalWidth > 0")

    rows = _rows(page)
    blob_size = _download_size(page, "#download-tcm")
    assert rows["tcm"] == blob_size
    api_blob = httpx.post(web_server.url + "/compress?quality=4", content=photo.read_bytes(), timeout=120).content
    assert len(api_blob) == blob_size  # the same blob the API makes
    for name in ("jpeg420", "webp"):
        assert abs(rows[name] - blob_size) <= 0.03 * blob_size, (name, rows)
    assert page.inner_text("#stats tbody tr.tcm td:nth-child(2)") == f"{blob_size:,} B"
    size = page.evaluate(
        "[document.getElementById('img-right').naturalWidth, document.getElementById('img-right').naturalHeight]"
    )
    assert size == [768, 512]

    # the wipe slider moves the boundary between the two images
    def divider_x() -> float:
        return page.eval_on_selector("#divider", "d => d.getBoundingClientRect().left")

    frame = page.eval_on_selector("#frame", "f => { const r = f.getBoundingClientRect(); return [r.left, r.width]; }")
    for value in (20, 80):
        page.fill("#wipe", str(value))
        page.dispatch_event("#wipe", "input")
        assert abs(divider_x() - (frame[0] + frame[1] * value / 100)) < 3
        assert f"{value}%" in page.eval_on_selector("#img-right", "i => i.style.clipPath")
    page.fill("#wipe", "50")
    page.dispatch_event("#wipe", "input")

    # the other codecs in the same view; 100% zoom pans both images together
    page.select_option("#right", "jpeg420")
    assert page.inner_text("#tag-right") == "JPEG 4:2:0"
    page.select_option("#right", "tcm")
    page.click("#actual")
    assert page.eval_on_selector("#img-left", "i => i.getBoundingClientRect().width") == pytest.approx(768, abs=1)
    page.eval_on_selector("#frame", "f => { f.scrollLeft = 200; }")
    lefts = page.evaluate(
        "['img-left', 'img-right'].map(id => document.getElementById(id).getBoundingClientRect().left)"
    )
    assert lefts[0] == lefts[1]
    page.click("#fit")
    page.screenshot(path=str(tmp_path / "web-compare.png"), full_page=True)
    if os.environ.get("TCM_UPDATE_SCREENSHOTS"):
        shutil.copyfile(tmp_path / "web-compare.png", SCREENSHOT)

    # the .tcm round trip: download it, drop it back in
    with page.expect_download() as info:
        page.click("#download-tcm")
    tcm_path = tmp_path / "kodim23.tcm"
    info.value.save_as(tcm_path)
    assert tcm_path.stat().st_size == blob_size
    page.set_input_files("#file", str(tcm_path))
    page.wait_for_function("document.getElementById('result-title').textContent.startsWith('Decoded')", timeout=WAIT_MS)
    page.wait_for_function("document.getElementById('img-left').naturalWidth === 768")
    assert page.evaluate("document.getElementById('img-left').naturalHeight") == 512
    assert _download_size(page, "#download-png") > 0 and not page.is_visible("#error")


def test_compare_with_encoder_effort(page, web_server, kodak_dir, tmp_path):
    """The effort control offers 0 up to the service's limit (TCM_MAX_EFFORT, 1 by default), the
    comparison says which effort made it, and its .tcm is the one the API makes at that effort
    (the search is repeatable), which differs from effort 0's and decodes through the page."""
    from PIL import Image

    assert page.is_visible("#effort")
    assert page.eval_on_selector("#effort", "s => [...s.options].map(o => o.value)") == ["0", "1"]
    crop = tmp_path / "kodim23-crop.png"
    Image.open(kodak_dir / "kodim23.png").convert("RGB").crop((220, 120, 476, 376)).save(crop)
    page.select_option("#quality", "2")
    page.select_option("#effort", "1")
    page.set_input_files("#file", str(crop))
    page.wait_for_function(
        "document.getElementById('result-title').textContent.includes('quality 2, effort 1:')", timeout=WAIT_MS
    )
    blob_size = _download_size(page, "#download-tcm")
    url = web_server.url + "/compress?quality=2"
    searched = httpx.post(url + "&effort=1", content=crop.read_bytes(), timeout=120)
    assert searched.headers["X-TCM-Effort"] == "1" and len(searched.content) == blob_size
    plain = httpx.post(url, content=crop.read_bytes(), timeout=120).content
    assert plain != searched.content
    tcm_path = tmp_path / "crop.tcm"
    tcm_path.write_bytes(searched.content)
    page.set_input_files("#file", str(tcm_path))
    page.wait_for_function("document.getElementById('result-title').textContent.startsWith('Decoded')", timeout=WAIT_MS)


def test_errors_show_the_apis_message(page, web_server, tmp_path):
    """A bad file and a too-large image show the API's one-line message; the page still works."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])", timeout=WAIT_MS)
    expected = httpx.post(web_server.url + "/compare", content=bad.read_bytes(), timeout=60).json()["detail"]
    assert page.inner_text("#error") == expected

    big = tmp_path / "big.png"
    from helpers import make_png

    big.write_bytes(make_png(800, 1000))  # 800,000 pixels, over the server's 500,000
    page.set_input_files("#file", str(big))
    page.wait_for_function("document.getElementById('error').textContent.includes('over the limit')", timeout=WAIT_MS)

    broken = tmp_path / "broken.tcm"
    broken.write_bytes(b"\x89TCM\x02" + bytes(40))
    page.set_input_files("#file", str(broken))
    page.wait_for_function("document.getElementById('error').textContent.includes('truncated')", timeout=WAIT_MS)


def test_a_busy_or_starting_service_is_shown_not_broken(page):
    """A full queue (429) and a service that is not ready (503) show the API's message."""
    page.route(
        "**/compare*",
        lambda route: route.fulfill(
            status=429,
            content_type="application/json",
            headers={"Retry-After": "3"},
            body=json.dumps({"error": "queue_full", "detail": "queue full (8 waiting): retry in 3 s"}),
        ),
    )
    page.set_input_files("#file", files=[{"name": "a.png", "mimeType": "image/png", "buffer": b"\x89PNG"}])
    page.wait_for_function("document.getElementById('error').textContent === 'queue full (8 waiting): retry in 3 s'")
    page.route(
        "**/readyz",
        lambda route: route.fulfill(
            status=503,
            content_type="application/json",
            body=json.dumps({"error": "not_ready", "detail": "warming model q4 on cpu (1/2 models ready)"}),
        ),
    )
    page.reload()
    page.wait_for_selector("#status.down", timeout=WAIT_MS)
    assert page.inner_text("#status") == "warming model q4 on cpu (1/2 models ready)"
    assert page.is_enabled("#file")


def test_reads_well_on_a_phone(browser, web_server, kodak_dir):
    """Nothing wider than a phone's screen, with a comparison and with an error showing (the
    table scrolls inside its panel)."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    pg = context.new_page()
    pg.goto(web_server.url + "/")
    pg.wait_for_selector("#status.ready", timeout=WAIT_MS)
    fits = "document.documentElement.scrollWidth <= window.innerWidth"
    assert pg.evaluate(fits)
    assert pg.is_visible("#drop") and pg.is_visible("#quality")
    pg.set_input_files("#file", str(kodak_dir / "kodim05.png"))
    pg.wait_for_selector("#viewer:not([hidden])", timeout=WAIT_MS)
    assert pg.evaluate(fits)
    assert pg.eval_on_selector("#img-left", "i => i.getBoundingClientRect().width") <= 390
    pg.set_input_files("#file", files=[{"name": "x.png", "mimeType": "image/png", "buffer": b"not an image"}])
    pg.wait_for_selector("#error:not([hidden])", timeout=WAIT_MS)
    assert pg.evaluate(fits)
    context.close()


def test_api_docs_work_offline(page, web_server):
    """/docs renders from assets the service serves itself (no CDN: the fixture checks every
    request the page made)."""
    page.goto(web_server.url + "/docs")
    page.wait_for_selector(".swagger-ui .info", timeout=WAIT_MS)
    assert "/compare" in page.inner_text(".swagger-ui")


def test_a_service_with_api_keys_asks_for_one(browser, tmp_path_factory, kodak_dir):
    """With keys on, the page asks for one (the API's 401), then works with it. (This service
    takes no encoder effort: the page offers none.)"""
    key = "k" * 24 + "-page-test"
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(key + "\n")
    srv = Server(
        DEFAULT_STORE,
        tmp_path_factory.mktemp("web-keys") / "serve.log",
        "--qualities",
        "2",
        "--api-keys-file",
        str(keys),
        "--max-effort",
        "0",
    )
    try:
        srv.wait_ready()
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        pg = context.new_page()
        pg.goto(srv.url + "/")
        pg.wait_for_selector("#auth:not([hidden])", timeout=WAIT_MS)
        assert "API key" in pg.inner_text("#error")
        pg.fill("#api-key", "not-the-key-but-long-enough")
        pg.click("#auth button")
        pg.wait_for_function("document.getElementById('error').textContent.includes('not valid')", timeout=WAIT_MS)
        pg.fill("#api-key", key)
        pg.click("#auth button")
        pg.wait_for_function("document.getElementById('quality').options.length === 1", timeout=WAIT_MS)
        assert not pg.is_visible("#effort") and not pg.is_visible("#effort-label")  # this service takes no effort
        pg.set_input_files("#file", str(kodak_dir / "kodim05.png"))
        pg.wait_for_selector("#viewer:not([hidden])", timeout=WAIT_MS)
        assert not pg.is_visible("#error") and not pg.is_visible("#auth")
        context.close()
    finally:
        srv.stop()
