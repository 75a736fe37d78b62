"""Throttling per API key and route, on a gateway configured with small buckets."""

from __future__ import annotations

from typing import Any

import httpx

from deploy.processes import Stack
from simulator.cases import case_body
from tests.e2e.test_metrics import scrape, total, value
from tests.support.api import ExtraGateway, headers, new_client


async def test_the_sixth_request_in_a_burst_of_five_is_refused_with_the_envelope(stack: Stack) -> None:
    client: dict[str, Any] = new_client(stack)
    limits = {"RATE_LIMIT_CREATE": "0.01/5", "RATE_LIMIT_DEFAULT": "0.01/8"}
    with ExtraGateway(stack, limits, name="gateway-throttled") as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
            key = headers(client["apiKey"])
            creates = [await http.post("/cases", json=case_body(), headers=key) for _ in range(6)]
            assert [r.status_code for r in creates] == [201] * 5 + [429]
            refused = creates[-1]
            assert refused.json() == {
                "ok": False,
                "error": {"code": "RATE_LIMITED", "message": "Too many requests; retry after the time in Retry-After."},
            }
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.headers["ratelimit-limit"] == "5"
            assert refused.headers["ratelimit-remaining"] == "0"
            assert "ratelimit-reset" in refused.headers
            assert creates[0].headers["ratelimit-remaining"] == "4"
            # Other routes have their own, larger bucket.
            reads = [await http.get("/cases", headers=key) for _ in range(9)]
            assert [r.status_code for r in reads] == [200] * 8 + [429]
            # Another key is not affected.
            other = new_client(stack)
            assert (await http.get("/cases", headers=headers(other["apiKey"]))).status_code == 200


async def test_repeated_failed_authentication_from_one_address_is_429_before_any_lookup(stack: Stack) -> None:
    known: dict[str, Any] = new_client(stack)
    verify = {"subject": "auth.rpc.verify_key"}
    with ExtraGateway(stack, {"RATE_LIMIT_FAILED_AUTH": "0.01/3"}, name="gateway-failed-auth") as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
            # A key this gateway has verified keeps working from the same address throughout.
            assert (await http.get("/usage", headers=headers(known["apiKey"]))).status_code == 200
            guesses = [await http.get("/usage", headers=headers(f"cf_live_guess{n:040d}")) for n in range(3)]
            assert [r.status_code for r in guesses] == [401, 401, 401]
            lookups = total(await scrape(stack, "auth"), "caseflow_nats_messages_total", **verify)
            throttled = [await http.get("/usage", headers=headers(f"cf_live_more{n:040d}")) for n in range(5)]
            assert {r.status_code for r in throttled} == {429}
            assert throttled[0].json()["error"]["code"] == "RATE_LIMITED"
            assert int(throttled[0].headers["retry-after"]) >= 1
            # No request without a key gets through either, and none of them cost auth a lookup.
            assert (await http.get("/usage")).status_code == 429
            assert total(await scrape(stack, "auth"), "caseflow_nats_messages_total", **verify) == lookups
            assert (await http.get("/usage", headers=headers(known["apiKey"]))).status_code == 200


async def test_repeated_bad_agentmail_signatures_from_one_address_are_429(stack: Stack) -> None:
    with ExtraGateway(stack, {"RATE_LIMIT_FAILED_AUTH": "0.01/2"}, name="gateway-bad-signatures") as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
            forged = {"svix-id": "msg_x", "svix-timestamp": "1", "svix-signature": "v1,Zm9yZ2Vk"}
            answers = [await http.post("/webhooks/agentmail", content=b"{}", headers=forged) for _ in range(4)]
            assert [r.status_code for r in answers] == [400, 400, 429, 429]
            assert int(answers[-1].headers["retry-after"]) >= 1


async def test_readyz_answers_from_a_short_cache_without_asking_every_service_each_time(stack: Stack) -> None:
    health = {"subject": "auth.rpc.health", "outcome": "ok"}
    with ExtraGateway(stack, {"READYZ_CACHE_SECONDS": "3600"}, name="gateway-readyz-cache") as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
            assert (await http.get("/readyz")).status_code == 200
            asked = value(await scrape(stack, "auth"), "caseflow_nats_messages_total", **health)
            answers = [await http.get("/readyz") for _ in range(10)]
            assert {r.status_code for r in answers} == {200}
            assert value(await scrape(stack, "auth"), "caseflow_nats_messages_total", **health) == asked


async def test_one_keys_burst_holds_across_two_gateways(stack: Stack) -> None:
    client: dict[str, Any] = new_client(stack)
    # A rate so small that only the burst matters; a generous store deadline so a loaded machine cannot turn a
    # slow KV call into a local (per-gateway) decision.
    limits = {"RATE_LIMIT_CREATE": "0.001/20", "THROTTLE_STORE": "nats", "THROTTLE_STORE_TIMEOUT_SECONDS": "5"}
    with (
        ExtraGateway(stack, limits, name="gateway-shared-a") as first,
        ExtraGateway(stack, limits, name="gateway-shared-b") as second,
    ):
        async with httpx.AsyncClient(timeout=15) as http:
            key = headers(client["apiKey"])
            answers = [
                await http.post(f"{(first, second)[n % 2].url}/cases", json=case_body(), headers=key) for n in range(60)
            ]
    created = [r for r in answers if r.status_code == 201]
    # Per-gateway buckets would allow 40; one shared bucket allows its burst (±10 %; sequential requests: exactly).
    assert 18 <= len(created) <= 22
    assert [r.status_code for r in answers] == [201] * 20 + [429] * 40
    # Both gateways counted down one bucket.
    assert [int(r.headers["ratelimit-remaining"]) for r in created] == list(range(19, -1, -1))
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "RATE_LIMITED"
    assert refused.headers["ratelimit-limit"] == "20"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert int(refused.headers["retry-after"]) == int(refused.headers["ratelimit-reset"]) >= 1
