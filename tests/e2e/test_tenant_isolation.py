"""Tenant isolation: another client's real case, attachment, input request and webhook event ids get 403 on
every case route, and the body carries nothing about the case."""

from __future__ import annotations

from typing import Any

import httpx

from deploy.processes import Stack
from tests.e2e.test_case_lifecycle import TERMINAL, Scenario
from tests.support.api import headers, new_client


async def test_every_case_route_refuses_another_clients_ids(
    api: httpx.AsyncClient, stack: Stack, client: dict[str, Any]
) -> None:
    owner = Scenario(api, stack, client)
    hook = "http://127.0.0.1:9/never-called"
    agreed_id, _ = await owner.start("agree", clientWebhookUrl=hook)
    asking_id, _ = await owner.start("ask", clientWebhookUrl=hook)
    agreed = await owner.wait_for(agreed_id, TERMINAL)
    asking = await owner.wait_for(asking_id, {"INPUT_NEEDED"})
    attachment_id = agreed["attachments"][0]["attachmentId"]
    input_request_id = asking["inputRequest"]["id"]
    deliveries = (await api.get(f"/cases/{agreed_id}/webhook-deliveries", headers=owner.key)).json()["data"]
    event_id = deliveries["items"][0]["eventId"]

    intruder = headers(new_client(stack)["apiKey"])
    attempts = [
        ("GET", f"/cases/{agreed_id}", None),
        ("GET", f"/cases/{agreed_id}?includeTranscript=true", None),
        ("GET", f"/cases/{agreed_id}/attachments/{attachment_id}", None),
        ("POST", f"/cases/{asking_id}/input", {"inputRequestId": input_request_id, "providedContext": "yes"}),
        ("POST", f"/cases/{asking_id}/cancel", None),
        ("GET", f"/cases/{agreed_id}/webhook-deliveries", None),
        ("POST", f"/cases/{agreed_id}/webhook-deliveries/{event_id}/redeliver", None),
    ]
    secrets = {agreed_id, asking_id, attachment_id, input_request_id, event_id, "sim.example", "W-9"}
    for method, path, body in attempts:
        response = await api.request(method, path, json=body, headers=intruder)
        assert response.status_code == 403, (path, response.text)
        assert response.json() == {
            "ok": False,
            "error": {"code": "FORBIDDEN", "message": "You are not allowed to access this resource."},
        }
        assert not any(secret in response.text for secret in secrets)
    # The owner's case was not touched by any of it.
    still = await owner.get(asking_id)
    assert (still["status"], still["inputRequest"]["status"]) == ("INPUT_NEEDED", "PENDING")
    listed = (await api.get("/cases", headers=intruder)).json()["data"]["items"]
    assert listed == []
