"""GET /cases: filters, and cursor pagination that sees every existing case exactly once while others arrive."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from simulator.cases import case_body
from tests.support.api import create_as_a_client, headers


async def create_many(api: httpx.AsyncClient, key: dict[str, str], count: int, *, parallel: int = 8) -> list[str]:
    semaphore = asyncio.Semaphore(parallel)
    run = uuid.uuid4().hex[:8]

    async def one(index: int) -> str:
        async with semaphore:
            # `reject` counterparties end quickly once a worker runs, so their updatedAt is stable while paging.
            body = case_body(
                clientReferenceId=f"bulk-{index}", counterparty={"address": "reject-x@sim.example", "name": "R"}
            )
            return await create_as_a_client(api, body, key, idempotency_key=f"list-{run}-{index}")

    return await asyncio.gather(*(one(i) for i in range(count)))


async def settled(api: httpx.AsyncClient, key: dict[str, str], expected: int) -> None:
    """Wait until no listed case is still changing (nothing left CREATED or RUNNING)."""
    for _ in range(300):
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
            page = (await api.get("/cases", params=params, headers=key)).json()["data"]
            items += page["items"]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        # A case that changes while it is paged through is listed again under its new updatedAt (keyset
        # pagination, docs/api.md): its newest state counts, once.
        newest = {item["caseId"]: item for item in items}
        assert len(newest) == expected
        if all(item["status"] not in {"CREATED", "RUNNING"} for item in newest.values()):
            return
        if all(item["status"] == "CREATED" for item in newest.values()):
            return  # no worker yet: nothing will change
        await asyncio.sleep(0.2)
    raise AssertionError("cases kept changing")


async def test_paging_230_cases_while_more_arrive_returns_each_existing_case_once_in_order(
    api: httpx.AsyncClient, client: dict[str, Any]
) -> None:
    key = headers(client["apiKey"])
    existing = set(await create_many(api, key, 230))
    await settled(api, key, 230)

    seen: list[dict[str, Any]] = []
    cursor = None
    arrivals: list[asyncio.Task[list[str]]] = []
    while True:
        params = {"limit": "50", **({"cursor": cursor} if cursor else {})}
        response = await api.get("/cases", params=params, headers=key)
        assert response.status_code == 200, response.text
        page = response.json()["data"]
        assert len(page["items"]) <= 50
        seen += page["items"]
        arrivals.append(asyncio.create_task(create_many(api, key, 5)))
        cursor = page["nextCursor"]
        if cursor is None:
            break
    await asyncio.gather(*arrivals)

    seen_ids = [item["caseId"] for item in seen]
    assert existing <= set(seen_ids)
    assert len([case_id for case_id in seen_ids if case_id in existing]) == len(existing)  # each exactly once
    assert len(seen_ids) == len(set(seen_ids))
    order = [(item["updatedAt"], item["caseId"]) for item in seen]
    assert order == sorted(order)


async def test_filters_by_status_reference_and_time(api: httpx.AsyncClient, client: dict[str, Any]) -> None:
    key = headers(client["apiKey"])
    first = (await api.post("/cases", json=case_body(clientReferenceId="vendor-1"), headers=key)).json()["data"][
        "caseId"
    ]
    second = (await api.post("/cases", json=case_body(clientReferenceId="vendor-2"), headers=key)).json()["data"][
        "caseId"
    ]
    await api.post(f"/cases/{second}/cancel", headers=key)

    by_reference = (await api.get("/cases", params={"clientReferenceId": "vendor-1"}, headers=key)).json()["data"]
    assert [item["caseId"] for item in by_reference["items"]] == [first]
    assert by_reference["nextCursor"] is None

    cancelled = (await api.get("/cases", params=[("status", "CANCELLED")], headers=key)).json()["data"]["items"]
    assert [item["caseId"] for item in cancelled] == [second]
    both = (
        await api.get(
            "/cases", params=[("status", "CANCELLED"), ("status", "CREATED"), ("status", "RUNNING")], headers=key
        )
    ).json()
    assert {item["caseId"] for item in both["data"]["items"]} >= {second}

    # Once the worker has sent the first email the case is quiet (its follow-up is 36 s away).
    for _ in range(200):
        if (await api.get(f"/cases/{first}", headers=key)).json()["data"]["status"] == "RUNNING":
            break
        await asyncio.sleep(0.05)
    latest = max(item["updatedAt"] for item in (await api.get("/cases", headers=key)).json()["data"]["items"])
    after = (await api.get("/cases", params={"updatedAfter": str(latest)}, headers=key)).json()["data"]["items"]
    assert after == []


async def test_bad_query_parameters_are_400(api: httpx.AsyncClient, client: dict[str, Any]) -> None:
    key = headers(client["apiKey"])
    for params in (
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
        {"status": "DONE"},
        {"updatedAfter": "-1"},
        {"cursor": "!!"},
    ):
        response = await api.get("/cases", params=params, headers=key)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"]["code"] == "INVALID_REQUEST"
