"""Admission control at the gateway: over its in-flight bound a route class sheds at once (503 + Retry-After),
and a shed create has created nothing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import Stack
from shared.mongo import Document
from simulator.cases import case_body
from tests.support.api import ExtraGateway, headers, new_client


async def test_a_burst_over_the_in_flight_bound__201s_and_immediate_503s_and_exactly_the_201_cases_exist(
    stack: Stack, stack_db: AsyncDatabase[Document]
) -> None:
    client: dict[str, Any] = new_client(stack)
    limits = {"MAX_IN_FLIGHT_CREATE": "2", "RATE_LIMIT_CREATE": "10000/10000"}
    with ExtraGateway(stack, limits, name="gateway-admission") as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            key = headers(client["apiKey"])
            reference = f"burst-{uuid.uuid4().hex[:8]}"
            answers = await asyncio.gather(
                *(http.post("/cases", json=case_body(clientReferenceId=reference), headers=key) for _ in range(40))
            )
            statuses = [answer.status_code for answer in answers]
            assert set(statuses) <= {201, 503}, statuses
            assert 503 in statuses, statuses
            assert 201 in statuses, statuses
            for shed in (answer for answer in answers if answer.status_code == 503):
                assert shed.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
                assert int(shed.headers["retry-after"]) >= 1
            created = {answer.json()["data"]["caseId"] for answer in answers if answer.status_code == 201}
            # Liveness is never shed, whatever the API routes are doing.
            assert (await http.get("/healthz")).status_code == 200
    stored = await stack_db.cases.count_documents({"clientId": client["clientId"], "clientReferenceId": reference})
    assert stored == len(created)
