"""Helpers for webhook tests: Offload's documented webhook examples as case events, signature checks, and a
rig of real processes (a NATS server of its own, the auth service, webhook-service processes per test).

The rig has its own NATS server because its webhook services would otherwise share the durable consumer of
case events, and the request subjects, with the session's e2e stack.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec
from faststream.nats import NatsBroker
from standardwebhooks import Webhook

from deploy.processes import ManagedProcess, NatsServer, Stack
from services.case.domain import case_event
from services.case.model import CaseRecord, InputRequestRecord
from shared.contracts.case import (
    NOTHING_SCHEDULED,
    AttachmentMeta,
    CaseEvent,
    Counterparty,
    EventType,
    Goal,
    SenderPersona,
    event_subject,
)
from shared.messaging.jetstream import publish_durable
from shared.subjects import CASE_EVENTS
from tests.support.api import admin, new_client
from tests.support.receivers import Received
from tests.support.simulator import eventually

type Json = dict[str, Any]

DOCUMENTED_CASE_ID: Final = "4fc5904d-0e44-4ed3-aa57-c4a47ad0ae4f"
UPDATED_AT: Final[dict[EventType, int]] = {
    "case.completed": 1_774_131_900_000,
    "case.failed": 1_774_131_900_200,
    "case.input_needed": 1_774_131_900_300,
    "case.cancelled": 1_774_131_900_400,
}
ATTACHMENT: Final = {
    "attachmentId": "63016fee-8a1b-4c1e-9d2f-3b5a7c9e1f20",
    "name": "vendor-w9.pdf",
    "size": 904860,
    "type": "application/pdf",
    "messageId": "<message-id@example.com>",
    "inboxId": "dev-test@agentmail.to",
    "receivedAt": 1_774_131_900_000,
}
QUESTION: Final = "The vendor asked whether a signed PDF is acceptable. How should I respond?"
INPUT_REQUEST_ID: Final = "c8c6a7ca-5b2d-4e8f-9a1c-2d3e4f5a6b7c"


def _case(case_id: str, client_id: str, url: str | None, event_type: EventType, **fields: Any) -> CaseRecord:
    return CaseRecord(
        case_id=case_id,
        client_id=client_id,
        created_at=1_774_131_000_000,
        updated_at=UPDATED_AT[event_type],
        next_action_at=NOTHING_SCHEDULED,
        max_attempts=3,
        follow_up_delay_hours=72,
        channel="EMAIL",
        goal=Goal(objective="Collect a signed W-9 from the vendor"),
        counterparty=Counterparty(address="maya@northstar.example", name="Maya Chen"),
        sender_persona=SenderPersona(name="Avery"),
        client_webhook_url=url,
        **fields,
    )


def documented_records(case_id: str, client_id: str, url: str | None) -> dict[EventType, CaseRecord]:
    """Cases in the state of each example of offload-spec §4.4 (plus our cancelled event)."""
    return {
        "case.completed": _case(
            case_id,
            client_id,
            url,
            "case.completed",
            status="COMPLETED",
            client_reference_id="vendor_2048",
            attempt_count=2,
            attachments=[msgspec.convert(ATTACHMENT, AttachmentMeta)],
            result_status="goal_achieved",
            result={"signedW9Received": True, "receivedAt": "2026-03-21T15:42:00Z"},
            metadata={"vendorId": "vendor_2048"},
        ),
        "case.failed": _case(
            case_id, client_id, url, "case.failed", status="FAILED", attempt_count=3, result_status="max_retries"
        ),
        "case.input_needed": _case(
            case_id,
            client_id,
            url,
            "case.input_needed",
            status="INPUT_NEEDED",
            client_reference_id="vendor_2048",
            attempt_count=1,
            input_request=InputRequestRecord(
                id=INPUT_REQUEST_ID, question=QUESTION, status="PENDING", requested_at=1_774_131_900_300
            ),
        ),
        "case.cancelled": _case(
            case_id,
            client_id,
            url,
            "case.cancelled",
            status="CANCELLED",
            client_reference_id="vendor_2048",
            attempt_count=1,
            result_status="cancelled",
            metadata={"vendorId": "vendor_2048"},
        ),
    }


def documented_bodies(case_id: str) -> dict[EventType, Json]:
    """The webhook bodies of offload-spec §4.2/§4.4, field for field, for case `case_id`."""

    def envelope(event_type: EventType, data: Json) -> Json:
        updated_at = UPDATED_AT[event_type]
        event_id = f"evt_{case_id}_{event_type.replace('.', '_')}_{updated_at}"
        return {"event_id": event_id, "event_type": event_type, "timestamp": updated_at, "data": data}

    return {
        "case.completed": envelope(
            "case.completed",
            {
                "caseId": case_id,
                "clientReferenceId": "vendor_2048",
                "status": "COMPLETED",
                "channel": "EMAIL",
                "attemptCount": 2,
                "attachments": [ATTACHMENT],
                "resultStatus": "goal_achieved",
                "result": {"signedW9Received": True, "receivedAt": "2026-03-21T15:42:00Z"},
                "metadata": {"vendorId": "vendor_2048"},
            },
        ),
        "case.failed": envelope(
            "case.failed",
            {
                "caseId": case_id,
                "status": "FAILED",
                "channel": "EMAIL",
                "attemptCount": 3,
                "attachments": [],
                "resultStatus": "max_retries",
                "failureReason": None,
            },
        ),
        "case.input_needed": envelope(
            "case.input_needed",
            {
                "caseId": case_id,
                "clientReferenceId": "vendor_2048",
                "status": "INPUT_NEEDED",
                "channel": "EMAIL",
                "attemptCount": 1,
                "attachments": [],
                "inputRequest": QUESTION,
                "inputRequestId": INPUT_REQUEST_ID,
                "inputRequestStatus": "PENDING",
                "inputRequestedAt": 1_774_131_900_300,
            },
        ),
        "case.cancelled": envelope(
            "case.cancelled",
            {
                "caseId": case_id,
                "clientReferenceId": "vendor_2048",
                "status": "CANCELLED",
                "channel": "EMAIL",
                "attemptCount": 1,
                "attachments": [],
                "resultStatus": "cancelled",
                "metadata": {"vendorId": "vendor_2048"},
            },
        ),
    }


def event_of(record: CaseRecord, event_type: EventType) -> CaseEvent:
    """The case event the case service publishes for `record` (built by its own domain code)."""
    return msgspec.json.decode(case_event(record, event_type).payload, type=CaseEvent)


def documented_events(client_id: str, url: str | None, *, case_id: str | None = None) -> dict[EventType, CaseEvent]:
    case_id = case_id or str(uuid.uuid4())
    return {kind: event_of(record, kind) for kind, record in documented_records(case_id, client_id, url).items()}


def completed_event(client_id: str, url: str | None) -> CaseEvent:
    """A fresh case.completed event (new case id, so a new event id) for `url`."""
    return documented_events(client_id, url)["case.completed"]


def verified(received: Received, secret: str) -> Json:
    """The body, after checking its Standard Webhooks signature with `secret` (raises if it does not verify)."""
    body: Json = Webhook(secret).verify(received.body, received.headers)
    return body


async def publish_events(broker: NatsBroker, events: list[CaseEvent]) -> None:
    """Publish as the case service's outbox relay does: subject by type, Nats-Msg-Id = event id."""
    await asyncio.gather(
        *(
            publish_durable(broker, event_subject(e.event_type), e, stream=CASE_EVENTS, msg_id=e.event_id)
            for e in events
        )
    )


