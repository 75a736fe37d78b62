"""The AsyncAPI documents under docs/asyncapi: current with the channel table, complete, and the table true to the code.

Regeneration runs `python -m deploy.asyncapi` in a subprocess, as `make docs` does. The table (shared/channels.py)
is compared with what every service's broker, built as its process builds it, subscribes to.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast, get_args
from urllib.parse import unquote

import pytest
import yaml
from faststream.nats import NatsBroker

from deploy.processes import ROOT
from services.agentmail_adapter import __main__ as adapter_main
from services.auth import __main__ as auth_main
from services.billing import __main__ as billing_main
from services.case import __main__ as case_main
from services.gateway.app import create_litestar
from services.webhook import __main__ as webhook_main
from shared.channels import CHANNELS
from shared.contracts import agentmail, auth, billing, case, webhook
from shared.contracts.case import EventType, event_subject
from shared.messaging.broker import create_broker
from shared.messaging.jetstream import durable_consumers
from shared.messaging.responder import rpc_handlers
from shared.settings import (
    AgentMailSettings,
    AuthSettings,
    BillingSettings,
    CaseSettings,
    GatewaySettings,
    WebhookSettings,
    load_settings,
)
from shared.subjects import BACKEND_SERVICES, Consumer, Service, health_subject, queue_group, stream_of

DOCS = ROOT / "docs" / "asyncapi"


def load(service: Service) -> dict[str, Any]:
    document = yaml.safe_load((DOCS / f"{service}.yaml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def documents() -> dict[Service, dict[str, Any]]:
    return {service: load(service) for service in Service}


def subjects_named_in_contracts() -> set[str]:
    """Every subject constant of shared/contracts, every case event subject, every health subject."""
    named = {
        value
        for module in (agentmail, auth, billing, case, webhook)
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, str) and any(kind in value for kind in (".rpc.", ".cmd.", ".evt."))
    }
    named |= {event_subject(event_type) for event_type in get_args(EventType)}
    named |= {health_subject(service) for service in BACKEND_SERVICES}
    return named


def addresses(document: dict[str, Any], action: str) -> set[str]:
    channels = document["channels"]
    return {
        # References are URL-encoded: `>` and `*` wildcards appear as %3E and %2A.
        channels[unquote(operation["channel"]["$ref"].removeprefix("#/channels/"))]["address"]
        for operation in document["operations"].values()
        if operation["action"] == action
    }


def test_the_committed_documents_are_what_the_code_generates(tmp_path: Path) -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "deploy.asyncapi", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert generated.returncode == 0, generated.stderr
    fresh = {path.name: path.read_text() for path in tmp_path.iterdir()}
    committed = {path.name: path.read_text() for path in DOCS.iterdir()}
    assert sorted(committed) == sorted(fresh), "run `make docs`: files were added or removed"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"docs/asyncapi is stale ({', '.join(stale)}): run `make docs` and commit the result"


def test_the_check_mode_fails_on_a_stale_document(tmp_path: Path) -> None:
    for path in DOCS.iterdir():
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "billing.yaml").write_text((tmp_path / "billing.yaml").read_text().replace("usage_report", "usage"))
    checked = subprocess.run(
        [sys.executable, "-m", "deploy.asyncapi", "--check", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 1
    assert "billing.yaml" in checked.stderr
    assert "make docs" in checked.stderr


def test_every_subject_the_contracts_name_is_received_somewhere(documents: dict[Service, dict[str, Any]]) -> None:
    received = set().union(*(addresses(document, "receive") for document in documents.values()))
    # The webhook service reads every case event through one wildcard consumer.
    received |= {event_subject(event_type) for event_type in get_args(EventType)} if "case.evt.>" in received else set()
    missing = subjects_named_in_contracts() - received
    assert not missing, f"no service documents receiving {sorted(missing)}"


def test_every_durable_subject_is_documented_by_its_publisher(documents: dict[Service, dict[str, Any]]) -> None:
    sent = set().union(*(addresses(document, "send") for document in documents.values()))
    durable = {
        *(event_subject(event_type) for event_type in get_args(EventType)),
        case.CMD_CREATED,
        case.CMD_INPUT_PROVIDED,
        case.CMD_SEND,
        case.CMD_JUDGE_REPLY,
        agentmail.MESSAGE_RECEIVED,
        agentmail.DELIVERY_EVENT,
        auth.KEYS_CHANGED,
    }
    assert durable <= sent, sorted(durable - sent)
    # Each durable consumer's parked subject too.
    assert {subject for subject in sent if subject.startswith("parked.")} == {
        f"parked.{stream}.{consumer}"
        for stream, consumer in (
            ("CASE_COMMANDS", Consumer.CASE_CREATED),
            ("CASE_COMMANDS", Consumer.CASE_SEND),
            ("CASE_COMMANDS", Consumer.CASE_INPUT),
            ("CASE_COMMANDS", Consumer.CASE_JUDGE_REPLY),
            ("AGENTMAIL_EVENTS", Consumer.CASE_MESSAGES),
            ("AGENTMAIL_EVENTS", Consumer.CASE_DELIVERIES),
            ("CASE_EVENTS", Consumer.WEBHOOK_CASE_EVENTS),
            ("CASE_TIMERS", Consumer.CASE_TIMERS),
        )
    }


def test_every_request_reply_operation_documents_ok_and_err_replies(documents: dict[Service, dict[str, Any]]) -> None:
    for service, document in documents.items():
        for key, operation in document["operations"].items():
            channel = document["channels"][unquote(operation["channel"]["$ref"].removeprefix("#/channels/"))]
            if ".rpc." not in channel["address"]:
                continue
            assert "reply" in operation, f"{service}: {key} has no reply"
            reply_channel = operation["reply"]["channel"]["$ref"].removeprefix("#/channels/")
            message = document["channels"][reply_channel]["messages"]["Reply"]["$ref"].rsplit("/", 1)[1]
            payload = document["components"]["messages"][message]["payload"]["$ref"].rsplit("/", 1)[1]
            variants = document["components"]["schemas"][payload]["anyOf"]
            assert {variant["properties"]["type"]["enum"][0] for variant in variants} == {"ok", "err"}


def test_payloads_are_documented_as_they_travel(documents: dict[Service, dict[str, Any]]) -> None:
    """camelCase names and msgspec's constraints: the schema msgspec decodes with, not a pydantic guess."""
    schemas = documents[Service.CASE]["components"]["schemas"]
    create = next(schema for name, schema in schemas.items() if name.startswith("CreateCase:"))
    assert set(create["required"]) == {"clientId", "plan", "case"}
    new_case = create["properties"]["case"]
    assert new_case["properties"]["maxAttempts"] == {"type": "integer", "minimum": 0, "maximum": 20, "default": 3}
    assert "senderPersona" in new_case["required"]
    report = next(
        schema
        for name, schema in documents[Service.BILLING]["components"]["schemas"].items()
        if name.startswith("GetUsageReport:")
    )
    assert set(report["properties"]) == {"month", "clientId", "plans"}


