"""/console in a real browser against the running stack: sign in, watch an `ask` case created through the API
reach INPUT_NEEDED without a reload (its status timeline growing), answer it in the form, watch it complete with
its transcript, redeliver a webhook, sign out; a counterparty reply carrying `<script>` and a `javascript:` link
does nothing; another client's case is the API's 403. Saves the screenshots the README shows
(docs/img/console-cases.png, console-case.png)."""

from __future__ import annotations

import re
import uuid
from typing import Any, Final

import httpx
from playwright.async_api import Page, expect

from deploy.processes import Stack
from simulator.cases import case_body
from tests.browser.conftest import SCREENSHOTS, BrowserPage
from tests.support.api import headers, new_client
from tests.support.receivers import Receiver
from tests.support.simulator import eventually

# Scripted counterparties of the simulator: `ask` asks a question, `silent` never answers.
ASKING: Final = "ask.someone@sim.example"
HOSTILE: Final = '<script>window.pwned = 1</script> Please use <a href="javascript:window.pwned=2">this form</a>'
LIVE_TIMEOUT_MS: Final = 45_000


async def sign_in(page: Page, api_key: str) -> None:
    await page.goto("/console/sign-in")
    await page.fill("#api_key", api_key)
    await page.click("#sign-in")
    await page.wait_for_url("**/console/cases")


async def create_case(stack: Stack, api_key: str, **overrides: Any) -> str:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as api:
        created = await api.post("/cases", json=case_body(**overrides), headers=headers(api_key))
    assert created.status_code == 201, created.text
    case_id: str = created.json()["data"]["caseId"]
    return case_id


async def test_an_ask_case_from_sign_in_to_completion_and_sign_out(browser_page: BrowserPage, stack: Stack) -> None:
    page = browser_page.page
    client = new_client(stack)
    await sign_in(page, client["apiKey"])
    (session,) = [cookie for cookie in await page.context.cookies() if cookie["name"] == "caseflow_console"]
    assert (session["httpOnly"], session["sameSite"], session["path"]) == (True, "Strict", "/console")
    assert client["apiKey"] not in session["value"]
    assert await page.evaluate("document.cookie") == ""  # no script can read the session

    # Neighbours for the list's screenshot: one that completes on its own, one nobody answers.
    for neighbour in ("agree", "silent"):
        address = f"{neighbour}.{uuid.uuid4().hex[:6]}@sim.example"
        await create_case(stack, client["apiKey"], counterparty={"address": address, "name": "Jordan Lee"})
    with Receiver() as hook:
        case_id = await create_case(
            stack,
            client["apiKey"],
            counterparty={"address": ASKING, "name": "Sam Vendor"},
            clientWebhookUrl=hook.url(),
        )
        # The list picks the new case up by itself (htmx polling), no reload.
        row = page.locator(f'tr[data-case-id="{case_id}"]')
        await expect(row).to_be_visible(timeout=LIVE_TIMEOUT_MS)
        await row.get_by_role("link").click()
        await page.wait_for_url(f"**/console/cases/{case_id}")

        await expect(page.locator("#case-status")).to_have_text("INPUT_NEEDED", timeout=LIVE_TIMEOUT_MS)
        await expect(page.locator("#input-question")).to_contain_text("PDF")
        # The timeline grows with the live fragment, one entry per status the case has been in.
        timeline = page.locator("#status-timeline li[data-status] .status")
        await expect(timeline).to_have_text(["CREATED", "RUNNING", "INPUT_NEEDED"])
        await expect(page.locator(".delivery").first).to_be_visible(timeout=LIVE_TIMEOUT_MS)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=SCREENSHOTS / "console-case.png", full_page=True)

        await page.fill("#provided_context", "Yes, an electronically signed PDF is fine.")
        await page.click("#send-answer")
        await page.wait_for_url(f"**/console/cases/{case_id}")
        await expect(page.locator("#case-status")).to_have_text("COMPLETED", timeout=LIVE_TIMEOUT_MS)
        await expect(page.locator("#result-status")).to_have_text("goal_achieved")
        await expect(timeline).to_have_text(["CREATED", "RUNNING", "INPUT_NEEDED", "RUNNING", "COMPLETED"])
        await expect(page.locator("#status-timeline .cause").last).to_have_text("reply judged")
        await expect(page.locator('.message[data-direction="outbound"]')).to_have_count(2, timeout=LIVE_TIMEOUT_MS)
        await expect(page.locator('.message[data-direction="inbound"]')).to_have_count(2)
        await expect(page.locator(".message.outbound").nth(1)).to_contain_text("electronically signed PDF is fine")
        await expect(page.locator("#case-result")).to_contain_text('"signedW9Received": true')
        await expect(page.locator("#case-result-schema")).to_contain_text("signedW9Received")
        await expect(page.locator("#input-form")).to_have_count(0)

        completed = page.locator(".delivery", has_text="case.completed")
        await expect(completed).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
        await expect(completed.locator(".attempts tbody tr")).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
        event_id = await completed.get_attribute("data-event-id")
        before = [r for r in hook.received if r.headers.get("webhook-id") == event_id]
        await completed.locator("button.redeliver").click()
        await page.wait_for_url(f"**/console/cases/{case_id}")

        async def redelivered() -> int | None:
            again = [r for r in hook.received if r.headers.get("webhook-id") == event_id]
            return len(again) if len(again) > len(before) else None

        await eventually(redelivered, timeout=30, what="the redelivered webhook")
        await expect(page.locator(".delivery", has_text="case.completed").locator(".attempts tbody tr")).to_have_count(
            2, timeout=LIVE_TIMEOUT_MS
        )
        await page.screenshot(path=SCREENSHOTS / "console-case.png", full_page=True)

    await page.goto("/console/cases")
    await expect(page.locator(f'tr[data-case-id="{case_id}"] .status')).to_have_text("COMPLETED")
    await page.screenshot(path=SCREENSHOTS / "console-cases.png")
    assert (SCREENSHOTS / "console-cases.png").stat().st_size > 10_000
    assert (SCREENSHOTS / "console-case.png").stat().st_size > 10_000

    await page.click("#sign-out")
    await page.wait_for_url("**/console/sign-in")
    assert [cookie for cookie in await page.context.cookies() if cookie["name"] == "caseflow_console"] == []
    await page.goto(f"/console/cases/{case_id}")
    assert page.url.endswith("/console/sign-in")

    assert browser_page.foreign_requests == []
    assert browser_page.console_errors == []  # a CSP violation would be logged here
    assert browser_page.page_errors == []


