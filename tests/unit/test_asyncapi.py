"""The AsyncAPI documents under docs/asyncapi: current with the code, and complete.

Regeneration runs `python -m deploy.asyncapi` in a subprocess, as `make docs` does (it builds every service's
broker and teaches pydantic about msgspec, which is nothing to do inside the test process).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, get_args
from urllib.parse import unquote

import pytest
import yaml

from shared.contracts import agentmail, auth, billing, case, webhook
from shared.contracts.case import EventType, event_subject
from shared.subjects import BACKEND_SERVICES, Consumer, Service, health_subject
from tests.support.processes import ROOT

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
        if name.startswith("ReportUsageByClient:")
    )
    assert set(report["properties"]) == {"month", "clientId", "plans"}
