"""The cases API over HTTP through the running services: every route and its errors, in the contract's order."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import Stack
from shared.mongo import Document
from simulator.cases import case_body
from tests.support.api import headers, new_client

Client = dict[str, Any]


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is False
    assert body["error"]["code"] == code, body
    assert "x-request-id" in response.headers
    message = body["error"]["message"]
    assert isinstance(message, str)
    return message


async def create_case(api: httpx.AsyncClient, client: Client, **overrides: Any) -> str:
    response = await api.post("/cases", json=case_body(**overrides), headers=headers(client["apiKey"]))
    assert response.status_code == 201, response.text
    case_id = response.json()["data"]["caseId"]
    assert isinstance(case_id, str)
    return case_id


async def wait_input_needed(stack_db: AsyncDatabase[Document], case_id: str, request_id: str) -> None:
    """Put a case into INPUT_NEEDED with a pending request, as the worker would (a test fixture write),
    once the worker has sent its first email and the case is quiet (its next follow-up is 36 s away)."""
    for _ in range(200):
        stored = await stack_db.cases.find_one({"_id": case_id})
        if stored is not None and stored["status"] == "RUNNING" and stored.get("awaitingSend") is None:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the first email was never sent")
    result = await stack_db.cases.update_one(
        {"_id": case_id, "status": "RUNNING"},
        {
            "$set": {
                "status": "INPUT_NEEDED",
                "inputRequest": {
                    "id": request_id,
                    "question": "Is a PDF signed electronically acceptable?",
                    "status": "PENDING",
                    "requestedAt": 1_774_131_900_300,
                },
            },
            "$inc": {"version": 1},
        },
    )
    assert result.modified_count == 1


async def test_create_returns_201_with_location_and_the_case_reads_back(api: httpx.AsyncClient, client: Client) -> None:
    body = case_body()
    response = await api.post("/cases", json=body, headers=headers(client["apiKey"]))
    assert response.status_code == 201, response.text
    case_id = response.json()["data"]["caseId"]
    assert uuid.UUID(case_id).version == 4
    assert response.headers["location"] == f"/cases/{case_id}"
    assert response.json() == {"ok": True, "data": {"caseId": case_id}}

    read = await api.get(f"/cases/{case_id}", headers=headers(client["apiKey"]))
    assert read.status_code == 200
    case = read.json()["data"]
    assert case["caseId"] == case_id
    assert case["status"] in {"CREATED", "RUNNING"}
    assert case["clientReferenceId"] == body["clientReferenceId"]
    assert case["maxAttempts"] == 3
    assert case["followUpDelayHours"] == 72
    assert case["channel"] == "EMAIL"
    assert case["counterparty"] == body["counterparty"]
    assert case["goal"]["objective"] == body["goal"]["objective"]
    assert case["senderPersona"] == body["senderPersona"]
    assert case["constraints"] == body["constraints"]
    assert case["resultSchema"] == body["resultSchema"]
    assert case["metadata"] == body["metadata"]
    assert case["attachments"] == []
    assert case["inputRequest"] is None
    assert isinstance(case["createdAt"], int)
    assert isinstance(case["nextActionAt"], int)
    assert "clientWebhookUrl" not in case
    assert "conversationThread" not in case
    # The timeline starts at creation; the first email, if already confirmed, is its second entry.
    assert case["statusHistory"][0] == {"status": "CREATED", "at": case["createdAt"], "cause": "created"}
    assert [entry["status"] for entry in case["statusHistory"]] == (
        ["CREATED"] if case["status"] == "CREATED" else ["CREATED", "RUNNING"]
    )
    assert "statusHistoryOmitted" not in case


async def test_defaults_apply_and_unknown_fields_are_ignored(api: httpx.AsyncClient, client: Client) -> None:
    body = case_body(somethingNew={"x": 1})
    del body["maxAttempts"], body["followUpDelayHours"]
    case_id = await create_case(api, client, **{k: v for k, v in body.items() if k != "clientReferenceId"})
    case = (await api.get(f"/cases/{case_id}", headers=headers(client["apiKey"]))).json()["data"]
    assert (case["maxAttempts"], case["followUpDelayHours"]) == (3, 72)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"channel": "SMS"}, "channel"),
        ({"counterparty": {"address": "nobody", "name": "M"}}, "counterparty.address"),
        (
            {"counterparty": {"address": "a@b.example", "name": "M", "timezone": "Europe/Atlantis"}},
            "counterparty.timezone",
        ),
        ({"counterparty": {"address": "a@b.example"}}, "counterparty.name"),
        ({"goal": {"objective": ""}}, "goal.objective"),
        ({"goal": {}}, "goal.objective"),
        ({"goal": "collect"}, "goal"),
        ({"senderPersona": {"role": "AP"}}, "senderPersona.name"),
        ({"maxAttempts": 21}, "maxAttempts"),
        ({"maxAttempts": "3"}, "maxAttempts"),
        ({"followUpDelayHours": 0}, "followUpDelayHours"),
        ({"resultSchema": {"type": "nope"}}, "resultSchema"),
        ({"resultSchema": []}, "resultSchema"),
        ({"constraints": ["x"] * 51}, "constraints"),
        ({"clientReferenceId": "r" * 257}, "clientReferenceId"),
        ({"clientWebhookUrl": "ftp://hooks.example.com/hook"}, "clientWebhookUrl"),
        ({"counterparty": {"address": "a@b.example", "name": "M", "customData": {"n": 1}}}, "counterparty.customData"),
    ],
)
async def test_invalid_bodies_are_400_naming_the_field(
    api: httpx.AsyncClient, client: Client, overrides: dict[str, Any], field: str
) -> None:
    response = await api.post("/cases", json=case_body(**overrides), headers=headers(client["apiKey"]))
    message = assert_error(response, 400, "INVALID_REQUEST")
    assert message.startswith(field), message


async def test_missing_body_fields_and_malformed_json_are_400(api: httpx.AsyncClient, client: Client) -> None:
    body = case_body()
    del body["counterparty"]
    message = assert_error(
        await api.post("/cases", json=body, headers=headers(client["apiKey"])), 400, "INVALID_REQUEST"
    )
    assert message.startswith("counterparty")
    malformed = await api.post(
        "/cases",
        content=b'{"channel": "EMAIL",',
        headers=headers(client["apiKey"], **{"content-type": "application/json"}),
    )
    assert_error(malformed, 400, "INVALID_REQUEST")
    assert_error(
        await api.post(
            "/cases", content=b"[1, 2]", headers=headers(client["apiKey"], **{"content-type": "application/json"})
        ),
        400,
        "INVALID_REQUEST",
    )


async def test_nothing_is_stored_for_a_rejected_body(
    api: httpx.AsyncClient, client: Client, stack_db: AsyncDatabase[Document]
) -> None:
    await api.post("/cases", json=case_body(channel="SMS"), headers=headers(client["apiKey"]))
    assert await stack_db.cases.count_documents({"clientId": client["clientId"]}) == 0


async def test_unknown_case_is_404_on_every_case_route(api: httpx.AsyncClient, client: Client) -> None:
    key = headers(client["apiKey"])
    missing = str(uuid.uuid4())
    assert_error(await api.get(f"/cases/{missing}", headers=key), 404, "CASE_NOT_FOUND")
    assert_error(
        await api.post(f"/cases/{missing}/input", json={"inputRequestId": "r", "providedContext": "c"}, headers=key),
        404,
        "CASE_NOT_FOUND",
    )
    assert_error(await api.post(f"/cases/{missing}/cancel", headers=key), 404, "CASE_NOT_FOUND")
    assert_error(await api.get(f"/cases/{missing}/attachments/a1", headers=key), 404, "CASE_NOT_FOUND")


async def test_another_clients_case_is_403_on_every_case_route_and_reveals_nothing(
    api: httpx.AsyncClient, stack: Stack, client: Client
) -> None:
    case_id = await create_case(api, client)
    intruder = headers(new_client(stack)["apiKey"])
    responses = [
        await api.get(f"/cases/{case_id}", headers=intruder),
        await api.get(f"/cases/{case_id}?includeTranscript=true", headers=intruder),
        await api.post(
            f"/cases/{case_id}/input", json={"inputRequestId": "r", "providedContext": "c"}, headers=intruder
        ),
        await api.post(f"/cases/{case_id}/cancel", headers=intruder),
        await api.get(f"/cases/{case_id}/attachments/a1", headers=intruder),
    ]
    for response in responses:
        assert_error(response, 403, "FORBIDDEN")
        assert case_id not in response.text
        assert "Maya" not in response.text
    listed = await api.get("/cases", headers=intruder)
    assert listed.json()["data"]["items"] == []


async def test_input_checks_run_in_the_contract_order(
    api: httpx.AsyncClient, client: Client, stack: Stack, stack_db: AsyncDatabase[Document]
) -> None:
    key = headers(client["apiKey"])
    case_id = await create_case(api, client)
    good = {"inputRequestId": "req-1", "providedContext": "Yes, a PDF is fine."}
    # 400 comes before 404/403/409: the body is checked first.
    assert_error(
        await api.post(f"/cases/{uuid.uuid4()}/input", json={"inputRequestId": " "}, headers=key),
        400,
        "INVALID_REQUEST",
    )
    blank = await api.post(
        f"/cases/{case_id}/input", json={"inputRequestId": "req-1", "providedContext": "   "}, headers=key
    )
    assert assert_error(blank, 400, "INVALID_REQUEST").startswith("providedContext")
    # Not waiting for input.
    assert_error(await api.post(f"/cases/{case_id}/input", json=good, headers=key), 409, "CASE_NOT_WAITING_FOR_INPUT")
    # Owner is checked before state.
    intruder = headers(new_client(stack)["apiKey"])
    assert_error(await api.post(f"/cases/{case_id}/input", json=good, headers=intruder), 403, "FORBIDDEN")

    await wait_input_needed(stack_db, case_id, "req-1")
    mismatch = {"inputRequestId": "req-0", "providedContext": "Yes"}
    assert_error(await api.post(f"/cases/{case_id}/input", json=mismatch, headers=key), 409, "INPUT_REQUEST_MISMATCH")
    accepted = await api.post(f"/cases/{case_id}/input", json={**good, "inputRequestId": "  req-1 "}, headers=key)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["data"] == {"caseId": case_id, "inputRequestId": "req-1", "accepted": True}
    again = await api.post(f"/cases/{case_id}/input", json=good, headers=key)
    if again.status_code != 409 or again.json()["error"]["code"] != "CASE_NOT_WAITING_FOR_INPUT":
        # The worker may not have picked the answer up yet: the request is then resolved, not pending.
        assert_error(again, 409, "INPUT_REQUEST_NOT_PENDING")
    stored = await stack_db.cases.find_one({"_id": case_id})
    assert stored is not None
    assert stored["inputRequest"]["status"] == "RESOLVED"


async def test_two_concurrent_inputs_exactly_one_is_accepted(
    api: httpx.AsyncClient, client: Client, stack_db: AsyncDatabase[Document]
) -> None:
    key = headers(client["apiKey"])
    case_id = await create_case(api, client)
    await wait_input_needed(stack_db, case_id, "req-9")
    body = {"inputRequestId": "req-9", "providedContext": "Go ahead."}
    first, second = await asyncio.gather(
        api.post(f"/cases/{case_id}/input", json=body, headers=key),
        api.post(f"/cases/{case_id}/input", json=body, headers=key),
    )
    assert sorted([first.status_code, second.status_code]) == [202, 409]
    loser = first if first.status_code == 409 else second
    assert loser.json()["error"]["code"] in {"INPUT_REQUEST_NOT_PENDING", "CASE_NOT_WAITING_FOR_INPUT"}


async def test_cancel_stops_an_open_case_once(api: httpx.AsyncClient, client: Client) -> None:
    key = headers(client["apiKey"])
    case_id = await create_case(api, client)
    cancelled = await api.post(f"/cases/{case_id}/cancel", headers=key)
    assert cancelled.status_code == 200, cancelled.text
    data = cancelled.json()["data"]
    assert (data["status"], data["resultStatus"], data["nextActionAt"]) == ("CANCELLED", "cancelled", 253402300799999)
    assert_error(await api.post(f"/cases/{case_id}/cancel", headers=key), 409, "CASE_NOT_CANCELLABLE")
    assert (await api.get(f"/cases/{case_id}", headers=key)).json()["data"]["status"] == "CANCELLED"


async def test_attachment_not_on_the_case_is_404_and_a_failed_lookup_is_500(
    api: httpx.AsyncClient, client: Client, stack_db: AsyncDatabase[Document]
) -> None:
    key = headers(client["apiKey"])
    case_id = await create_case(api, client)
    assert_error(await api.get(f"/cases/{case_id}/attachments/nope", headers=key), 404, "ATTACHMENT_NOT_FOUND")
    # An attachment the provider does not know: the lookup fails and the API answers 500, enveloped.
    await stack_db.cases.update_one(
        {"_id": case_id},
        {
            "$push": {
                "attachments": {
                    "attachmentId": "att-ghost",
                    "name": "w9.pdf",
                    "size": 10,
                    "type": "application/pdf",
                    "messageId": "<ghost@sim.example>",
                    "inboxId": "caseflow@sim.example",
                    "receivedAt": 1,
                }
            },
            "$inc": {"version": 1},
        },
    )
    failed = await api.get(f"/cases/{case_id}/attachments/att-ghost", headers=key)
    assert_error(failed, 500, "INTERNAL_ERROR")
    listed = (await api.get(f"/cases/{case_id}", headers=key)).json()["data"]["attachments"]
    assert [a["attachmentId"] for a in listed] == ["att-ghost"]
    assert "downloadUrl" not in listed[0]


async def test_transcript_is_null_before_the_first_email(api: httpx.AsyncClient, client: Client) -> None:
    key = headers(client["apiKey"])
    case_id = await create_case(api, client, counterparty={"address": "x@nowhere.example", "name": "X"})
    plain = (await api.get(f"/cases/{case_id}?includeTranscript=yes", headers=key)).json()["data"]
    assert "conversationThread" not in plain
    with_transcript = (await api.get(f"/cases/{case_id}?includeTranscript=true", headers=key)).json()["data"]
    if with_transcript["status"] == "CREATED":
        assert with_transcript["conversationThread"] is None
        assert with_transcript["conversationMessages"] is None
    else:
        assert isinstance(with_transcript["conversationThread"], str)


async def test_usage_reports_the_month_and_counts_creates(api: httpx.AsyncClient, stack: Stack) -> None:
    tiny = new_client(stack, plan="tiny")
    key = headers(tiny["apiKey"])
    before = (await api.get("/usage", headers=key)).json()["data"]
    assert before["used"] == 0
    assert before["limit"] == 10
    assert before["remaining"] == 10
    assert len(before["month"]) == 7
    assert isinstance(before["resetsAt"], int)
    await create_case(api, tiny)
    after = (await api.get("/usage", headers=key)).json()["data"]
    assert (after["used"], after["remaining"]) == (1, 9)


async def test_a_service_that_does_not_answer_is_503_with_retry_after(
    api: httpx.AsyncClient, stack: Stack, client: Client
) -> None:
    key = headers(client["apiKey"])
    await api.get("/usage", headers=key)  # the key is now cached, so only the case service is missing
    case_service = stack.services["case"]
    case_service.stop()
    try:
        response = await api.get(f"/cases/{uuid.uuid4()}", headers=key)
        assert_error(response, 503, "SERVICE_UNAVAILABLE")
        assert int(response.headers["retry-after"]) >= 1
    finally:
        case_service.start()
        stack.wait_ready(timeout=60)


async def test_unknown_routes_and_methods_over_the_stack(api: httpx.AsyncClient, client: Client) -> None:
    assert_error(await api.get("/nothing-here", headers=headers(client["apiKey"])), 404, "NOT_FOUND")
    assert_error(await api.delete("/cases", headers=headers(client["apiKey"])), 405, "METHOD_NOT_ALLOWED")
    big = {"x": "y" * (1024 * 1024 + 10)}
    assert_error(await api.post("/cases", json=big, headers=headers(client["apiKey"])), 413, "PAYLOAD_TOO_LARGE")


async def test_openapi_documents_every_route_and_docs_are_served(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/schema/openapi.json")).json()
    operations = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    assert {
        ("POST", "/cases"),
        ("GET", "/cases"),
        ("GET", "/cases/{case_id}"),
        ("POST", "/cases/{case_id}/input"),
        ("POST", "/cases/{case_id}/cancel"),
        ("GET", "/cases/{case_id}/attachments/{attachment_id}"),
        ("GET", "/usage"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    } <= operations
    create = schema["paths"]["/cases"]["post"]
    for status in ("201", "400", "401", "403", "409", "413", "422", "429", "500", "503"):
        assert status in create["responses"], status
    assert create["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorEnvelope")
    docs = await api.get("/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    assert "/schema/openapi.json" in docs.text or "openapi" in docs.text.lower()
