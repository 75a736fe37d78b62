"""`kill -9` a service while 200 cases are being created and worked: after it restarts, every case that got
a 201 reaches RUNNING with exactly one first email (the simulator's outbox), and no other case emails anyone."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.faults.conftest import (
    FaultStack,
    create_cases,
    emails_per_address,
    new_run,
    wait_all_running,
    wait_ready,
)

CASES = 200


@pytest.mark.parametrize("victim", ["case", "agentmail_adapter"])
async def test_a_killed_service_loses_no_accepted_case_and_sends_each_first_email_once(
    faults: FaultStack, api: httpx.AsyncClient, victim: str
) -> None:
    run = new_run()
    service = faults.stack.services[victim]

    async def kill_then_restart() -> None:
        await asyncio.sleep(2.0)  # mid-burst: some creates done, some in flight, sends under way
        service.kill()
        await asyncio.sleep(2.0)
        service.start()

    created, _ = await asyncio.gather(create_cases(api, run, CASES), kill_then_restart())
    assert created, "some creates must have succeeded around the crash"
    await asyncio.to_thread(wait_ready, faults)
    await wait_all_running(api, set(created))
    emails = await emails_per_address(faults, run)
    assert {address: emails.get(address, 0) for address in created.values()} == {
        address: 1 for address in created.values()
    }
    # Cases that were refused (500/503 during the crash) may have been stored before it; a create is all or
    # nothing, so none of them ever emails anyone.
    assert set(emails) == {address.lower() for address in created.values()}
