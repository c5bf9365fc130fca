"""Hostile input (issue 7): fuzzing the .tcm decoder, awkward and mutated images through
tcm_serve.imageio and the API, and schemathesis against the service's own OpenAPI schema.

The default run executes fixed-seed slices (derandomized hypothesis, the same cases every
run); the slow tests and benchmarks/fuzz.py run the large counts reported in
docs/reliability.md. The harness and its oracle live in tests/fuzzing.py.
"""

from __future__ import annotations

import io
import os

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from PIL import Image

from tcm_serve.api import create_app
from tcm_serve.codec.container import unpack
from tcm_serve.config import load_settings
from tcm_serve.errors import ImageError, ImageTooLargeError, UnsupportedImageFormatError

from fuzzing import (
    ODD_MAX_PIXELS,
    OddImage,
    check_odd_image,
    image_cases,
    make_context,
    odd_images,
    run_image_fuzz,
    run_tcm_fuzz,
)
from helpers import KIT_QUALITY

ODD = odd_images()
#: Resident memory a fuzz run may add at its peak (the decoder allocates per case; a leak
#: or an unbounded allocation from a declared size would blow through this).
RSS_BUDGET_MB = 1024


# -- .tcm parser + decoder ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_ctx(kit_store):
    return make_context(kit_store, KIT_QUALITY)


def _check_report(report, cases: int) -> None:
    assert report.cases >= cases
    assert report.peak_rss_mb - report.rss_start_mb < RSS_BUDGET_MB, report.summary()


def test_tcm_fuzz_fixed_seed_slice(fuzz_ctx):
    """60 derandomized cases (every mutation kind): clean TcmError or a correct decode."""
    report = run_tcm_fuzz(fuzz_ctx, 60, seed=None)
    _check_report(report, 60)
    assert "decoded" in report.outcomes  # the oracle's positive side ran too
    assert {"malformed_blob", "corrupt_bitstream"} <= set(report.outcomes), report.summary()


def _refactored(blob: bytes, zh: int, zw: int) -> bytes:
    """The blob with its z_shape replaced by another of the same area (so the z stream
    still decodes exactly) and a CRC-valid header: every container rule holds."""
    from fuzzing import _set_field, fix_crc

    body = bytearray(blob[:-4])
    for name, value in (
        ("zH", zh),
        ("zW", zw),
        ("width", 64 * zw),
        ("height", 64 * zh),
        ("pad_left", 0),
        ("pad_right", 0),
        ("pad_top", 0),
        ("pad_bottom", 0),
    ):
        _set_field(body, name, value)
    return fix_crc(bytes(body))


#: Found by the long fuzz run: these crashed the networks (ValueError from the window
#: attention), i.e. a 500 in the service and a traceback in the CLI.
REFACTORED_SHAPES = [(1, 16), (2, 8), (8, 2), (16, 1)]


@pytest.mark.parametrize("shape", REFACTORED_SHAPES)
def test_header_geometry_the_networks_cannot_run_is_a_clean_error(fuzz_ctx, shape):
    from tcm_serve.errors import FormatError

    base = fuzz_ctx.bases[0]
    assert base.file.header.z_shape == (4, 4)
    with pytest.raises(FormatError, match="not one this codec produces"):
        fuzz_ctx.decode(_refactored(base.blob, *shape))


@pytest.mark.slow
def test_tcm_fuzz_long(fuzz_ctx):
    """The bounded long run (TCM_FUZZ_CASES, default 10,000; about 30-60 min on 2 busy cores)."""
    cases = int(os.environ.get("TCM_FUZZ_CASES", "10000"))
    report = run_tcm_fuzz(fuzz_ctx, cases, seed=int(os.environ.get("TCM_FUZZ_SEED", "1")))
    print(report.summary())
    _check_report(report, cases)


# -- images through tcm_serve.imageio ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_images_through_imageio(name):
    check_odd_image(ODD[name])


def test_image_fuzz_fixed_seed_slice():
    report = run_image_fuzz(400, seed=None)
    _check_report(report, 400)
    assert {"decoded", "bad_image", "too_large"} <= set(report.outcomes), report.summary()


@pytest.mark.slow
def test_image_fuzz_long():
    cases = int(os.environ.get("TCM_FUZZ_CASES", "10000"))
    report = run_image_fuzz(cases, seed=int(os.environ.get("TCM_FUZZ_SEED", "1")))
    print(report.summary())
    _check_report(report, cases)


# -- images through the API ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(kit_store):
    settings_ = load_settings(
        model_store=str(kit_store),
        devices="cpu",
        max_pixels=ODD_MAX_PIXELS,
        max_body_bytes=2_000_000,
        request_timeout_s=120,
        max_queue=16,
    )
    app = create_app(settings_)
    app.state.pool.start()
    assert app.state.pool.wait_ready(180), app.state.pool.not_ready_reason()
    yield app
    app.state.pool.shutdown(10)


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver", timeout=120)


def _post_all(app, requests: list[tuple[str, bytes, dict]]) -> list[httpx.Response]:
    async def main():
        async with _client(app) as c:
            return [await c.post(url, content=body, params=params) for url, body, params in requests]

    return anyio.run(main)


STATUS_OF = {ImageTooLargeError: 413, UnsupportedImageFormatError: 415, ImageError: 400}


