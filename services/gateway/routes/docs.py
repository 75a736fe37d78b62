"""`GET /docs` (and `/schema`): the interactive API reference, Swagger UI over the gateway's own OpenAPI document.

The design decision: every byte the page loads comes from the gateway itself. Swagger UI is a pinned copy of
`swagger-ui-dist` shipped in `services/gateway/static/swagger-ui/` with its licence (Litestar's render plugins
load their UI from a CDN at a floating version), the start-up script is a file rather than inline, and the page
carries a Content-Security-Policy that allows only the gateway's origin, so it renders with no internet and cannot
be made to load anything from elsewhere.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Annotated, Any, Final

from litestar import MediaType, Request, Response, Router, get
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.params import PathParameter

from services.gateway.assets import STATIC_DIR, asset_response

ASSETS_PATH: Final = "/docs/assets"

# The only files served under ASSETS_PATH: name → (file, content type). A fixed table, so nothing else in the
# package can be reached through this route, whatever the path says.
ASSETS: Final[dict[str, tuple[Path, str]]] = {
    "swagger-ui-bundle.js": (STATIC_DIR / "swagger-ui" / "swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "swagger-ui.css": (STATIC_DIR / "swagger-ui" / "swagger-ui.css", "text/css; charset=utf-8"),
    "favicon-32x32.png": (STATIC_DIR / "swagger-ui" / "favicon-32x32.png", "image/png"),
    "reference.js": (STATIC_DIR / "reference.js", "text/javascript; charset=utf-8"),
    "LICENSE": (STATIC_DIR / "swagger-ui" / "LICENSE", "text/plain; charset=utf-8"),
}

# `data:` images are the stylesheet's own inline icons (no request is made for them); everything else, scripts,
# styles, fonts and the document fetch included, must come from the gateway's origin.
# The page carries it in a <meta> element too, so it holds wherever the page is served from.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'"
)
# Browsers honour frame-ancestors only in the header.
CONTENT_SECURITY_POLICY_HEADER: Final = f"{CONTENT_SECURITY_POLICY}; frame-ancestors 'none'"
PAGE_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY_HEADER,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>Caseflow API reference</title>
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/reference.js"></script>
</body>
</html>
"""


def reference_page(request: Request[Any, Any, Any]) -> bytes:
    """The page, pointing at the app's OpenAPI JSON route (wherever the app's OpenAPIConfig put it)."""
    openapi_url = OpenAPIRenderPlugin.get_openapi_json_route(request)
    return _PAGE.format(
        csp=CONTENT_SECURITY_POLICY, assets=ASSETS_PATH, openapi_url=html.escape(openapi_url, quote=True)
    ).encode()


@get("/docs", include_in_schema=False, media_type=MediaType.HTML, sync_to_thread=False)
def api_docs(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(reference_page(request), media_type=MediaType.HTML, headers=PAGE_HEADERS)


@get(f"{ASSETS_PATH}/{{name:str}}", include_in_schema=False, sync_to_thread=False)
def docs_asset(name: Annotated[str, PathParameter(max_length=64)]) -> Response[bytes]:
    return asset_response(ASSETS, name)


class ReferenceRenderPlugin(OpenAPIRenderPlugin):
    """Litestar's `/schema` page: the same reference as `/docs` (Litestar's own plugins would load a CDN)."""

    def __init__(self) -> None:
        super().__init__(path="/", favicon="", style="")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return reference_page(request)


async def _with_page_headers(response: Response[Any]) -> Response[Any]:
    response.headers.update(PAGE_HEADERS)
    return response


def schema_router(path: str) -> Router:
    """The router Litestar mounts its OpenAPI routes on, so `/schema` sends the page's headers too."""
    return Router(
        path, route_handlers=[], include_in_schema=False, dto=None, return_dto=None, after_request=_with_page_headers
    )
