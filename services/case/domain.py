"""Pure case rules for the API side: creating a case, ownership, and what clients see (views, webhook data).

No I/O here: functions take a record and the time and return a new record (with any owed messages in its
outbox) or raise a ServiceError with the contract's code. Every change of an existing case, the client's
cancel and input included, is an event of the one transition table in `lifecycle.py`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from services.case.model import CaseRecord, OutboxMessage, address_key
from shared.contracts.case import (
    NOTHING_SCHEDULED,
    CaseEvent,
    CaseEventData,
    CaseView,
    EventType,
    InputRequestView,
    NewCase,
    StatusChange,
    case_event_id,
    event_subject,
)
from shared.errors import ErrorCode, ServiceError
from shared.subjects import CASE_EVENTS

# The outbox relay leaves a case's owed messages to the writer's own publish for this long before it
# publishes them itself.
RELAY_GRACE_MS = 30_000


def outbox_message(*, subject: str, stream_name: str, msg_id: str, payload: msgspec.Struct) -> OutboxMessage:
    return OutboxMessage(msg_id=msg_id, subject=subject, stream=stream_name, payload=msgspec.json.encode(payload))


def with_outbox(record: CaseRecord, messages: list[OutboxMessage], *, now: int) -> CaseRecord:
    if not messages:
        return record
    return msgspec.structs.replace(
        record,
        outbox=[*record.outbox, *messages],
        outbox_pending_since=record.outbox_pending_since or now,
    )


def new_case(
    *,
    case_id: str,
    client_id: str,
    body: NewCase,
    now: int,
    confirm_by: int | None = None,
    usage_month: str | None = None,
) -> CaseRecord:
    """A CREATED case, visible at once, that nothing starts until its create is confirmed (the gateway publishes
    its created command); unconfirmed by `confirm_by`, the reconciler removes it."""
    return CaseRecord(
        case_id=case_id,
        client_id=client_id,
        status="CREATED",
        created_at=now,
        updated_at=now,
        next_action_at=NOTHING_SCHEDULED,
        max_attempts=body.max_attempts,
        follow_up_delay_hours=body.follow_up_delay_hours,
        channel=body.channel,
        goal=body.goal,
        counterparty=body.counterparty,
        counterparty_key=address_key(body.counterparty.address),
        sender_persona=body.sender_persona,
        client_reference_id=body.client_reference_id,
        constraints=body.constraints,
        result_schema=body.result_schema,
        client_webhook_url=body.client_webhook_url,
        metadata=body.metadata,
        confirm_by=confirm_by,
        usage_month=usage_month,
        status_history=[StatusChange(status="CREATED", at=now, cause="created")],
    )


def awaiting_confirmation(record: CaseRecord) -> bool:
    """Created and never started: its first email waits for the create's confirmation."""
    return (
        record.status == "CREATED"
        and record.confirm_by is not None
        and record.awaiting_send is None
        and record.attempt_count == 0
    )


def ensure_owner(record: CaseRecord | None, client_id: str) -> CaseRecord:
    if record is None or record.pending_create:
        raise ServiceError(ErrorCode.CASE_NOT_FOUND)
    if record.client_id != client_id:
        # Offload answers 403 for another client's case; the message says nothing about the case.
        raise ServiceError(ErrorCode.FORBIDDEN)
    return record


def case_event(record: CaseRecord, event_type: EventType) -> OutboxMessage:
    event_id = case_event_id(record.case_id, event_type, record.updated_at)
    event = CaseEvent(
        event_id=event_id,
        event_type=event_type,
        timestamp=record.updated_at,
        client_id=record.client_id,
        webhook_url=record.client_webhook_url,
        data=event_data(record, event_type),
    )
    return outbox_message(
        subject=event_subject(event_type), stream_name=CASE_EVENTS.name, msg_id=event_id, payload=event
    )


def _unset_if_none(value: Any) -> Any:
    return msgspec.UNSET if value is None else value


def event_data(record: CaseRecord, event_type: EventType) -> CaseEventData:
    """The webhook `data` object, field for field as Offload sends it."""
    request = record.input_request if event_type == "case.input_needed" else None
    return CaseEventData(
        case_id=record.case_id,
        status=record.status,
        channel=record.channel,
        attempt_count=record.attempt_count,
        attachments=record.attachments,
        client_reference_id=_unset_if_none(record.client_reference_id),
        result_status=_unset_if_none(record.result_status),
        result=_unset_if_none(record.result),
        metadata=_unset_if_none(record.metadata),
        # case.failed always says why, even when there is no more to say than null.
        failure_reason=record.failure_reason if event_type == "case.failed" else msgspec.UNSET,
        input_request=request.question if request else msgspec.UNSET,
        input_request_id=request.id if request else msgspec.UNSET,
        input_request_status=request.status if request else msgspec.UNSET,
        input_requested_at=request.requested_at if request else msgspec.UNSET,
    )


def status_history(record: CaseRecord) -> list[StatusChange]:
    """The case's status timeline; for a case stored before timelines, derived: created, then (if it moved)
    its current status at its updatedAt, marked `unrecorded`."""
    if record.status_history:
        return record.status_history
    derived = [StatusChange(status="CREATED", at=record.created_at, cause="created")]
    if record.status != "CREATED":
        derived.append(StatusChange(status=record.status, at=record.updated_at, cause="unrecorded"))
    return derived


def view(record: CaseRecord) -> CaseView:
    """What `GET /cases/{id}` shows: never the webhook URL, provider ids or internal scheduling fields."""
    request = record.input_request
    return CaseView(
        case_id=record.case_id,
        status=record.status,
        created_at=record.created_at,
        updated_at=record.updated_at,
        next_action_at=record.next_action_at,
        attempt_count=record.attempt_count,
        max_attempts=record.max_attempts,
        follow_up_delay_hours=record.follow_up_delay_hours,
        channel=record.channel,
        counterparty=record.counterparty,
        attachments=record.attachments,
        goal=record.goal,
        sender_persona=record.sender_persona,
        input_request=(
            InputRequestView(
                id=request.id,
                question=request.question,
                status=request.status,
                requested_at=request.requested_at,
            )
            if request
            else None
        ),
        client_reference_id=record.client_reference_id,
        result_status=record.result_status,
        result=record.result,
        result_schema=record.result_schema,
        constraints=record.constraints,
        metadata=record.metadata,
        failure_reason=record.failure_reason,
        status_history=status_history(record),
        status_history_omitted=record.status_history_omitted,
    )
