"""Two case-service processes share the scheduler: 200 due cases, every follow-up sent exactly once."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx

from deploy.processes import Stack
from simulator.cases import case_body
from tests.support.api import ExtraReplica, create_as_a_client, headers

CASES = 200


async def test_two_case_services_send_every_follow_up_exactly_once(
    api: httpx.AsyncClient, stack: Stack, client: dict[str, Any]
) -> None:
    key = headers(client["apiKey"])
    run = uuid.uuid4().hex[:6]
    addresses = [f"silent.{run}.{index}@sim.example" for index in range(CASES)]
    semaphore = asyncio.Semaphore(16)

    async def create(address: str) -> str:
        # One follow-up after a 1-"hour" delay (0.5 s here), then max_retries.
        body = case_body(counterparty={"address": address, "name": "Quiet"}, maxAttempts=1, followUpDelayHours=1)
        # 200 creates 16 at a time against one embedded MongoDB may be shed (503 + Retry-After); a client retries
        # with its key, as here. What this test is about is the follow-ups, once each.
        async with semaphore:
            return await create_as_a_client(api, body, key, idempotency_key=f"replicas-{address}")

    with ExtraReplica(stack, "case", name="case-2") as second:
        case_ids = await asyncio.gather(*(create(address) for address in addresses))
        deadline = time.monotonic() + 120
        pending = set(case_ids)
        while pending and time.monotonic() < deadline:
            for case_id in list(pending):
                case = (await api.get(f"/cases/{case_id}", headers=key)).json()["data"]
                if case["status"] == "FAILED":
                    assert (case["resultStatus"], case["attemptCount"]) == ("max_retries", 2)
                    pending.discard(case_id)
            await asyncio.sleep(0.5)
        assert not pending, f"{len(pending)} cases never finished"
    # Both replicas did part of the work (the scheduler's failures and the worker's sends).
    for replica_log in (stack.services["case"].json_log_lines(), second.process.json_log_lines()):
        assert any(line.get("msg") == "case status changed" and line.get("to") == "FAILED" for line in replica_log)

    async with httpx.AsyncClient(timeout=30) as http:
        outbox = (await http.get(f"{stack.simulator.url}/_sim/outbox", params={"to": f".{run}."})).json()
    per_address: dict[str, int] = {}
    for message in outbox["messages"]:
        for address in message["to"]:
            per_address[address.lower()] = per_address.get(address.lower(), 0) + 1
    assert per_address == {address: 2 for address in addresses}
