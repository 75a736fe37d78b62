"""Pure case rules for the API side: create, input (check order) and cancel through the lifecycle, views and
webhook data."""

from __future__ import annotations

import msgspec
import pytest

from services.case import domain
from services.case.lifecycle import CancelRequested, InputProvided, Timing, apply_request
from services.case.model import CaseRecord, InputRequestRecord, from_document, to_document
from shared.contracts.case import (
    CMD_INPUT_PROVIDED,
    NOTHING_SCHEDULED,
    CaseEvent,
    InputProvidedCommand,
    NewCase,
)
from shared.errors import ErrorCode, ServiceError

BODY = msgspec.convert(
    {
        "channel": "EMAIL",
        "goal": {"objective": "Collect a signed W-9", "knowledge": {"vendor": "Northstar"}},
        "counterparty": {"address": "ap@northstar.example", "name": "Maya"},
        "senderPersona": {"name": "Avery"},
        "clientWebhookUrl": "https://hooks.example.com/x",
        "metadata": {"vendorId": "v1"},
    },
    NewCase,
)


def at(now: int) -> Timing:
    return Timing(now=now, hour_ms=1_000)


def created() -> CaseRecord:
    return domain.new_case(
        case_id="c1", client_id="alice", body=BODY, now=1_000, confirm_by=36_000, usage_month="2026-12"
    )


def waiting_for_input(*, request_status: str = "PENDING") -> CaseRecord:
    request = InputRequestRecord(id="req-1", question="PDF ok?", status=request_status, requested_at=2_000)  # type: ignore[arg-type]
    return msgspec.structs.replace(
        created(), status="INPUT_NEEDED", input_request=request, pending_create=False, outbox=[], updated_at=2_000
    )


def test_a_new_case_is_stored_visible_owing_nothing_and_waits_for_its_confirmation() -> None:
    record = created()
    assert record.status == "CREATED"
    assert record.attempt_count == 0
    assert record.next_action_at == NOTHING_SCHEDULED
    assert record.pending_create is False
    # No second write to show it and no outbox to relay: the gateway's confirmation starts it.
    assert record.outbox == []
    assert record.outbox_pending_since is None
    assert (record.confirm_by, record.usage_month) == (36_000, "2026-12")
    assert domain.awaiting_confirmation(record)
    assert domain.ensure_owner(record, "alice") is record


def test_a_started_case_no_longer_awaits_its_confirmation() -> None:
    assert not domain.awaiting_confirmation(msgspec.structs.replace(created(), awaiting_send=1))
    assert not domain.awaiting_confirmation(msgspec.structs.replace(created(), status="CANCELLED"))
    assert not domain.awaiting_confirmation(msgspec.structs.replace(created(), confirm_by=None))


def test_the_record_survives_a_round_trip_through_a_document() -> None:
    record = created()
    assert from_document(to_document(record)) == record


def test_another_clients_case_is_forbidden_and_a_missing_one_not_found() -> None:
    record = msgspec.structs.replace(created(), pending_create=False)
    assert domain.ensure_owner(record, "alice") is record
    with pytest.raises(ServiceError) as other:
        domain.ensure_owner(record, "mallory")
    assert other.value.code is ErrorCode.FORBIDDEN
    with pytest.raises(ServiceError) as missing:
        domain.ensure_owner(None, "alice")
    assert missing.value.code is ErrorCode.CASE_NOT_FOUND


@pytest.mark.parametrize(
    ("record", "request_id", "code"),
    [
        (msgspec.structs.replace(created(), status="RUNNING"), "req-1", ErrorCode.CASE_NOT_WAITING_FOR_INPUT),
        (waiting_for_input(request_status="RESOLVED"), "req-1", ErrorCode.INPUT_REQUEST_NOT_PENDING),
        # Not pending wins over mismatch: the contract checks pending before the id.
        (waiting_for_input(request_status="RESOLVED"), "stale", ErrorCode.INPUT_REQUEST_NOT_PENDING),
        (waiting_for_input(), "stale", ErrorCode.INPUT_REQUEST_MISMATCH),
    ],
)
def test_input_checks_run_in_the_contract_order(record: CaseRecord, request_id: str, code: ErrorCode) -> None:
    with pytest.raises(ServiceError) as caught:
        apply_request(record, InputProvided(input_request_id=request_id, provided_context="yes"), at(3_000))
    assert caught.value.code is code


def test_accepted_input_resolves_the_request_and_owes_the_worker_the_answer() -> None:
    resolved = apply_request(
        waiting_for_input(), InputProvided(input_request_id="req-1", provided_context="Yes"), at(3_000)
    )
    assert resolved.status == "INPUT_NEEDED"
    assert resolved.input_request is not None
    assert resolved.input_request.status == "RESOLVED"
    (command,) = resolved.outbox
    assert command.subject == CMD_INPUT_PROVIDED
    payload = msgspec.json.decode(command.payload, type=InputProvidedCommand)
    assert payload.provided_context == "Yes"
    # The answer is kept on the case, so the reconciler can queue it again from the case alone.
    assert (resolved.input_request.provided_context, resolved.input_request.answer_queued_at) == ("Yes", 3_000)


def test_cancel_stops_an_open_case_and_owes_a_cancelled_event() -> None:
    record = msgspec.structs.replace(created(), status="RUNNING", pending_create=False, outbox=[], next_action_at=9)
    cancelled = apply_request(record, CancelRequested(), at(5_000))
    assert (cancelled.status, cancelled.result_status, cancelled.next_action_at) == (
        "CANCELLED",
        "cancelled",
        NOTHING_SCHEDULED,
    )
    (message,) = cancelled.outbox
    event = msgspec.json.decode(message.payload, type=CaseEvent)
    assert event.event_type == "case.cancelled"
    assert event.event_id == f"evt_c1_case_cancelled_{cancelled.updated_at}"
    assert event.webhook_url == "https://hooks.example.com/x"
    assert message.msg_id == event.event_id


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "CANCELLED"])
def test_a_terminal_case_cannot_be_cancelled(status: str) -> None:
    record = msgspec.structs.replace(created(), status=status)
    with pytest.raises(ServiceError) as caught:
        apply_request(record, CancelRequested(), at(5_000))
    assert caught.value.code is ErrorCode.CASE_NOT_CANCELLABLE


def test_the_view_never_shows_the_webhook_url_or_internal_fields() -> None:
    encoded = msgspec.json.decode(msgspec.json.encode(domain.view(created())))
    assert "clientWebhookUrl" not in encoded
    assert "threadId" not in encoded
    assert "outbox" not in encoded
    assert encoded["inputRequest"] is None
    assert encoded["metadata"] == {"vendorId": "v1"}
    assert "conversationThread" not in encoded


def test_free_form_client_json_is_stored_as_text_and_comes_back_unchanged() -> None:
    awkward: dict[str, object] = {"$gt": "", "a.b": 1, "big": 10**30, "deep": {}}
    node = awkward["deep"]
    for _ in range(150):  # deeper than MongoDB's 100-level limit
        assert isinstance(node, dict)
        node["next"] = {}
        node = node["next"]
    record = msgspec.structs.replace(
        created(),
        metadata=awkward,
        result_schema={"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"},
        result={"taxId.v2": "12-3456789"},
    )
    document = to_document(record)
    assert "metadata" not in document
    assert isinstance(document["metadataJson"], str)
    assert isinstance(document["goal"]["knowledgeJson"], str)
    assert from_document(document) == record
