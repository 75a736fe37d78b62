"""Client webhooks through the whole stack: a real case event (cancel) is delivered signed to a receiver on
loopback, the delivery log shows it with its attempts, redelivery sends the same event again with a fresh
signature, and both routes are owner-checked and documented."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from standardwebhooks.webhooks import WebhookVerificationError

from deploy.processes import Stack
from tests.e2e.test_cases_api import assert_error, create_case
from tests.support.api import admin, headers, new_client
from tests.support.receivers import Receiver
from tests.support.simulator import eventually
from tests.support.webhook import verified

Json = dict[str, Any]


async def cancelled_case_with_webhook(api: httpx.AsyncClient, client: Json, receiver: Receiver) -> str:
    case_id = await create_case(api, client, clientWebhookUrl=receiver.url())
    response = await api.post(f"/cases/{case_id}/cancel", headers=headers(client["apiKey"]))
    assert response.status_code == 200, response.text
    return case_id


async def delivery_log(api: httpx.AsyncClient, client: Json, case_id: str) -> Json:
    response = await api.get(f"/cases/{case_id}/webhook-deliveries", headers=headers(client["apiKey"]))
    assert response.status_code == 200, response.text
    body: Json = response.json()
    assert body["ok"] is True
    data: Json = body["data"]
    return data


async def settled_log(api: httpx.AsyncClient, client: Json, case_id: str, *, attempts: int) -> Json:
    async def log_with_attempts() -> Json | None:
        log = await delivery_log(api, client, case_id)
        items = log["items"]
        done = items and len(items[0]["attempts"]) >= attempts and items[0]["state"] != "pending"
        return log if done else None

    return await eventually(log_with_attempts, timeout=30, what=f"{attempts} recorded attempts")


async def test_a_cancelled_case_sends_a_signed_webhook_shown_in_its_delivery_log(
    api: httpx.AsyncClient, client: Json
) -> None:
    with Receiver() as receiver:
        case_id = await cancelled_case_with_webhook(api, client, receiver)
        [request] = await receiver.wait_for(1, timeout=30)
    body = verified(request, client["webhookSecret"])
    case = (await api.get(f"/cases/{case_id}", headers=headers(client["apiKey"]))).json()["data"]
    assert body == {
        "event_id": f"evt_{case_id}_case_cancelled_{case['updatedAt']}",
        "event_type": "case.cancelled",
        "timestamp": case["updatedAt"],
        "data": {
            "caseId": case_id,
            "clientReferenceId": case["clientReferenceId"],
            "status": "CANCELLED",
            "channel": "EMAIL",
            "attemptCount": case["attemptCount"],
            "attachments": [],
            "resultStatus": "cancelled",
            "metadata": {"vendorId": "vendor_2048"},
        },
    }
    assert request.headers["webhook-id"] == body["event_id"]

    log = await settled_log(api, client, case_id, attempts=1)
    assert log["caseId"] == case_id
    [item] = log["items"]
    assert {k: item[k] for k in ("eventId", "eventType", "timestamp", "state", "nextAttemptAt", "data")} == {
        "eventId": body["event_id"],
        "eventType": "case.cancelled",
        "timestamp": case["updatedAt"],
        "state": "delivered",
        "nextAttemptAt": None,
        "data": body["data"],
    }
    [attempt] = item["attempts"]
    assert (attempt["status"], attempt["error"]) == (200, None)
    assert isinstance(attempt["at"], int)
    assert isinstance(attempt["latencyMs"], int)


async def test_redeliver_sends_the_same_event_again_signed_with_the_current_secret(
    api: httpx.AsyncClient, client: Json, stack: Stack
) -> None:
    with Receiver() as receiver:
        case_id = await cancelled_case_with_webhook(api, client, receiver)
        [first] = await receiver.wait_for(1, timeout=30)
        event_id = first.headers["webhook-id"]
        await settled_log(api, client, case_id, attempts=1)
        rotated = admin(stack, "rotate-webhook-secret", client["clientId"])["webhookSecret"]

        response = await api.post(
            f"/cases/{case_id}/webhook-deliveries/{event_id}/redeliver", headers=headers(client["apiKey"])
        )
        assert response.status_code == 202, response.text
        queued = response.json()["data"]
        assert (queued["eventId"], queued["state"]) == (event_id, "pending")
        second = (await receiver.wait_for(2, timeout=30))[1]

    assert second.headers["webhook-id"] == event_id
    assert second.body == first.body
    assert second.headers["webhook-signature"] != first.headers["webhook-signature"]
    verified(second, rotated)
    try:
        verified(second, client["webhookSecret"])
    except WebhookVerificationError:
        pass
    else:
        raise AssertionError("the redelivery was signed with the rotated-out secret")

    log = await settled_log(api, client, case_id, attempts=2)
    assert [a["status"] for a in log["items"][0]["attempts"]] == [200, 200]
    assert log["items"][0]["state"] == "delivered"


async def test_the_delivery_routes_are_owner_checked(api: httpx.AsyncClient, client: Json, stack: Stack) -> None:
    with Receiver() as receiver:
        case_id = await cancelled_case_with_webhook(api, client, receiver)
        [request] = await receiver.wait_for(1, timeout=30)
    event_id = request.headers["webhook-id"]
    log_path = f"/cases/{case_id}/webhook-deliveries"
    redeliver_path = f"{log_path}/{event_id}/redeliver"
    other = new_client(stack)

    assert_error(await api.get(log_path, headers=headers(other["apiKey"])), 403, "FORBIDDEN")
    assert_error(await api.post(redeliver_path, headers=headers(other["apiKey"])), 403, "FORBIDDEN")
    unknown = f"/cases/{uuid.uuid4()}/webhook-deliveries"
    assert_error(await api.get(unknown, headers=headers(client["apiKey"])), 404, "CASE_NOT_FOUND")
    assert_error(
        await api.post(f"{unknown}/{event_id}/redeliver", headers=headers(client["apiKey"])), 404, "CASE_NOT_FOUND"
    )
    message = assert_error(
        await api.post(f"{log_path}/evt_nope/redeliver", headers=headers(client["apiKey"])),
        404,
        "WEBHOOK_EVENT_NOT_FOUND",
    )
    assert message == "No webhook event with that id on this case."
    assert_error(await api.get(log_path), 401, "UNAUTHORIZED")
    assert_error(await api.post(redeliver_path), 401, "UNAUTHORIZED")


async def test_a_case_without_a_webhook_url_has_an_empty_delivery_log(
    api: httpx.AsyncClient, client: Json, stack: Stack
) -> None:
    case_id = await create_case(api, client)
    response = await api.post(f"/cases/{case_id}/cancel", headers=headers(client["apiKey"]))
    assert response.status_code == 200, response.text
    webhook_service = stack.services["webhook"]

    async def event_seen() -> bool | None:
        lines = webhook_service.json_log_lines()
        seen = any(line.get("case_id") == case_id and "no webhook URL" in str(line.get("msg")) for line in lines)
        return True if seen else None

    await eventually(event_seen, timeout=30, what="the webhook service to see the cancelled event")
    assert await delivery_log(api, client, case_id) == {"caseId": case_id, "items": []}


async def test_the_delivery_routes_are_documented_with_every_error_status(api: httpx.AsyncClient) -> None:
    paths = (await api.get("/schema/openapi.json")).json()["paths"]
    listing = paths["/cases/{case_id}/webhook-deliveries"]["get"]
    redeliver = paths["/cases/{case_id}/webhook-deliveries/{event_id}/redeliver"]["post"]
    assert set(listing["responses"]) == {"200", "400", "401", "403", "404", "429", "500", "503"}
    assert set(redeliver["responses"]) == {"202", "400", "401", "403", "404", "429", "500", "503"}
    assert "WEBHOOK_EVENT_NOT_FOUND" in redeliver["responses"]["404"]["description"]
    assert "CASE_NOT_FOUND" in listing["responses"]["404"]["description"]
    assert listing["security"] == [{"apiKey": []}]
