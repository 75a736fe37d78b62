"""`GET /docs`: the interactive API reference (Scalar), rendered from the same OpenAPI document as /schema."""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, get
from litestar.openapi.plugins import ScalarRenderPlugin

_scalar = ScalarRenderPlugin(path="/docs")


@get("/docs", include_in_schema=False, media_type=MediaType.HTML, sync_to_thread=False)
def api_docs(request: Request[Any, Any, Any]) -> Response[bytes]:
    schema = request.app.openapi_schema.to_schema()
    return Response(_scalar.render(request, schema), media_type=MediaType.HTML)