async def test_a_hostile_reply_does_nothing_and_another_clients_case_is_forbidden(
    browser_page: BrowserPage, stack: Stack
) -> None:
    page = browser_page.page
    owner = new_client(stack)
    address = f"silent.{uuid.uuid4().hex[:8]}@sim.example"
    case_id = await create_case(stack, owner["apiKey"], counterparty={"address": address, "name": "Sam Vendor"})
    async with httpx.AsyncClient(base_url=f"{stack.simulator.url}/_sim", timeout=10) as sim:

        async def first_email() -> dict[str, Any] | None:
            messages: list[dict[str, Any]] = (await sim.get("/outbox", params={"to": address})).json()["messages"]
            return messages[0] if messages else None

        sent = await eventually(first_email, what="the first email")
        injected = await sim.post(
            "/inbound",
            json={"from": address, "subject": HOSTILE, "text": HOSTILE, "thread_id": sent["thread_id"]},
        )
        assert injected.status_code == 200, injected.text

    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await sign_in(page, owner["apiKey"])
    await page.goto(f"/console/cases/{case_id}")
    inbound = page.locator('.message[data-direction="inbound"] .message-text')
    await expect(inbound).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
    await expect(inbound).to_contain_text("<script>window.pwned = 1</script>")
    assert await page.locator('a[href^="javascript:"]').count() == 0
    await page.get_by_text("this form").first.click()
    assert await page.evaluate("window.pwned === undefined")
    assert dialogs == []

    intruder = new_client(stack)
    await page.click("#sign-out")
    await sign_in(page, intruder["apiKey"])
    response = await page.goto(f"/console/cases/{case_id}")
    assert response is not None
    assert response.status == 403
    await expect(page.locator("h1")).to_have_text("403 FORBIDDEN")
    await expect(page.locator("#error-message")).to_have_text("You are not allowed to access this resource.")
    assert address not in await page.content()
    assert not re.search(r"Traceback|sim\.example", await page.content())

    assert browser_page.foreign_requests == []
    # Chromium logs the 403 document itself; nothing else (no CSP violation, no script error) may appear.
    assert browser_page.console_errors == [
        "Failed to load resource: the server responded with a status of 403 (Forbidden)"
    ]
    assert browser_page.page_errors == []
