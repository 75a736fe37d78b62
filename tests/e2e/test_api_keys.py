"""API keys at the gateway: 401 for missing or unknown keys, 403 for inactive ones, and revocation that
reaches every gateway at once (their caches are evicted by the auth broadcast, not by expiry)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from deploy.processes import Stack
from tests.support.api import ExtraGateway, admin, headers


async def status_of(url: str, api_key: str | None) -> tuple[int, str | None]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.get("/usage", headers=headers(api_key) if api_key is not None else {})
    body = response.json()
    return response.status_code, None if body["ok"] else body["error"]["code"]


async def test_missing_or_unknown_key_is_401(api: httpx.AsyncClient) -> None:
    for key_headers in ({}, {"x-api-key": ""}, {"x-api-key": "cf_live_not-a-real-key"}, {"x-api-key": "k" * 5000}):
        response = await api.get("/cases", headers=key_headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "UNAUTHORIZED"
    # Auth runs before the body is read: a bad body with no key is still 401.
    assert (await api.post("/cases", content=b"{", headers={"content-type": "application/json"})).status_code == 401


async def test_a_deactivated_key_is_403_and_works_again_once_activated(stack: Stack, client: dict[str, Any]) -> None:
    assert await status_of(stack.gateway_url, client["apiKey"]) == (200, None)
    admin(stack, "deactivate-key", client["keyId"])
    assert await eventually(stack.gateway_url, client["apiKey"], (403, "FORBIDDEN"))
    admin(stack, "activate-key", client["keyId"])
    assert await eventually(stack.gateway_url, client["apiKey"], (200, None))


async def test_a_second_key_for_the_same_client_works_independently(stack: Stack, client: dict[str, Any]) -> None:
    second = admin(stack, "issue-key", client["clientId"])
    assert second["keyId"] != client["keyId"]
    admin(stack, "revoke-key", client["keyId"])
    assert await eventually(stack.gateway_url, client["apiKey"], (401, "UNAUTHORIZED"))
    assert await status_of(stack.gateway_url, second["apiKey"]) == (200, None)


async def test_a_revoked_key_stops_working_within_a_second_on_every_gateway(
    stack: Stack, client: dict[str, Any]
) -> None:
    # AUTH_CACHE_SECONDS is an hour on these gateways: only the eviction broadcast can stop the key in time.
    with ExtraGateway(stack, {}, name="gateway-2") as second:
        gateways = [stack.gateway_url, second.url]
        for url in gateways:
            assert await status_of(url, client["apiKey"]) == (200, None)  # now cached on both
        admin(stack, "revoke-key", client["keyId"])
        revoked_at = time.monotonic()
        results = await asyncio.gather(
            *(
                eventually(url, client["apiKey"], (401, "UNAUTHORIZED"), within=1.0, since=revoked_at)
                for url in gateways
            )
        )
        assert results == [True, True]


async def eventually(
    url: str, api_key: str, expected: tuple[int, str | None], *, within: float = 10.0, since: float | None = None
) -> bool:
    deadline = (since or time.monotonic()) + within
    while True:
        if await status_of(url, api_key) == expected:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
