"""What a browser gets: the web page at ``/`` and the API documentation at ``/docs``.

Both work offline. The page is plain HTML, CSS and JavaScript shipped in the package
(``tcm_serve/api/static``; no build step, no CDN). FastAPI's own ``/docs`` loads Swagger UI
from a CDN and shows a blank page without internet, so the Swagger UI and ReDoc assets are
served from the ``fastapi-offline`` package's static folder instead (Swagger UI 5: it reads
the OpenAPI 3.1 that FastAPI writes, which the older ``swagger-ui-bundle`` package cannot).
ReDoc is not offered: its page fetches a logo from Redocly's CDN whatever the options.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
#: Where the documentation assets are mounted, and where they come from.
DOCS_ASSETS = "/static/docs"
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"


def install_pages(app: FastAPI) -> None:
    """Mount the static assets and add ``GET /`` and ``GET /docs`` (kept out of the schema)."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
