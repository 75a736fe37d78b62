"""`/docs` in a real browser against the running stack: every operation is rendered, nothing is loaded from
anywhere but the gateway, the page neither logs an error nor trips its Content-Security-Policy (which does stop a
foreign or inline script), and "Try it out" reaches the live gateway. Saves the screenshot the README shows
(docs/img/api-reference.png)."""

from __future__ import annotations

from typing import Final

import httpx

from deploy.processes import Stack
from tests.browser.conftest import SCREENSHOTS, BrowserPage, leaves

OPERATIONS_SELECTOR: Final = "#swagger-ui .opblock"
# The operations a client needs first; every other operation in the document must be rendered too.
CORE_OPERATIONS: Final = {
    ("POST", "/cases"),
    ("GET", "/cases"),
    ("GET", "/cases/{case_id}"),
    ("POST", "/cases/{case_id}/input"),
    ("POST", "/cases/{case_id}/cancel"),
    ("GET", "/cases/{case_id}/attachments/{attachment_id}"),
}


def documented_operations(stack: Stack) -> set[tuple[str, str]]:
    document = httpx.get(f"{stack.gateway_url}/schema/openapi.json", timeout=10).json()
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


async def rendered_operations(browser_page: BrowserPage) -> set[tuple[str, str]]:
    page = browser_page.page
    await page.goto("/docs")
    await page.wait_for_selector(OPERATIONS_SELECTOR, timeout=30_000)
    pairs = await page.eval_on_selector_all(
        OPERATIONS_SELECTOR,
        """blocks => blocks.map(block => [
            block.querySelector('.opblock-summary-method').textContent.trim(),
            block.querySelector('.opblock-summary-path').getAttribute('data-path'),
        ])""",
    )
    return {(method, path) for method, path in pairs}


async def test_docs_renders_every_operation_from_the_gateway_alone(browser_page: BrowserPage, stack: Stack) -> None:
    rendered = await rendered_operations(browser_page)

    assert rendered >= CORE_OPERATIONS
    assert rendered == documented_operations(stack)
    assert await browser_page.page.title() == "Caseflow API reference"
    assert await browser_page.page.locator(".info .title").first.inner_text() != ""
    assert browser_page.url("/docs/assets/swagger-ui-bundle.js") in browser_page.requests
    assert browser_page.url("/schema/openapi.json") in browser_page.requests
    assert browser_page.foreign_requests == []
    assert [url for url in browser_page.requests if leaves(url, browser_page.origin)] == []
    assert browser_page.console_errors == []  # a CSP violation would be logged here
    assert browser_page.page_errors == []

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await browser_page.page.screenshot(path=SCREENSHOTS / "api-reference.png")
    assert (SCREENSHOTS / "api-reference.png").stat().st_size > 10_000


async def test_the_policy_stops_a_script_from_another_origin(browser_page: BrowserPage) -> None:
    page = browser_page.page
    await page.goto("/docs")
    await page.wait_for_selector(OPERATIONS_SELECTOR, timeout=30_000)
    blocked = await page.evaluate(
        """() => new Promise(resolve => {
            document.addEventListener('securitypolicyviolation', event => resolve(event.violatedDirective));
            const script = document.createElement('script');
            script.src = 'https://cdn.example.invalid/scalar.js';
            document.body.appendChild(script);
            const inline = document.createElement('script');
            inline.textContent = 'window.inlineRan = true';
            document.body.appendChild(inline);
        })"""
    )
    assert blocked.startswith("script-src")
    assert await page.evaluate("window.inlineRan === undefined")
    assert browser_page.foreign_requests == []  # refused by the page itself, before any request


async def test_try_it_out_calls_the_live_gateway_from_the_page(browser_page: BrowserPage) -> None:
    page = browser_page.page
    await page.goto("/docs")
    operation = page.locator(".opblock-get", has=page.locator('.opblock-summary-path[data-path="/healthz"]'))
    await operation.locator(".opblock-summary").click()
    await operation.get_by_role("button", name="Try it out").click()
    async with page.expect_response(browser_page.url("/healthz")) as answered:
        await operation.get_by_role("button", name="Execute").click()
    response = await answered.value
    assert response.status == 200
    assert await response.json() == {"ok": True, "data": {"status": "up"}}
    # The page shows what the gateway answered, request id included.
    await operation.locator(".live-responses-table .response-col_status", has_text="200").wait_for()
    assert "x-request-id" in (await operation.locator(".live-responses-table").inner_text()).lower()
    assert browser_page.foreign_requests == []
    assert browser_page.console_errors == []
