"""Plan caps per client and UTC month, enforced atomically; a failed create gives its unit back."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import Stack
from shared.mongo import Document
from simulator.cases import case_body
from tests.support.api import headers, new_client


async def usage(api: httpx.AsyncClient, client: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = (await api.get("/usage", headers=headers(client["apiKey"]))).json()["data"]
    return data


async def test_fifty_concurrent_creates_against_a_cap_of_ten(
    api: httpx.AsyncClient, stack: Stack, stack_db: AsyncDatabase[Document]
) -> None:
    tiny = new_client(stack, plan="tiny")
    key = headers(tiny["apiKey"])
    responses = await asyncio.gather(*(api.post("/cases", json=case_body(), headers=key) for _ in range(50)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * 10 + [429] * 40
    refused = [r.json()["error"]["code"] for r in responses if r.status_code == 429]
    assert set(refused) == {"USAGE_LIMIT_REACHED"}
    assert await stack_db.cases.count_documents({"clientId": tiny["clientId"]}) == 10
    assert (await usage(api, tiny))["used"] == 10


async def test_a_create_that_fails_after_reserving_releases_the_unit(
    api: httpx.AsyncClient, stack: Stack, stack_db: AsyncDatabase[Document]
) -> None:
    victim = new_client(stack, plan="tiny")
    key = headers(victim["apiKey"])
    assert (await api.post("/cases", json=case_body(), headers=key)).status_code == 201
    # Inject a persistence failure for this client only: a unique index its second case cannot satisfy.
    index = IndexModel(
        [("clientId", ASCENDING)],
        name=f"fail_{victim['clientId']}",
        unique=True,
        partialFilterExpression={"clientId": victim["clientId"]},
    )
    await stack_db.cases.create_indexes([index])
    try:
        failed = await api.post("/cases", json=case_body(), headers=key)
        assert failed.status_code == 500, failed.text
        assert failed.json()["error"] == {"code": "INTERNAL_ERROR", "message": "An internal error occurred."}
    finally:
        await stack_db.cases.drop_index(f"fail_{victim['clientId']}")
    assert (await usage(api, victim))["used"] == 1
    assert await stack_db.cases.count_documents({"clientId": victim["clientId"]}) == 1
    listed = (await api.get("/cases", headers=key)).json()["data"]["items"]
    assert len(listed) == 1


async def test_the_plan_with_no_cap_still_counts(api: httpx.AsyncClient, client: dict[str, Any]) -> None:
    assert (await api.post("/cases", json=case_body(), headers=headers(client["apiKey"]))).status_code == 201
    current = await usage(api, client)
    assert current["used"] == 1
    assert current["limit"] is None
    assert current["remaining"] is None


async def test_a_plan_change_applies_to_the_next_create(api: httpx.AsyncClient, stack: Stack) -> None:
    from tests.support.api import admin

    one = new_client(stack, plan="one")
    key = headers(one["apiKey"])
    assert (await api.post("/cases", json=case_body(), headers=key)).status_code == 201
    assert (await api.post("/cases", json=case_body(), headers=key)).status_code == 429
    admin(stack, "set-plan", one["clientId"], "tiny")
    for _ in range(50):  # the plan change reaches the gateway by broadcast
        if (await api.post("/cases", json=case_body(), headers=key)).status_code == 201:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the new plan was never applied")
    assert (await usage(api, one))["limit"] == 10
