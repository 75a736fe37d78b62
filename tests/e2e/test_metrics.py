"""Prometheus metrics through the whole stack: each service's `/metrics` (on its own METRICS_PORT) moves when
the system does something, with bounded labels.

Every check reads a metric before and after an action and compares, so cases, keys and requests of other tests
on the session stack do not matter; counters reset when a test restarts a service, so nothing is compared
across tests.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import SERVICE_MODULES, Stack
from services.case.lifecycle import OPEN_STATUSES
from shared.contracts.billing import RESERVE
from shared.contracts.case import CREATE
from shared.mongo import Document
from shared.subjects import Consumer
from simulator.cases import case_body
from tests.e2e.test_cases_api import create_case
from tests.support.api import headers, new_client
from tests.support.receivers import Receiver
from tests.support.simulator import eventually

Client = dict[str, Any]
type Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(stack: Stack, service: str) -> Samples:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(stack.metrics_url(service))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One series' value; 0 when it does not exist yet (a counter nobody incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` that has (at least) `labels`."""
    wanted = set(labels.items())
    return sum(v for (sample, series), v in samples.items() if sample == name and wanted <= series)


async def moved(stack: Stack, service: str, name: str, before: float, **labels: str) -> Samples:
    """Wait until the series has grown since `before` (the value read before the action); the scrape it did so in."""

    async def grown() -> Samples | None:
        samples = await scrape(stack, service)
        return samples if value(samples, name, **labels) > before else None

    return await eventually(grown, timeout=30, what=f"{service}: {name}{labels} to grow")


@pytest.mark.parametrize("service", sorted(SERVICE_MODULES))
async def test_every_service_exports_its_metrics_on_its_own_port(stack: Stack, service: str) -> None:
    samples = await scrape(stack, service)
    assert value(samples, "caseflow_service_info", service=service, version="0.1.0") == 1
    assert stack.metrics_ports[service] != stack.gateway_port


