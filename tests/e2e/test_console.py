"""/console over HTTP against the running stack: the session cookie's flags, sign-in and CSRF refusals, the
API's 403 for another client's case, counterparty text escaped, the status timeline and failure reason, and the
same RPCs as the JSON API behind it."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from markupsafe import escape

from deploy.processes import Stack
from tests.e2e.test_case_lifecycle import Scenario
from tests.support.api import ExtraGateway, admin, new_client
from tests.support.console import csrf_of, sign_in
from tests.support.simulator import eventually

HOSTILE = '<script>window.pwned = 1</script> see <a href="javascript:alert(1)">the form</a>'


@pytest.fixture
async def console(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as browser_like:
        yield browser_like


def set_cookie_headers(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def session_cookie(response: httpx.Response) -> str:
    (cookie,) = [value for value in set_cookie_headers(response) if value.startswith("caseflow_console=")]
    return cookie


async def test_sign_in_sets_a_sealed_httponly_strict_cookie_and_sign_out_clears_it(
    console: httpx.AsyncClient, client: dict[str, Any]
) -> None:
    unsigned = await console.get("/console/cases")
    assert (unsigned.status_code, unsigned.headers["location"]) == (303, "/console/sign-in")

    signed = await sign_in(console, client["apiKey"])
    assert (signed.status_code, signed.headers["location"]) == (303, "/console/cases")
    cookie = session_cookie(signed)
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/console"} <= flags
    assert "secure" not in flags  # plain http, no trusted proxy saying https
    assert client["apiKey"] not in cookie

    page = await console.get("/console/cases")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert '<script src="/console/assets/htmx.min.js"></script>' in page.text

    out = await console.post("/console/sign-out", data={"csrf": csrf_of(page.text)})
    assert (out.status_code, out.headers["location"]) == (303, "/console/sign-in")
    assert "max-age=0" in session_cookie(out).lower()
    after = await console.get("/console/cases")
    assert (after.status_code, after.headers["location"]) == (303, "/console/sign-in")


async def test_a_copy_of_the_cookie_outlives_sign_out_as_documented_and_dies_with_its_key(
    stack: Stack, console: httpx.AsyncClient
) -> None:
    # docs/api.md: sign-out expires the cookie in that browser; the stateless token itself is not revoked, its
    # API key is the kill switch. This pins both halves, so a change to either must change the contract too.
    client = new_client(stack)
    await sign_in(console, client["apiKey"])
    copied = console.cookies["caseflow_console"]
    page = await console.get("/console/cases")
    await console.post("/console/sign-out", data={"csrf": csrf_of(page.text)})
    assert (await console.get("/console/cases")).status_code == 303

    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30, cookies={"caseflow_console": copied}) as other:
        assert (await other.get("/console/cases")).status_code == 200
        admin(stack, "revoke-key", client["keyId"])

        async def signed_out() -> httpx.Response | None:
            response = await other.get("/console/cases")
            return response if response.status_code == 303 else None

        ended = await eventually(signed_out, timeout=10, what="the copied session ending with its key")
        assert ended.headers["location"] == "/console/sign-in"


async def test_the_cookie_is_secure_behind_a_trusted_proxy_that_says_https(stack: Stack) -> None:
    key = new_client(stack)["apiKey"]
    with ExtraGateway(stack, {"TRUSTED_PROXIES": "127.0.0.1/32"}, name="gateway_console_proxy") as gateway:
        async with httpx.AsyncClient(
            base_url=gateway.url, timeout=30, headers={"x-forwarded-proto": "https"}
        ) as proxied:
            form = await proxied.get("/console/sign-in")
            assert "secure" in form.headers["set-cookie"].lower()
            # httpx would not send a Secure cookie back over http: hand it over as the browser behind TLS would.
            token = form.headers["set-cookie"].split(";")[0].split("=", 1)[1]
            proxied.cookies.set("caseflow_console_sign_in", token)
            signed = await proxied.post("/console/sign-in", data={"csrf": csrf_of(form.text), "api_key": key})
    assert signed.status_code == 303, signed.text
    assert "secure" in {part.strip().lower() for part in session_cookie(signed).split(";")}


async def test_a_forwarded_https_is_not_believed_from_a_peer_outside_trusted_proxies(stack: Stack) -> None:
    # The stack's gateway trusts no proxy, and the test connects from 127.0.0.1: uvicorn's own proxy-headers
    # middleware, which trusts that address by default, would have made the request https before our rule ran.
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, timeout=30, headers={"x-forwarded-proto": "https", "x-forwarded-for": "10.9.9.9"}
    ) as spoofing:
        form = await spoofing.get("/console/sign-in")
    assert form.status_code == 200
    assert "secure" not in {part.strip().lower() for part in form.headers["set-cookie"].split(";")}


async def test_sign_in_refuses_a_missing_csrf_token_and_a_wrong_key(
    console: httpx.AsyncClient, client: dict[str, Any]
) -> None:
    await console.get("/console/sign-in")
    forged = await console.post("/console/sign-in", data={"csrf": "guessed", "api_key": client["apiKey"]})
    assert forged.status_code == 403
    assert "FORBIDDEN" in forged.text
    assert not any(value.startswith("caseflow_console=") for value in set_cookie_headers(forged))

    form = await console.get("/console/sign-in")
    wrong = await console.post("/console/sign-in", data={"csrf": csrf_of(form.text), "api_key": "cf_wrong_key"})
    assert wrong.status_code == 401
    assert "That API key was not accepted." in wrong.text
    assert not any(value.startswith("caseflow_console=") for value in set_cookie_headers(wrong))


async def test_a_form_without_the_sessions_csrf_token_changes_nothing(
    api: httpx.AsyncClient, stack: Stack, client: dict[str, Any], console: httpx.AsyncClient
) -> None:
    owner = Scenario(api, stack, client)
    case_id, _ = await owner.start("silent")
    await sign_in(console, client["apiKey"])

    for csrf in (None, "x" * 43):
        refused = await console.post(f"/console/cases/{case_id}/cancel", data={"csrf": csrf} if csrf else {})
        assert refused.status_code == 403, refused.text
        assert "FORBIDDEN" in refused.text
        assert "Traceback" not in refused.text
    assert (await owner.get(case_id))["status"] != "CANCELLED"

    page = await console.get(f"/console/cases/{case_id}")
    cancelled = await console.post(f"/console/cases/{case_id}/cancel", data={"csrf": csrf_of(page.text)})
    assert (cancelled.status_code, cancelled.headers["location"]) == (303, f"/console/cases/{case_id}")
    assert (await owner.get(case_id))["status"] == "CANCELLED"
    after = await console.get(f"/console/cases/{case_id}")
    assert 'id="cancel-form"' not in after.text
    assert timeline_of(after.text)[-1] == ("CANCELLED", "cancel requested")


def timeline_of(page: str) -> list[tuple[str, str]]:
    """The (status, cause) entries of the page's status timeline, oldest first."""
    timeline = page[page.index('id="status-timeline"') : page.index("</ol>")]
    return re.findall(r'<li data-status="([A-Z_]+)">.*?<span class="cause">([^<]*)</span></li>', timeline)


