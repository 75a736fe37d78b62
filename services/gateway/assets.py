"""Vendored static files (Swagger UI, htmx, the console's stylesheet) served from a fixed table per route.

Design decision: a route serves only the names in its table (name → file, content type), never a path taken from
the request, so nothing else in the package can be reached whatever the URL says; each file is read once.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from litestar import Response
from litestar.exceptions import NotFoundException

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"

type AssetTable = Mapping[str, tuple[Path, str]]


def asset_response(assets: AssetTable, name: str) -> Response[bytes]:
    """The named asset of `assets`, cacheable for an hour; 404 for any other name."""
    asset = assets.get(name)
    if asset is None:
        raise NotFoundException()
    path, content_type = asset
    return Response(
        _read(path),
        media_type=content_type,
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=3600"},
    )


@functools.cache
def _read(path: Path) -> bytes:
    return path.read_bytes()