class WebhookService:
    """One webhook-service process of the rig; can be killed (SIGKILL) and started again."""

    def __init__(self, rig: WebhookRig, *, name: str, env: Mapping[str, str]) -> None:
        self.process = ManagedProcess(
            name, [sys.executable, "-m", "services.webhook"], env={**rig.stack.env, **env}, log_dir=rig.log_dir
        )

    def _starts(self) -> int:
        return sum(1 for line in self.process.json_log_lines() if line.get("msg") == "service started")

    async def start(self, *, timeout: float = 30.0) -> None:
        """Start the process and wait until it consumes events and runs its dispatcher."""
        before = self._starts()
        self.process.start()

        async def started() -> bool | None:
            if not self.process.running:
                raise AssertionError(f"{self.process.name} exited:\n{self.process.log_text()[-3000:]}")
            return True if self._starts() > before else None

        await eventually(started, timeout=timeout, what=f"{self.process.name} to start")

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> int:
        """SIGTERM; returns the exit code."""
        return self.process.stop()


class WebhookRig:
    """NATS of its own, the real auth service (secrets and the admin CLI), and webhook services per test."""

    def __init__(self, *, work_dir: Path, mongo_url: str) -> None:
        self.log_dir = work_dir
        self.nats = NatsServer(log_dir=work_dir, store_dir=work_dir / "jetstream")
        self.stack = Stack(
            log_dir=work_dir,
            nats=self.nats,
            mongo_url=mongo_url,
            env={"LOG_LEVEL": "DEBUG", "MONGO_DB": f"webhook_rig_{uuid.uuid4().hex[:8]}"},
        )
        self.auth = self.stack.services["auth"]

    def start(self) -> None:
        self.nats.start()
        self.auth.start()

    def stop(self) -> None:
        self.auth.stop()
        self.nats.stop()

    def new_client(self) -> Json:
        """A client made by the real admin CLI: {clientId, keyId, apiKey, webhookSecret}."""
        return new_client(self.stack)

    async def rotate_secret(self, client_id: str) -> str:
        rotated = await asyncio.to_thread(admin, self.stack, "rotate-webhook-secret", client_id)
        secret = rotated["webhookSecret"]
        assert isinstance(secret, str)
        return secret

    def webhook_service(self, *, mongo_db: str, **env: str) -> WebhookService:
        return WebhookService(self, name=f"webhook-{uuid.uuid4().hex[:6]}", env={"MONGO_DB": mongo_db, **env})