async def test_a_refused_case_shows_why_it_failed_and_how_it_got_there(
    api: httpx.AsyncClient, stack: Stack, client: dict[str, Any], console: httpx.AsyncClient
) -> None:
    owner = Scenario(api, stack, client)
    case_id, _ = await owner.start("refuse")
    case = await owner.wait_for(case_id, {"COMPLETED", "FAILED", "CANCELLED"})
    assert (case["status"], case["resultStatus"]) == ("FAILED", "failed_rejected")
    await sign_in(console, client["apiKey"])
    page = await console.get(f"/console/cases/{case_id}")
    assert page.status_code == 200
    reason = re.search(r'id="failure-reason">Failure reason: ([^<]+)<', page.text)
    assert reason
    assert reason.group(1) == str(escape(case["failureReason"]))  # as the autoescaping template writes it
    assert timeline_of(page.text) == [
        ("CREATED", "created"),
        ("RUNNING", "email sent"),
        ("FAILED", "reply judged"),
    ]
    assert [(entry["status"], entry["cause"]) for entry in case["statusHistory"]] == [
        ("CREATED", "created"),
        ("RUNNING", "email_sent"),
        ("FAILED", "reply_judged"),
    ]
    assert 'id="cancel-form"' not in page.text  # nothing to cancel once it ended