def gateway_broker() -> NatsBroker:
    settings = load_settings(GatewaySettings, {})
    broker = create_broker(settings, Service.GATEWAY)
    create_litestar(settings, broker)
    return broker


# Each service's broker as its process wires it (`__main__.build`), with default settings, never connected.
BROKERS: dict[Service, Callable[[], NatsBroker]] = {
    Service.GATEWAY: gateway_broker,
    Service.AUTH: lambda: auth_main.build(load_settings(AuthSettings, {})).broker,
    Service.BILLING: lambda: billing_main.build(load_settings(BillingSettings, {})).broker,
    Service.CASE: lambda: case_main.build(load_settings(CaseSettings, {})).broker,
    Service.AGENTMAIL_ADAPTER: lambda: adapter_main.build(load_settings(AgentMailSettings, {})).broker,
    Service.WEBHOOK: lambda: webhook_main.build(load_settings(WebhookSettings, {})).broker,
}


@pytest.mark.parametrize("service", list(Service))
def test_the_channel_table_receives_what_each_service_subscribes_to(service: Service) -> None:
    """Subjects with their queue group (request/reply), or with their stream and durable consumer: in the code
    exactly as in shared/channels.py."""
    broker = BROKERS[service]()
    durable = {consumer.subject: (consumer.stream, consumer.durable) for consumer in durable_consumers(broker)}
    subscribed = {
        (subscriber.subject.template, subscriber.queue or None, durable.get(subscriber.subject.template))
        # NATS subscribers (core and JetStream) have a subject and a queue group; the base type declares neither.
        for subscriber in cast("list[Any]", broker.subscribers)
    }
    # Request/reply handlers are plain nats-py subscriptions (shared.messaging.responder), not FastStream's.
    subscribed |= {(subject, queue, None) for subject, queue in rpc_handlers(broker)}
    declared = set()
    for channel in CHANNELS:
        if service not in channel.receivers:
            continue
        stream = stream_of(channel.subject)
        consumer = (stream.name, str(channel.consumer)) if stream is not None and channel.consumer else None
        declared.add((channel.subject, queue_group(service) if channel.reply is not None else None, consumer))
    assert subscribed == declared