async def test_an_unknown_path_counts_as_the_unmatched_route_never_as_its_path(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    before = value(await scrape(stack, "gateway"), "caseflow_http_requests_total", **unmatched)
    path = f"/no-such-route-{uuid.uuid4().hex}"
    assert (await api.get(path)).status_code == 404
    after = await scrape(stack, "gateway")
    assert value(after, "caseflow_http_requests_total", **unmatched) == before + 1
    assert value(after, "caseflow_http_request_duration_seconds_count", **unmatched) >= 1
    assert not any(path in dict(series).get("route", "") for _, series in after)


async def test_a_route_with_an_id_counts_under_its_template(
    api: httpx.AsyncClient, stack: Stack, client: Client
) -> None:
    labels = {"route": "/cases/{case_id}", "method": "GET", "status": "404"}
    before = value(await scrape(stack, "gateway"), "caseflow_http_requests_total", **labels)
    case_id = str(uuid.uuid4())
    assert (await api.get(f"/cases/{case_id}", headers=headers(client["apiKey"]))).status_code == 404
    after = await scrape(stack, "gateway")
    assert value(after, "caseflow_http_requests_total", **labels) == before + 1
    assert not any(case_id in str(series) for _, series in after)


async def test_a_refused_key_counts_under_its_error_code_at_auth(api: httpx.AsyncClient, stack: Stack) -> None:
    refused = {"subject": "auth.rpc.verify_key", "outcome": "UNAUTHORIZED"}
    before = value(await scrape(stack, "auth"), "caseflow_nats_messages_total", **refused)
    unknown_key = "cf_live_" + uuid.uuid4().hex + uuid.uuid4().hex
    assert (await api.get("/usage", headers=headers(unknown_key))).status_code == 401
    await moved(stack, "auth", "caseflow_nats_messages_total", before, **refused)


async def test_a_created_case_moves_the_case_services_handler_counter_and_the_open_cases_gauge(
    api: httpx.AsyncClient, stack: Stack, client: Client, stack_db: AsyncDatabase[Document]
) -> None:
    created = {"subject": CREATE, "outcome": "ok"}
    before = await scrape(stack, "case")
    case_id = await create_case(api, client)
    handled = value(before, "caseflow_nats_messages_total", **created)
    after = await moved(stack, "case", "caseflow_nats_messages_total", handled, **created)
    assert value(after, "caseflow_nats_message_duration_seconds_count", **created) >= 1

    # Other tests' cases on this shared stack keep finishing, so the open total can fall while this case is
    # added: the gauge must match the database's open cases, this one included, read right after the scrape.
    async def counted() -> dict[str, float] | None:
        samples = await scrape(stack, "case")
        gauge = {dict(series)["status"]: count for (name, series), count in samples.items() if name == "caseflow_cases"}
        stored = {status: await stack_db.cases.count_documents({"status": status}) for status in OPEN_STATUSES}
        return gauge if gauge == stored else None

    assert await stack_db.cases.count_documents({"_id": case_id, "status": {"$in": list(OPEN_STATUSES)}}) == 1
    gauge = await eventually(counted, timeout=30, what="caseflow_cases to match the open cases stored")
    # Open statuses only: finished cases are caseflow_cases_finished_total, counted as they finish.
    assert set(gauge) == {"CREATED", "RUNNING", "INPUT_NEEDED"}


async def test_a_cancelled_case_counts_once_as_finished(api: httpx.AsyncClient, stack: Stack, client: Client) -> None:
    cancelled = {"status": "CANCELLED"}
    before = value(await scrape(stack, "case"), "caseflow_cases_finished_total", **cancelled)
    case_id = await create_case(api, client)
    cancels = [
        (await api.post(f"/cases/{case_id}/cancel", headers=headers(client["apiKey"]))).status_code for _ in range(2)
    ]
    assert cancels == [200, 409]  # the second cancel finishes nothing
    after = await moved(stack, "case", "caseflow_cases_finished_total", before, **cancelled)
    assert value(after, "caseflow_cases_finished_total", **cancelled) == before + 1


async def test_consumer_lag_is_reported_for_every_durable_consumer(stack: Stack) -> None:
    async def reported(service: str, consumers: set[tuple[str, str]]) -> Samples | None:
        samples = await scrape(stack, service)
        seen = {
            (dict(series)["stream"], dict(series)["consumer"])
            for sample, series in samples
            if sample == "caseflow_jetstream_consumer_pending_messages"
        }
        return samples if consumers <= seen else None

    case_consumers: set[tuple[str, str]] = {
        ("CASE_COMMANDS", Consumer.CASE_CREATED),
        ("CASE_COMMANDS", Consumer.CASE_SEND),
        ("CASE_COMMANDS", Consumer.CASE_INPUT),
        ("AGENTMAIL_EVENTS", Consumer.CASE_MESSAGES),
        ("AGENTMAIL_EVENTS", Consumer.CASE_DELIVERIES),
    }
    samples = await eventually(lambda: reported("case", case_consumers), timeout=30, what="case consumers")
    for stream, consumer in case_consumers:
        for gauge in ("ack_pending", "redelivered"):
            assert (
                f"caseflow_jetstream_consumer_{gauge}_messages",
                frozenset({("stream", stream), ("consumer", consumer)}),
            ) in samples
    await eventually(
        lambda: reported("webhook", {("CASE_EVENTS", Consumer.WEBHOOK_CASE_EVENTS)}),
        timeout=30,
        what="webhook consumer",
    )


async def test_reservations_show_under_their_plan_granted_then_refused(api: httpx.AsyncClient, stack: Stack) -> None:
    capped = new_client(stack, plan="one")  # PLANS gives "one" a cap of one case a month
    before = await scrape(stack, "billing")
    granted = {"plan": "one", "outcome": "granted"}
    refused = {"plan": "one", "outcome": "refused"}
    await create_case(api, capped)
    refused_response = await api.post("/cases", json=case_body(), headers=headers(capped["apiKey"]))
    assert refused_response.status_code == 429, refused_response.text
    after = await scrape(stack, "billing")
    assert value(after, "caseflow_usage_reservations_total", **granted) == (
        value(before, "caseflow_usage_reservations_total", **granted) + 1
    )
    assert value(after, "caseflow_usage_reservations_total", **refused) == (
        value(before, "caseflow_usage_reservations_total", **refused) + 1
    )
    limit = {"subject": RESERVE, "outcome": "USAGE_LIMIT_REACHED"}
    assert (
        value(after, "caseflow_nats_messages_total", **limit)
        == value(before, "caseflow_nats_messages_total", **limit) + 1
    )


async def test_a_first_email_counts_as_sent_by_the_adapter(
    api: httpx.AsyncClient, stack: Stack, client: Client
) -> None:
    sent = {"kind": "send", "outcome": "sent"}
    before = value(await scrape(stack, "agentmail_adapter"), "caseflow_emails_sent_total", **sent)
    await create_case(api, client)
    await moved(stack, "agentmail_adapter", "caseflow_emails_sent_total", before, **sent)


async def test_a_delivered_webhook_counts_as_a_delivered_attempt(
    api: httpx.AsyncClient, stack: Stack, client: Client
) -> None:
    before = value(await scrape(stack, "webhook"), "caseflow_webhook_attempts_total", result="delivered")
    with Receiver() as receiver:
        case_id = await create_case(api, client, clientWebhookUrl=receiver.url())
        assert (await api.post(f"/cases/{case_id}/cancel", headers=headers(client["apiKey"]))).status_code == 200
        await receiver.wait_for(1, timeout=30)
        await moved(stack, "webhook", "caseflow_webhook_attempts_total", before, result="delivered")
