"""An email AgentMail sent while the adapter never learnt it did (its answer timed out, or the adapter was
killed holding the request open) is still recorded under its (case, attempt), even when the case has moved
on by the time anyone would send it again: the counterparty answered it and the case completed.

This is the chaos soak's "email with no (case, attempt) recorded" (docs/reliability.md): the worker repeats a
send only while the case still wants it, so once the counterparty's answer to that very email completed the
case, nobody asked AgentMail again and the email stayed out of the adapter's `messages`, the transcript and
the thread map.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from simulator.cases import case_body
from tests.faults.conftest import FaultStack, new_run

# The adapter's AgentMail timeout in the fault stack is 1 s: a reply held open longer never gets its answer.
HELD_SECONDS = 1.5


async def case_now(api: httpx.AsyncClient, case_id: str) -> dict[str, Any] | None:
    """The case with its transcript; None while a restarting service answers 503 (a client retries)."""
    response = await api.get(f"/cases/{case_id}", params={"includeTranscript": "true"})
    if response.status_code == 503:
        return None
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def wait_for(
    api: httpx.AsyncClient, case_id: str, done: Callable[[dict[str, Any]], bool], *, timeout: float = 60
) -> dict[str, Any]:
    """Poll the case until `done` holds (or the timeout passes); returns its last state read."""
    deadline = time.monotonic() + timeout
    case = await case_now(api, case_id)
    while (case is None or not done(case)) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        case = await case_now(api, case_id) or case
    assert case is not None, "the case could not be read"
    return case


async def replies_of(sim: httpx.AsyncClient, case_id: str) -> list[dict[str, Any]]:
    """The simulator's log of the case's `reply` calls (their Idempotency-Key is `<caseId>.<attempt>`)."""
    calls: list[dict[str, Any]] = (await sim.get("/calls", params={"operation": "reply"})).json()
    return [call for call in calls if str(call["idempotency_key"]).startswith(f"{case_id}.")]


async def kill_adapter_while_a_reply_is_held(faults: FaultStack, sim: httpx.AsyncClient, case_id: str) -> None:
    """SIGKILL the adapter while AgentMail holds the reply open: the email is out, its answer never arrives."""
    deadline = time.monotonic() + 60
    calls: list[dict[str, Any]] = []
    while not calls and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        calls = await replies_of(sim, case_id)
    assert calls, "the agent never answered the counterparty's question"
    adapter = faults.stack.services["agentmail_adapter"]
    await asyncio.to_thread(adapter.kill)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(adapter.start)


@pytest.mark.parametrize("lost_by", ["timeout", "adapter_killed"])
async def test_an_email_sent_without_its_answer_is_recorded_under_its_attempt(
    faults: FaultStack, api: httpx.AsyncClient, lost_by: str
) -> None:
    run = new_run()
    address = f"chat.{run}@sim.example"
    simulator = faults.stack.simulator.url
    async with httpx.AsyncClient(base_url=f"{simulator}/_sim", timeout=30) as sim:
        # The agent's answer to the counterparty's question is the case's only `reply`: AgentMail sends it at
        # once (the counterparty answers it 0.2 s later) but holds every response past the adapter's timeout,
        # for as long as the test runs: the adapter never learns that this email went out.
        await sim.post("/faults", json={"operation": "reply", "count": 1000, "latency_seconds": HELD_SECONDS})
        try:
            created = await api.post("/cases", json=case_body(counterparty={"address": address, "name": "Sam Rivera"}))
            assert created.status_code == 201, created.text
            case_id = created.json()["data"]["caseId"]
            if lost_by == "adapter_killed":
                await kill_adapter_while_a_reply_is_held(faults, sim, case_id)
            case = await wait_for(api, case_id, lambda c: c["status"] == "COMPLETED")
            assert case["status"] == "COMPLETED", case
            outbox = (await sim.get("/outbox", params={"to": address})).json()["messages"]
            assert len(outbox) == 2  # the first email and the answer to the question, each once
            # Every email AgentMail sent is the adapter's record of one (case, attempt), in the transcript.
            sent_ids = {str(message["message_id"]) for message in outbox}
            case = await wait_for(
                api,
                case_id,
                lambda c: sent_ids <= {m["messageId"] for m in c.get("conversationMessages") or []},
                timeout=30,
            )
            replies = await replies_of(sim, case_id)
        finally:
            await sim.delete("/faults")
    assert replies
    assert all(call["faulted"] for call in replies)  # no answer to a reply ever reached the adapter
    outbound = [m for m in case["conversationMessages"] if m["direction"] == "outbound"]
    assert {m["messageId"] for m in outbound} == sent_ids
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(faults.mongo.url)
    try:
        records = [r async for r in mongo["caseflow_faults"]["messages"].find({"_id": {"$in": sorted(sent_ids)}})]
    finally:
        await mongo.close()
    assert sorted((r["caseId"], r["attempt"]) for r in records) == [(case_id, 1), (case_id, 2)]
