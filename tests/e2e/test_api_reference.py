"""`/docs` and `/schema` over HTTP: only same-origin assets, each served by the gateway with its content type, and a
Content-Security-Policy that allows nothing but the gateway's origin. (tests/browser renders the page for real.)"""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from services.gateway.routes.docs import CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY_HEADER

EXPECTED_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class AssetReferences(HTMLParser):
    """Every URL the page would load by itself: scripts, stylesheets, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in ("src", "href", "data"):
            value = attributes.get(name)
            if value and (tag != "a" or name != "href"):
                self.urls.append(value)


def asset_urls(page: str) -> list[str]:
    parser = AssetReferences()
    parser.feed(page)
    return parser.urls


def policy_directives(policy: str) -> dict[str, list[str]]:
    directives = (part.split() for part in policy.split(";") if part.strip())
    return {name: sources for name, *sources in directives}


@pytest.mark.parametrize("path", ["/docs", "/schema"])
async def test_the_reference_page_loads_only_same_origin_assets_that_all_answer(
    api: httpx.AsyncClient, path: str
) -> None:
    page = await api.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-request-id"]

    urls = asset_urls(page.text)
    assert len(urls) >= 3, urls  # the stylesheet, Swagger UI and the start-up script at least
    for url in urls:
        absolute = urljoin(str(api.base_url) + path, url)
        assert urlsplit(absolute).netloc == urlsplit(str(api.base_url)).netloc, f"{url} leaves the gateway's origin"
        asset = await api.get(absolute)
        assert asset.status_code == 200, url
        suffix = "." + url.rsplit(".", 1)[-1]
        assert asset.headers["content-type"].startswith(EXPECTED_TYPES[suffix]), (url, asset.headers)
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert len(asset.content) > 0
    assert "cdn" not in page.text.lower()
    assert "@latest" not in page.text


@pytest.mark.parametrize("path", ["/docs", "/schema"])
async def test_the_reference_page_allows_only_its_own_origin(api: httpx.AsyncClient, path: str) -> None:
    page = await api.get(path)
    policy = page.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY_HEADER
    directives = policy_directives(policy)
    assert directives["default-src"] == ["'self'"]
    for fetch in ("script-src", "style-src", "font-src", "connect-src"):
        assert directives[fetch] == ["'self'"], fetch
    # Images: the origin, plus the stylesheet's inline data: icons (never a request to anywhere).
    assert directives["img-src"] == ["'self'", "data:"]
    assert directives["object-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert f'content="{CONTENT_SECURITY_POLICY}"' in page.text  # the page carries it wherever it is served


async def test_the_start_up_script_reads_the_gateways_own_document_and_skips_the_remote_validator(
    api: httpx.AsyncClient,
) -> None:
    page = (await api.get("/docs")).text
    assert 'data-openapi-url="/schema/openapi.json"' in page
    document = await api.get("/schema/openapi.json")
    assert document.status_code == 200
    assert "/cases/{case_id}/input" in document.json()["paths"]
    script = (await api.get("/docs/assets/reference.js")).text
    assert "validatorUrl: null" in script


@pytest.mark.parametrize("name", ["index.html", "..%2Fswagger-ui%2FREADME.md", "README.md", "swagger-ui.css.map"])
async def test_only_the_listed_assets_are_served(api: httpx.AsyncClient, name: str) -> None:
    response = await api.get(f"/docs/assets/{name}")
    assert response.status_code == 404
    assert response.json()["ok"] is False
