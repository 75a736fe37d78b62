"""The browser harness: the running test stack (tests/support) and a headless Chromium page pointed at its gateway.

Chromium is Debian's (`/usr/bin/chromium`, or `CHROMIUM_PATH`), driven by Playwright for Python; Playwright's own
browser download is never used. The design decision: every page records each request it makes and aborts any that
would leave the gateway's origin, so a test can assert the UI is self-contained, and a machine without internet
behaves exactly like one with it. `make test-browser` installs what this needs; `make test` leaves this folder out.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Route, ViewportSize, async_playwright
from playwright.async_api import Request as BrowserRequest

from deploy.processes import ROOT, NatsServer, Stack

CHROMIUM: Final = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
# Headless, and nothing of Chromium's own that would phone home (updates, sync, safe browsing lists, first-run).
CHROMIUM_ARGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT: Final = ViewportSize(width=1280, height=900)
SCREENSHOTS: Final = ROOT / "docs" / "img"


@dataclass
class BrowserPage:
    """A page on the gateway, and what it did: every request, those refused for leaving the origin, errors."""

    page: Page
    origin: str
    requests: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.origin + path


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def leaves(url: str, origin: str) -> bool:
    """Whether loading `url` is a request to somewhere other than `origin` (`data:` and `blob:` are local)."""
    return urlsplit(url).scheme not in ("data", "blob", "about") and origin_of(url) != origin


@pytest.fixture(scope="session")
def stack(nats_server: NatsServer, mongo_url: str, log_dir: Path) -> Iterator[Stack]:
    """The six services as real processes, as in tests/e2e, on a database of their own."""
    running = Stack(
        log_dir=log_dir,
        nats=nats_server,
        mongo_url=mongo_url,
        env={"MONGO_DB": "caseflow_browser", "WEBHOOK_ALLOW_PRIVATE": "true", "FOLLOW_UP_HOUR_SECONDS": "0.5"},
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make test-browser` installs Debian's chromium"
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def browser_page(browser: Browser, stack: Stack) -> AsyncIterator[BrowserPage]:
    origin = origin_of(stack.gateway_url)
    context = await browser.new_context(viewport=VIEWPORT, base_url=origin, service_workers="block")
    page = await context.new_page()
    recorded = BrowserPage(page=page, origin=origin)

    async def keep_to_the_origin(route: Route) -> None:
        if not leaves(route.request.url, origin):
            await route.continue_()
        else:
            recorded.foreign_requests.append(route.request.url)
            await route.abort("blockedbyclient")

    def on_request(request: BrowserRequest) -> None:
        recorded.requests.append(request.url)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            recorded.console_errors.append(message.text)

    def on_page_error(error: Exception) -> None:
        recorded.page_errors.append(str(error))

    await context.route("**/*", keep_to_the_origin)
    page.on("request", on_request)
    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    yield recorded
    await context.close()
