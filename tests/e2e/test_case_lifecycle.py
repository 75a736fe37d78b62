"""The whole outreach lifecycle over HTTP through the stack, with the simulator's scripted counterparties.

Each scenario asserts the final status, resultStatus, attemptCount, how many emails the counterparty
received (the simulator's outbox) and the transcript.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import jsonschema

from deploy.processes import Stack
from simulator.cases import case_body
from tests.support.api import headers

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


class Scenario:
    def __init__(self, api: httpx.AsyncClient, stack: Stack, client: dict[str, Any]) -> None:
        self.api = api
        self.stack = stack
        self.key = headers(client["apiKey"])

    async def start(self, behaviour: str, **overrides: Any) -> tuple[str, str]:
        address = f"{behaviour}.{uuid.uuid4().hex[:8]}@sim.example"
        body = case_body(counterparty={"address": address, "name": "Sam Vendor"}, **overrides)
        response = await self.api.post("/cases", json=body, headers=self.key)
        assert response.status_code == 201, response.text
        return response.json()["data"]["caseId"], address

    async def get(self, case_id: str, *, transcript: bool = False) -> dict[str, Any]:
        params = {"includeTranscript": "true"} if transcript else {}
        response = await self.api.get(f"/cases/{case_id}", params=params, headers=self.key)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    async def wait_for(self, case_id: str, statuses: set[str], *, timeout: float = 45.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            case = await self.get(case_id)
            if case["status"] in statuses:
                return case
            if time.monotonic() > deadline:
                raise AssertionError(f"case stayed {case['status']}, expected one of {statuses}: {case}")
            await asyncio.sleep(0.1)

    async def emails_to(self, address: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=10) as http:
            outbox = (await http.get(f"{self.stack.simulator.url}/_sim/outbox", params={"to": address})).json()
        messages: list[dict[str, Any]] = outbox["messages"]
        return messages


async def assert_transcript(scenario: Scenario, case_id: str, *, outbound: int, inbound: int) -> dict[str, Any]:
    case = await scenario.get(case_id, transcript=True)
    messages = case["conversationMessages"]
    assert [m["direction"] for m in messages].count("outbound") == outbound
    assert [m["direction"] for m in messages].count("inbound") == inbound
    assert [m["at"] for m in messages] == sorted(m["at"] for m in messages)
    assert isinstance(case["conversationThread"], str)
    for message in messages:
        assert message["subject"] in case["conversationThread"]
    return case


async def test_agree_completes_with_a_schema_valid_result_and_a_downloadable_attachment(
    api: httpx.AsyncClient, stack: Stack, client: dict[str, Any]
) -> None:
    scenario = Scenario(api, stack, client)
    case_id, address = await scenario.start("agree")
    case = await scenario.wait_for(case_id, TERMINAL)
    assert (case["status"], case["resultStatus"], case["attemptCount"]) == ("COMPLETED", "goal_achieved", 1)
    jsonschema.validate(case["result"], case["resultSchema"])
    assert case["result"]["signedW9Received"] is True
    assert case["nextActionAt"] == 253402300799999
    assert len(await scenario.emails_to(address)) == 1
    (attachment,) = case["attachments"]
    assert attachment["type"] == "application/pdf"
    link = await api.get(f"/cases/{case_id}/attachments/{attachment['attachmentId']}", headers=scenario.key)
    assert link.status_code == 200, link.text
    download = link.json()["data"]
    assert download["name"] == attachment["name"]
    assert download["expiresAt"]
    async with httpx.AsyncClient(timeout=10) as http:
        pdf = await http.get(download["downloadUrl"])
    assert pdf.status_code == 200
    assert pdf.content.startswith(b"%PDF")
    assert len(pdf.content) == attachment["size"]
    await assert_transcript(scenario, case_id, outbound=1, inbound=1)


async def test_ask_needs_input_then_completes_after_the_client_answers(
    api: httpx.AsyncClient, stack: Stack, client: dict[str, Any]
) -> None:
    scenario = Scenario(api, stack, client)
    case_id, address = await scenario.start("ask")
    paused = await scenario.wait_for(case_id, {"INPUT_NEEDED", *TERMINAL})
    assert paused["status"] == "INPUT_NEEDED"
    request = paused["inputRequest"]
    assert request["status"] == "PENDING"
    assert "PDF" in request["question"]
    assert paused["nextActionAt"] == 253402300799999
    answer = {"inputRequestId": request["id"], "providedContext": "Yes, an electronically signed PDF is fine."}
    accepted = await api.post(f"/cases/{case_id}/input", json=answer, headers=scenario.key)
    assert accepted.status_code == 202, accepted.text
    case = await scenario.wait_for(case_id, TERMINAL)
    assert (case["status"], case["resultStatus"], case["attemptCount"]) == ("COMPLETED", "goal_achieved", 2)
    assert case["goal"]["knowledge"]["additionalHumanContext"] == [answer["providedContext"]]
    emails = await scenario.emails_to(address)
    assert len(emails) == 2
    assert "electronically signed PDF is fine" in emails[1]["text"]
    await assert_transcript(scenario, case_id, outbound=2, inbound=2)


async def test_chat_gets_an_answer_from_the_agent_then_completes(
    api: httpx.AsyncClient, stack: Stack, client: dict[str, Any]
) -> None:
    scenario = Scenario(api, stack, client)
    case_id, address = await scenario.start("chat")
    case = await scenario.wait_for(case_id, TERMINAL)
    assert (case["status"], case["resultStatus"], case["attemptCount"]) == ("COMPLETED", "goal_achieved", 2)
    emails = await scenario.emails_to(address)
    assert len(emails) == 2
    assert "Collect a signed W-9" in emails[1]["text"]
    assert emails[1]["thread_id"] == emails[0]["thread_id"]
    await assert_transcript(scenario, case_id, outbound=2, inbound=2)


async def test_refuse_fails_as_rejected_by_the_counterparty(
    api: httpx.AsyncClient, stack: Stack, client: dict[str, Any]
) -> None:
    scenario = Scenario(api, stack, client)
    case_id, address = await scenario.start("refuse")
    case = await scenario.wait_for(case_id, TERMINAL)
    assert (case["status"], case["resultStatus"], case["attemptCount"]) == ("FAILED", "failed_rejected", 1)
    assert case["failureReason"]
    assert len(await scenario.emails_to(address)) == 1
    await assert_transcript(scenario, case_id, outbound=1, inbound=1)


async def test_silent_with_two_follow_ups_gets_three_emails_then_max_retries(
    api: httpx.AsyncClient, stack: Stack, client: dict[str, Any]
) -> None:
    scenario = Scenario(api, stack, client)
    case_id, address = await scenario.start("silent", maxAttempts=2, followUpDelayHours=1)
    case = await scenario.wait_for(case_id, TERMINAL, timeout=60)
    assert (case["status"], case["resultStatus"], case["attemptCount"]) == ("FAILED", "max_retries", 3)
    emails = await scenario.emails_to(address)
    assert len(emails) == 3
    assert len({email["thread_id"] for email in emails}) == 1  # follow-ups stay in the thread
    await assert_transcript(scenario, case_id, outbound=3, inbound=0)


async def test_delivery_problems_fail_the_case(api: httpx.AsyncClient, stack: Stack, client: dict[str, Any]) -> None:
    scenario = Scenario(api, stack, client)
    started = {behaviour: await scenario.start(behaviour) for behaviour in ("bounce", "complain", "reject")}
    expected = {"bounce": "BOUNCED", "complain": "COMPLAINED", "reject": "REJECTED"}
    for behaviour, (case_id, address) in started.items():
        case = await scenario.wait_for(case_id, TERMINAL)
        assert (case["status"], case["resultStatus"]) == ("FAILED", expected[behaviour]), behaviour
        assert case["attemptCount"] == (0 if behaviour == "reject" else 1)
        assert len(await scenario.emails_to(address)) == (0 if behaviour == "reject" else 1)


async def test_cancel_while_running_sends_nothing_more(
    api: httpx.AsyncClient, stack: Stack, client: dict[str, Any]
) -> None:
    scenario = Scenario(api, stack, client)
    case_id, address = await scenario.start("silent", maxAttempts=5, followUpDelayHours=1)
    await scenario.wait_for(case_id, {"RUNNING"})
    cancelled = await api.post(f"/cases/{case_id}/cancel", headers=scenario.key)
    assert cancelled.status_code == 200
    sent_at_cancel = len(await scenario.emails_to(address))
    # Several follow-up delays pass: nothing more goes out.
    await asyncio.sleep(3 * float(stack.env["FOLLOW_UP_HOUR_SECONDS"]) + 1)
    case = await scenario.get(case_id)
    assert (case["status"], case["resultStatus"]) == ("CANCELLED", "cancelled")
    assert len(await scenario.emails_to(address)) == sent_at_cancel


async def test_the_transcript_keeps_working_while_the_provider_is_down(
    api: httpx.AsyncClient, stack: Stack, client: dict[str, Any]
) -> None:
    scenario = Scenario(api, stack, client)
    case_id, _ = await scenario.start("refuse")
    await scenario.wait_for(case_id, TERMINAL)
    stack.simulator.stop()
    try:
        case = await assert_transcript(scenario, case_id, outbound=1, inbound=1)
        assert "won't be able" in case["conversationThread"]
    finally:
        stack.simulator.start()
