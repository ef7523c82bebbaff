"""Interactive API docs served entirely by the service: `/docs` (Swagger UI) and its assets under `/docs/static`.

FastAPI's default page loads Swagger UI from a CDN, which leaves an air-gapped cluster, a laptop offline or a
strict egress policy with a blank page. The assets come instead from the pinned PyPI package
`swagger-ui-bundle-v2` (Swagger UI 5, which renders the OpenAPI 3.1 documents FastAPI writes; the older
`swagger-ui-bundle` ships 4.x, which cannot), mounted read-only, so the page makes no request off the host and
its Content-Security-Policy can say `'self'` only. ReDoc is not offered: one UI with "Try it out" is enough.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_URL = "/docs"
STATIC_URL = "/docs/static"
# The files the page loads; every one is under STATIC_URL (tests assert nothing else is referenced).
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")


def install_docs(app: FastAPI, openapi_url: str) -> None:
    """Serve the Swagger UI page at /docs with its assets from the installed package."""
    app.mount(STATIC_URL, StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/favicon-32x32.png",
            # Keep the key entered under "Authorize" across reloads of the page (in the browser's storage).
            swagger_ui_parameters={"persistAuthorization": True, "tryItOutEnabled": True},
        )
