"""Throttling per API key and route, on a gateway configured with small buckets."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.api import ExtraGateway, case_body, headers, new_client
from tests.support.processes import Stack


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
