"""AgentMail failures of a case's first send through the whole stack (real processes, NATS, MongoDB and the
simulator's fault API): a terminal refusal ends the case FAILED/send_failed with one case.failed webhook; our
own credentials refused make the case wait, the stack report not ready naming the dependency, and the case go on
once the fault is lifted. Nothing is parked either way.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from faststream.nats import NatsBroker

from deploy.processes import Stack
from services.auth.admin_parked import list_parked
from tests.e2e.test_cases_api import create_case
from tests.support.api import headers
from tests.support.receivers import Receiver
from tests.support.simulator import SimulatorControl, eventually
from tests.support.webhook import verified

Json = dict[str, Any]
PROBLEM = "agentmail_adapter.agentmail"


@pytest.fixture
async def sim(stack: Stack) -> AsyncIterator[SimulatorControl]:
    control = SimulatorControl(stack.simulator.url)
    yield control
    await control.clear_faults()
    await control.aclose()


async def case_of(api: httpx.AsyncClient, client: Json, case_id: str) -> Json:
    response = await api.get(f"/cases/{case_id}", headers=headers(client["apiKey"]))
    assert response.status_code == 200, response.text
    data: Json = response.json()["data"]
    return data


async def sends_of(sim: SimulatorControl, case_id: str) -> list[int]:
    """The statuses AgentMail answered to this case's first send (its Idempotency-Key is `<case>.1`)."""
    return [call["status"] for call in await sim.calls("send") if call["idempotency_key"] == f"{case_id}.1"]


async def parked_case_ids(raw_broker: NatsBroker) -> set[str]:
    """The case ids of every message parked from the case commands (the body of each is a command)."""
    connection = raw_broker.connection
    parked = await list_parked(connection, stream="CASE_COMMANDS", limit=10_000)
    ids = set()
    for message in parked:
        raw = await connection.jetstream().get_msg("PARKED", seq=message.sequence)
        ids.add(str(msgspec.json.decode(raw.data or b"{}").get("case_id")))
    return ids


async def test_agentmail_refusing_every_send_ends_the_case_failed_with_one_webhook(
    api: httpx.AsyncClient, client: Json, sim: SimulatorControl, raw_broker: NatsBroker
) -> None:
    await sim.arm_fault("send", count=1000, status=400, message="to: the address is not deliverable")
    address = f"refused.{uuid.uuid4().hex[:8]}@sim.example"
    with Receiver() as receiver:
        case_id = await create_case(
            api, client, clientWebhookUrl=receiver.url(), counterparty={"address": address, "name": "Refused"}
        )

        async def failed() -> Json | None:
            case = await case_of(api, client, case_id)
            return case if case["status"] == "FAILED" else None

        case = await eventually(failed, timeout=60, what="the case FAILED")
        [request] = await receiver.wait_for(1, timeout=30)
        await asyncio.sleep(1.0)  # a second webhook for the same change would arrive within this
        assert len(receiver.received) == 1
    assert case["resultStatus"] == "send_failed"
    assert "400 validation_error: to: the address is not deliverable" in case["failureReason"]
    assert case["attemptCount"] == 0
    body = verified(request, client["webhookSecret"])
    assert body["event_type"] == "case.failed"
    assert body["data"]["failureReason"] == case["failureReason"]
    assert await sends_of(sim, case_id) == [400]  # final at once: never retried
    assert await sim.outbox(to=address) == []
    assert case_id not in await parked_case_ids(raw_broker)


async def test_agentmail_refusing_our_key_makes_the_case_wait_and_the_stack_not_ready_until_fixed(
    api: httpx.AsyncClient, client: Json, sim: SimulatorControl, raw_broker: NatsBroker
) -> None:
    await sim.arm_fault("send", count=100_000, status=401, code="unknown_api_key")
    address = f"waiting.{uuid.uuid4().hex[:8]}@sim.example"
    case_id = await create_case(api, client, counterparty={"address": address, "name": "Waiting"})

    async def not_ready() -> Json | None:
        response = await api.get("/readyz")
        if response.status_code != 503:
            return None
        error: Json = response.json()["error"]
        return error if PROBLEM in error["details"]["problems"] else None

    error = await eventually(not_ready, timeout=30, what="/readyz naming the refused AgentMail key")
    assert error["code"] == "SERVICE_UNAVAILABLE"
    assert error["details"]["components"]["agentmail_adapter"] == "down"
    assert "unknown_api_key" in error["details"]["problems"][PROBLEM]

    async def retried() -> list[int] | None:
        refused = [status for status in await sends_of(sim, case_id) if status == 401]
        return refused if len(refused) >= 3 else None

    await eventually(retried, timeout=30, what="the send retried while the key is refused")
    waiting = await case_of(api, client, case_id)
    assert waiting["status"] == "CREATED"
    assert "failureReason" not in waiting or waiting["failureReason"] is None
    assert case_id not in await parked_case_ids(raw_broker)

    await sim.clear_faults()  # the operator fixed the key

    async def running() -> Json | None:
        case = await case_of(api, client, case_id)
        return case if case["status"] == "RUNNING" else None

    case = await eventually(running, timeout=90, what="the case RUNNING once AgentMail accepts the key")
    assert case["attemptCount"] == 1
    assert len(await sim.outbox(to=address)) == 1

    async def ready() -> bool | None:
        return True if (await api.get("/readyz")).status_code == 200 else None

    await eventually(ready, timeout=30, what="/readyz ready again after a successful send")