def test_odd_images_through_the_api(app):
    """Every awkward image gets the answer tcm_serve.imageio predicts: 200 with the displayed
    size (EXIF orientation applied) and the right mode, or 400/413/415 with the error code."""
    names = sorted(ODD)
    responses = _post_all(
        app, [("/compress", ODD[n].data, {"drop_alpha": str(ODD[n].drop_alpha).lower()}) for n in names]
    )
    for name, r in zip(names, responses):
        case: OddImage = ODD[name]
        if isinstance(case.expect, type):
            assert r.status_code == STATUS_OF[case.expect], (name, r.status_code, r.text)
            assert r.json()["error"] == case.expect.code, (name, r.text)
            continue
        assert r.status_code == 200, (name, r.text)
        h, w, c = case.expect
        assert (int(r.headers["x-tcm-width"]), int(r.headers["x-tcm-height"])) == (w, h), name
        header = unpack(r.content).header
        assert (header.width, header.height, header.mode) == (w, h, "L" if c == 1 else "RGB"), name
    # two of them back through /decompress: the displayed size and the mode survive
    blobs = {n: r.content for n, r in zip(names, responses) if n in ("exif-orientation-6-jpeg", "16bit-gray-png")}
    for name, r in zip(blobs, _post_all(app, [("/decompress", b, {}) for b in blobs.values()])):
        assert r.status_code == 200, r.text
        img = Image.open(io.BytesIO(r.content))
        h, w, c = ODD[name].expect
        assert img.size == (w, h) and img.mode == ("L" if c == 1 else "RGB"), name


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=image_cases([c.data for c in ODD.values()]))
def test_mutated_images_through_the_api_never_500(app, case):
    kind, data = case
    (r,) = _post_all(app, [("/compress", data, {"drop_alpha": "true"})])
    assert r.status_code in (200, 400, 413, 415), (kind, r.status_code, r.text)
    if r.status_code != 200:
        body = r.json()
        assert set(body) == {"error", "detail"} and "\n" not in body["detail"]


def test_header_geometry_the_networks_cannot_run_is_a_400_through_the_api(app, fuzz_ctx):
    bad = [_refactored(fuzz_ctx.bases[0].blob, *shape) for shape in REFACTORED_SHAPES]
    for r in _post_all(app, [("/decompress", b, {}) for b in bad]):
        assert r.status_code == 400 and r.json()["error"] == "malformed_blob", r.text


# -- schemathesis against the service's own OpenAPI schema ---------------------------------------------------
def _schemathesis_run(app, examples: int) -> dict[str, int]:
    """Positive and negative cases for every operation; every response must match the
    schema (status documented, content type, headers, body) and none may be a 5xx.

    ``positive_data_acceptance`` is left out for the two codec routes only: a
    schema-valid body there is any byte string, and most byte strings are not images or
    .tcm blobs, so a 400 is the right answer (JSON Schema cannot say "a decodable PNG")."""
    import schemathesis
    from hypothesis import given as hgiven
    from hypothesis import settings as hsettings
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    counts: dict[str, int] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        excluded = [positive_data_acceptance] if op.method.upper() == "POST" else []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode == GenerationMode.NEGATIVE and op.method.upper() == "GET":
                continue  # no parameters or bodies to get wrong

            @hsettings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @hgiven(case=op.as_strategy(generation_mode=mode))
            def run(case) -> None:
                response = case.call(timeout=120)
                assert response.status_code < 500, (case.method, case.path, response.status_code, response.text)
                case.validate_response(response, excluded_checks=excluded)
                counts[op.label] = counts.get(op.label, 0) + 1

            run()
    return counts


def test_schemathesis_openapi(app):
    counts = _schemathesis_run(app, examples=6)
    assert set(counts) == {
        "POST /compress",
        "POST /decompress",
        "POST /compare",
        "GET /v1/models",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    }, counts


@pytest.mark.slow
def test_schemathesis_openapi_long(app):
    counts = _schemathesis_run(app, examples=int(os.environ.get("TCM_SCHEMATHESIS_EXAMPLES", "200")))
    print("schemathesis cases per operation:", counts)


def test_not_ready_and_failure_answers_match_the_schema(kit_store, app):
    """The 503s a ready service never gives (probes while loading; codec routes while not
    ready) are documented too: validate them against the same schema."""
    import schemathesis

    schema = schemathesis.openapi.from_dict(app.openapi())
    idle = create_app(load_settings(model_store=str(kit_store), devices="cpu"))  # pool never started

    async def main():
        async with _client(idle) as c:
            return {
                ("/readyz", "GET"): await c.get("/readyz"),
                ("/compress", "POST"): await c.post("/compress", content=b"x"),
                ("/decompress", "POST"): await c.post("/decompress", content=b"x"),
                ("/compare", "POST"): await c.post("/compare", content=b"x"),
                ("/v1/models", "GET"): await c.get("/v1/models"),
            }

    answers = anyio.run(main)
    for (path, method), r in answers.items():
        schema[path][method].validate_response(r)
    assert [r.status_code for r in answers.values()] == [503, 503, 503, 503, 200]


def test_openapi_quality_lists_what_is_served(app):
    spec = app.openapi()
    for route in ("/compress", "/compare"):
        (param,) = [p for p in spec["paths"][route]["post"]["parameters"] if p["name"] == "quality"]
        assert param["schema"]["anyOf"][0]["enum"] == app.state.pool.qualities
