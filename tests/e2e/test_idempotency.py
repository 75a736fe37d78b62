"""`Idempotency-Key` on POST /cases: replays, mismatches, concurrent duplicates and expiry."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import httpx
import msgspec
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import Stack
from services.case.handlers import request_hash
from shared.clock import now_ms
from shared.contracts.case import NewCase
from shared.mongo import Document
from simulator.cases import case_body
from tests.support.api import headers, new_client


async def used(api: httpx.AsyncClient, client: dict[str, Any]) -> int:
    value: int = (await api.get("/usage", headers=headers(client["apiKey"]))).json()["data"]["used"]
    return value


async def test_a_retry_with_the_same_key_and_body_replays_the_original_and_costs_nothing(
    api: httpx.AsyncClient, client: dict[str, Any]
) -> None:
    body = case_body()
    key = headers(client["apiKey"], **{"Idempotency-Key": f"create-{uuid.uuid4()}"})
    first = await api.post("/cases", json=body, headers=key)
    second = await api.post("/cases", json=body, headers=key)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert first.headers["location"] == second.headers["location"]
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert await used(api, client) == 1


async def test_the_same_key_with_a_different_body_is_422(api: httpx.AsyncClient, client: dict[str, Any]) -> None:
    key = headers(client["apiKey"], **{"Idempotency-Key": "reused-key"})
    assert (await api.post("/cases", json=case_body(clientReferenceId="a"), headers=key)).status_code == 201
    mismatch = await api.post("/cases", json=case_body(clientReferenceId="b"), headers=key)
    assert mismatch.status_code == 422
    assert mismatch.json()["error"]["code"] == "IDEMPOTENCY_KEY_MISMATCH"


async def test_keys_are_scoped_to_the_client(api: httpx.AsyncClient, stack: Stack) -> None:
    body = case_body()
    a, b = new_client(stack), new_client(stack)
    first = await api.post("/cases", json=body, headers=headers(a["apiKey"], **{"Idempotency-Key": "shared"}))
    second = await api.post("/cases", json=body, headers=headers(b["apiKey"], **{"Idempotency-Key": "shared"}))
    assert first.json()["data"]["caseId"] != second.json()["data"]["caseId"]


async def test_concurrent_requests_with_one_key_create_one_case(
    api: httpx.AsyncClient, client: dict[str, Any], stack_db: AsyncDatabase[Document]
) -> None:
    body = case_body()
    key = headers(client["apiKey"], **{"Idempotency-Key": "burst"})
    responses = await asyncio.gather(*(api.post("/cases", json=body, headers=key) for _ in range(8)))
    created = {r.json()["data"]["caseId"] for r in responses if r.status_code == 201}
    others = {r.json()["error"]["code"] for r in responses if r.status_code != 201}
    assert len(created) == 1
    assert others <= {"IDEMPOTENCY_KEY_IN_USE"}
    assert await stack_db.cases.count_documents({"clientId": client["clientId"]}) == 1
    assert await used(api, client) == 1


async def test_a_key_whose_request_is_in_flight_is_409(
    api: httpx.AsyncClient, client: dict[str, Any], stack_db: AsyncDatabase[Document]
) -> None:
    body = case_body()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    await stack_db.idempotency_keys.insert_one(
        {
            "_id": f"{client['clientId']}\x1fslow",
            "clientId": client["clientId"],
            "requestHash": request_hash(msgspec.convert(body, NewCase)),
            "state": "in_flight",
            "claimedAt": now,
            "expiresAt": now + dt.timedelta(hours=24),
            # Its request may still store its case for 20 s (its deadline), then for the confirmation grace.
            "deadline": now_ms() + 20_000,
        }
    )
    response = await api.post("/cases", json=body, headers=headers(client["apiKey"], **{"Idempotency-Key": "slow"}))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_USE"
    # Retry-After says when the key may be taken over: after the deadline and the stack's grace (30 s by default).
    assert 20 + 30 - 2 <= int(response.headers["retry-after"]) <= 20 + 30 + 1


async def test_keys_expire_after_24_hours(
    api: httpx.AsyncClient, client: dict[str, Any], stack_db: AsyncDatabase[Document]
) -> None:
    indexes = await stack_db.idempotency_keys.index_information()
    ttl = [spec for spec in indexes.values() if spec.get("expireAfterSeconds") == 0]
    assert ttl
    assert ttl[0]["key"] == [("expiresAt", 1)]
    body = case_body()
    key = headers(client["apiKey"], **{"Idempotency-Key": "old"})
    first = (await api.post("/cases", json=body, headers=key)).json()["data"]["caseId"]
    stored = await stack_db.idempotency_keys.find_one({"_id": f"{client['clientId']}\x1fold"})
    assert stored is not None
    assert dt.timedelta(hours=23, minutes=59) < stored["expiresAt"] - stored["claimedAt"] <= dt.timedelta(hours=24)
    # 24 h later (before the TTL monitor has swept it) the key no longer replays.
    await stack_db.idempotency_keys.update_one(
        {"_id": stored["_id"]},
        {"$set": {"expiresAt": dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=1)}},
    )
    second = await api.post("/cases", json=body, headers=key)
    assert second.status_code == 201
    assert second.json()["data"]["caseId"] != first
    assert "idempotent-replayed" not in second.headers


async def test_a_malformed_key_is_400(api: httpx.AsyncClient, client: dict[str, Any]) -> None:
    long_key = headers(client["apiKey"], **{"Idempotency-Key": "k" * 256})
    response = await api.post("/cases", json=case_body(), headers=long_key)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_REQUEST"
    assert "Idempotency-Key" in response.json()["error"]["message"]