async def test_another_clients_case_is_the_apis_403_page(
    api: httpx.AsyncClient, stack: Stack, client: dict[str, Any], console: httpx.AsyncClient
) -> None:
    owner = Scenario(api, stack, client)
    case_id, _ = await owner.start("silent")
    await sign_in(console, new_client(stack)["apiKey"])

    page = await console.get(f"/console/cases/{case_id}")
    api_answer = await api.get(f"/cases/{case_id}", headers={"x-api-key": new_client(stack)["apiKey"]})
    assert page.status_code == api_answer.status_code == 403
    message = api_answer.json()["error"]["message"]
    assert "403 FORBIDDEN" in page.text
    assert message in page.text
    assert case_id not in page.text
    assert "sim.example" not in page.text
    live = await console.get(f"/console/live/cases/{case_id}")
    assert live.status_code == 403
    listed = await console.get("/console/cases")
    assert case_id not in listed.text


async def test_a_hostile_reply_is_shown_as_text(
    api: httpx.AsyncClient, stack: Stack, client: dict[str, Any], console: httpx.AsyncClient
) -> None:
    owner = Scenario(api, stack, client)
    case_id, address = await owner.start("silent")
    sent = await eventually(lambda: _first_email(owner, address), what="the first email")
    async with httpx.AsyncClient(base_url=f"{stack.simulator.url}/_sim", timeout=10) as sim:
        injected = await sim.post(
            "/inbound",
            json={
                "from": address,
                "text": HOSTILE,
                "subject": HOSTILE,
                "thread_id": sent["thread_id"],
                "in_reply_to": sent["message_id"],
            },
        )
        assert injected.status_code == 200, injected.text

    async def reply_in_transcript() -> dict[str, Any] | None:
        case = await owner.get(case_id, transcript=True)
        inbound = [m for m in case["conversationMessages"] if m["direction"] == "inbound"]
        return case if inbound else None

    await eventually(reply_in_transcript, timeout=30, what="the reply in the transcript")
    await sign_in(console, client["apiKey"])
    page = await console.get(f"/console/cases/{case_id}")
    assert page.status_code == 200
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in page.text
    assert "<script>window.pwned" not in page.text
    assert not re.search(r"<a[^>]+javascript:", page.text)


async def _first_email(owner: Scenario, address: str) -> dict[str, Any] | None:
    emails = await owner.emails_to(address)
    return emails[0] if emails else None


