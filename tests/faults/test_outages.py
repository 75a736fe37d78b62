"""Outages of the broker, the database and the email provider: requests during the outage fail fast with an
enveloped 503 (never hang), services recover by themselves, and nothing accepted before or after is lost."""

from __future__ import annotations

import asyncio
import time

import httpx

from deploy.processes import ManagedProcess
from tests.faults.conftest import (
    FaultStack,
    create_cases,
    emails_per_address,
    new_run,
    silent_case,
    wait_all_running,
    wait_ready,
)

OUTAGE_SECONDS = 10.0
# "Fast" for a request during an outage: well under the client timeouts people use (and our 30 s here).
FAIL_FAST_SECONDS = 8.0


async def requests_during_outage(api: httpx.AsyncClient, run: str, seconds: float) -> tuple[list[int], dict[str, str]]:
    """Keep creating and reading while the outage lasts; every answer must be a prompt envelope. Returns the
    statuses seen and the cases accepted (201) meanwhile, if any."""
    statuses: list[int] = []
    accepted: dict[str, str] = {}
    deadline = time.monotonic() + seconds
    index = 10_000
    while time.monotonic() < deadline:
        body = silent_case(run, index)
        for request in (api.post("/cases", json=body), api.get("/cases")):
            response = await asyncio.wait_for(request, timeout=FAIL_FAST_SECONDS)
            statuses.append(response.status_code)
            if response.status_code == 201:
                accepted[response.json()["data"]["caseId"]] = body["counterparty"]["address"]
            elif response.status_code >= 500:
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
                assert int(response.headers["retry-after"]) >= 1
        index += 1
        await asyncio.sleep(0.2)
    return statuses, accepted


async def check_outage(faults: FaultStack, api: httpx.AsyncClient, component: ManagedProcess) -> None:
    run = new_run()
    # On a loaded machine a create may be shed (503 + Retry-After); a client retries it with its key, and every
    # one must then be accepted: that, not capacity, is what these tests are about.
    before = await create_cases(api, run, 20, retries_after_503=5)
    assert len(before) == 20
    component.stop()
    try:
        statuses, during = await requests_during_outage(api, run, OUTAGE_SECONDS)
    finally:
        component.start()
    assert 503 in statuses
    await asyncio.to_thread(wait_ready, faults)
    later_run = new_run()
    # Just after a restart, too, while connections come back.
    after = await create_cases(api, later_run, 20, retries_after_503=5)
    assert len(after) == 20
    accepted = {**before, **during, **after}
    await wait_all_running(api, set(accepted))
    emails = {**await emails_per_address(faults, run), **await emails_per_address(faults, later_run)}
    assert {address: emails.get(address, 0) for address in accepted.values()} == {
        address: 1 for address in accepted.values()
    }


async def test_nats_restart(faults: FaultStack, api: httpx.AsyncClient) -> None:
    await check_outage(faults, api, faults.nats)


async def test_mongodb_restart_keeps_the_data(faults: FaultStack, api: httpx.AsyncClient) -> None:
    await check_outage(faults, api, faults.mongo)


async def test_provider_outage_is_retried_without_sending_twice(faults: FaultStack, api: httpx.AsyncClient) -> None:
    simulator = faults.stack.simulator.url
    run = new_run()
    earlier = await create_cases(api, run, 1)
    await wait_all_running(api, set(earlier))
    (earlier_case,) = earlier
    async with httpx.AsyncClient(base_url=simulator, timeout=30) as sim:
        # First sends time out at the adapter (1 s) but the provider does send them; then it answers 500s.
        await sim.post("/_sim/faults", json={"operation": "send", "count": 6, "latency_seconds": 2.0})
        await sim.post("/_sim/faults", json={"operation": "send", "count": 100_000, "status": 500})
        await sim.post("/_sim/faults", json={"operation": "get_thread", "count": 100_000, "status": 500})
        outage_run = new_run()
        during = await create_cases(api, outage_run, 10)
        assert len(during) == 10  # creates do not depend on the provider
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            transcript = await api.get(f"/cases/{earlier_case}", params={"includeTranscript": "true"})
            assert transcript.status_code == 200
            assert len(transcript.json()["data"]["conversationMessages"]) == 1
            await asyncio.sleep(2)
        calls = (await sim.get("/_sim/calls", params={"operation": "send"})).json()
        assert sum(1 for call in calls if call["status"] == 500) >= 10  # retried with backoff meanwhile
        await sim.delete("/_sim/faults")
    await wait_all_running(api, set(during))
    emails = await emails_per_address(faults, outage_run)
    assert emails == {address: 1 for address in during.values()}