async def test_filters_and_paging_go_through_the_list_rpc(
    api: httpx.AsyncClient, stack: Stack, console: httpx.AsyncClient
) -> None:
    client = new_client(stack)
    owner = Scenario(api, stack, client)
    reference = f"console-{uuid.uuid4().hex[:8]}"
    # A year between follow-ups: once each first email is out, no case changes (so moves pages) while we page.
    quiet = {"clientReferenceId": reference, "followUpDelayHours": 8760}
    created = [(await owner.start("silent", **quiet))[0] for _ in range(27)]
    await owner.start("silent")

    async def all_sent() -> bool | None:
        listed = await api.get("/cases", params={"clientReferenceId": reference, "limit": 100}, headers=owner.key)
        items = listed.json()["data"]["items"]
        return (len(items) == 27 and all(item["attemptCount"] == 1 for item in items)) or None

    await eventually(all_sent, timeout=60, what="every first email sent")
    await sign_in(console, client["apiKey"])

    first = await console.get("/console/cases", params={"clientReferenceId": reference})
    assert first.status_code == 200
    shown = set(re.findall(r'data-case-id="([^"]+)"', first.text))
    assert len(shown) == 25
    assert shown <= set(created)
    next_url = re.search(r'href="([^"]+)" id="next-page"', first.text)
    assert next_url
    second = await console.get(next_url.group(1).replace("&amp;", "&"))
    rest = set(re.findall(r'data-case-id="([^"]+)"', second.text))
    assert shown | rest == set(created)
    assert not shown & rest
    assert 'id="next-page"' not in second.text

    later = await console.get("/console/cases", params={"updatedSince": "2999-01-01T00:00"})
    assert 'data-case-id="' not in later.text
    bad = await console.get("/console/cases", params={"status": "NOT_A_STATUS"})
    assert bad.status_code == 400
    assert "INVALID_REQUEST" in bad.text

    usage = await console.get("/console/usage")
    assert usage.status_code == 200
    assert 'id="usage-used">28<' in usage.text  # the billing service's count, as GET /usage reports it


async def test_the_live_fragment_answers_204_until_the_case_changes(
    api: httpx.AsyncClient, stack: Stack, client: dict[str, Any], console: httpx.AsyncClient
) -> None:
    owner = Scenario(api, stack, client)
    case_id, _ = await owner.start("ask")
    await owner.wait_for(case_id, {"INPUT_NEEDED"})
    await sign_in(console, client["apiKey"])
    page = await console.get(f"/console/cases/{case_id}")
    version = re.search(r'hx-get="/console/live/cases/[^"?]+\?version=([0-9a-f]+)"', page.text)
    assert version

    unchanged = await console.get(f"/console/live/cases/{case_id}", params={"version": version.group(1)})
    assert (unchanged.status_code, unchanged.content) == (204, b"")

    form = re.search(r'name="input_request_id" value="([^"]+)"', page.text)
    assert form
    answered = await console.post(
        f"/console/cases/{case_id}/input",
        data={"csrf": csrf_of(page.text), "input_request_id": form.group(1), "provided_context": "PDF is fine."},
    )
    assert answered.status_code == 303, answered.text
    await owner.wait_for(case_id, {"COMPLETED"})
    changed = await console.get(f"/console/live/cases/{case_id}", params={"version": version.group(1)})
    assert changed.status_code == 200
    assert 'id="case-status">COMPLETED<' in changed.text
    assert changed.text.startswith('<div id="case-live"')
    # The timeline the fragment shows is the one GET /cases/{id} returns, recorded as the case moved.
    history = (await owner.get(case_id))["statusHistory"]
    assert [(entry["status"], entry["cause"]) for entry in history] == [
        ("CREATED", "created"),
        ("RUNNING", "email_sent"),
        ("INPUT_NEEDED", "reply_judged"),
        ("RUNNING", "input_judged"),
        ("COMPLETED", "reply_judged"),
    ]
    assert [entry["at"] for entry in history] == sorted(entry["at"] for entry in history)
    assert [status for status, _ in timeline_of(changed.text)] == [entry["status"] for entry in history]

    # The signed PDF the counterparty attached: the link asks the attachment RPC for a fresh download URL.
    link = re.search(r'href="(/console/cases/[^"]+/attachments/[^"]+)"', changed.text)
    assert link
    download = await console.get(link.group(1))
    assert download.status_code == 303
    async with httpx.AsyncClient(timeout=10) as anywhere:
        pdf = await anywhere.get(download.headers["location"])
    assert pdf.content.startswith(b"%PDF")
