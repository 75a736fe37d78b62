"""The adapter's pure parts: Svix verification, AgentMail payloads → Caseflow events, Idempotency-Key and
attempt-label derivation."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from svix.webhooks import Webhook

from services.agentmail_adapter.handlers import attempt_label, attempt_of_labels, idempotency_key
from services.agentmail_adapter.payloads import Message, WebhookEvent
from services.agentmail_adapter.webhooks import (
    WebhookVerifier,
    body_text,
    delivery_event,
    html_to_text,
    is_auto_submitted,
    message_received,
)
from shared.errors import ErrorCode, ServiceError

SECRET = "whsec_ZGV2LW9ubHktYWdlbnRtYWlsLXdlYmhvb2stc2VjcmV0"
BODY = json.dumps({"type": "event", "event_type": "message.sent", "event_id": "evt-1"}).encode()


def headers_for(body: bytes, *, at: datetime | None = None, secret: str = SECRET) -> dict[str, str]:
    moment = at or datetime.now(UTC)
    return {
        "svix-id": "msg_1",
        "svix-timestamp": str(int(moment.timestamp())),
        "svix-signature": Webhook(secret).sign("msg_1", moment, body.decode()),
    }


def test_a_fresh_valid_signature_yields_the_event() -> None:
    event = WebhookVerifier(SECRET).verify(BODY, headers_for(BODY))
    assert (event.event_type, event.event_id) == ("message.sent", "evt-1")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda: {}, id="missing"),
        pytest.param(lambda: headers_for(BODY, secret="whsec_b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA=="), id="wrong-secret"),
        pytest.param(lambda: headers_for(BODY, at=datetime.now(UTC) - timedelta(minutes=5, seconds=30)), id="stale"),
        pytest.param(lambda: headers_for(BODY, at=datetime.now(UTC) + timedelta(minutes=6)), id="future"),
        pytest.param(lambda: {**headers_for(BODY), "svix-signature": "garbage"}, id="malformed"),
        pytest.param(lambda: {**headers_for(BODY), "svix-signature": "v1,@@@"}, id="not-base64"),
        pytest.param(lambda: {**headers_for(BODY), "svix-timestamp": "yesterday"}, id="bad-timestamp"),
    ],
)
def test_bad_signatures_are_invalid_requests(headers: Callable[[], dict[str, str]]) -> None:
    # Built when the test runs, not at collection: "stale" and "future" are relative to now.
    with pytest.raises(ServiceError) as error:
        WebhookVerifier(SECRET).verify(BODY, headers())
    assert error.value.code is ErrorCode.INVALID_REQUEST


def test_a_tampered_body_or_a_signed_non_event_is_an_invalid_request() -> None:
    with pytest.raises(ServiceError):
        WebhookVerifier(SECRET).verify(BODY.replace(b"evt-1", b"evt-2"), headers_for(BODY))
    junk = b'{"hello": "world"}'
    with pytest.raises(ServiceError) as error:
        WebhookVerifier(SECRET).verify(junk, headers_for(junk))
    assert "not an AgentMail event" in error.value.message


def message(**fields: Any) -> Message:
    base: dict[str, Any] = {
        "inbox_id": "caseflow@sim.example",
        "thread_id": "t-1",
        "message_id": "<m-1@x>",
        "timestamp": "2026-09-01T10:00:00Z",
        "from": "Jane Doe <jane@example.com>",
        "to": ["Caseflow <caseflow@sim.example>"],
    }
    return msgspec.convert({**base, **fields}, Message)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"extracted_text": "new", "text": "new\n> old", "html": "<p>x</p>"}, "new"),
        ({"text": "new\n> old", "html": "<p>x</p>"}, "new\n> old"),
        ({"html": "<p>Hello&nbsp;<b>there</b></p><p>Jane</p>"}, "Hello there\nJane"),
        ({}, None),
    ],
)
def test_body_text_prefers_extracted_text_then_text_then_html(fields: dict[str, Any], expected: str | None) -> None:
    assert body_text(message(**fields)) == expected


@pytest.mark.parametrize(
    ("headers", "auto"),
    [
        ({}, False),
        ({"Auto-Submitted": "no"}, False),
        ({"auto-submitted": "auto-replied"}, True),
        ({"AUTO-SUBMITTED": " Auto-Generated "}, True),
        ({"Auto-Submitted": "no\r\nX-Injected: yes"}, False),  # the keyword is the first token (RFC 3834)
        ({"Auto-Submitted": "auto-replied; owner-email=a@b.example"}, True),
        ({"Auto-Submitted": ""}, True),
    ],
)
def test_auto_submitted_is_any_value_but_no(headers: dict[str, str], auto: bool) -> None:
    assert is_auto_submitted(message(headers=headers)) is auto


def test_message_received_carries_bare_addresses_unix_ms_and_attachment_defaults() -> None:
    received = message_received(
        "evt-9",
        message(subject=None, in_reply_to="<m-0@x>", attachments=[{"attachment_id": "a-1", "size": 3}]),
        "hi",
    )
    assert (received.from_address, received.to, received.subject) == ("jane@example.com", ["caseflow@sim.example"], "")
    assert received.received_at == 1788256800000
    assert received.in_reply_to == "<m-0@x>"
    assert [(a.filename, a.content_type, a.size) for a in received.attachments] == [("", "application/octet-stream", 3)]


REF = {"inbox_id": "i", "thread_id": "t", "message_id": "<m@x>", "timestamp": "2026-09-01T10:00:00.500Z"}


@pytest.mark.parametrize(
    ("payload", "kind", "detail"),
    [
        ({"event_type": "message.delivered", "delivery": {**REF, "recipients": ["a@x"]}}, "delivered", ""),
        (
            {
                "event_type": "message.bounced",
                "bounce": {**REF, "type": "Permanent", "sub_type": "General", "recipients": []},
            },
            "bounced",
            "Permanent/General",
        ),
        (
            {"event_type": "message.complained", "complaint": {**REF, "type": "abuse", "sub_type": ""}},
            "complained",
            "abuse",
        ),
        ({"event_type": "message.rejected", "reject": {**REF, "reason": "blocked"}}, "rejected", "blocked"),
    ],
)
def test_delivery_webhooks_map_to_delivery_events(payload: dict[str, Any], kind: str, detail: str) -> None:
    event = delivery_event(_event(payload))
    assert event is not None
    assert (event.kind, event.detail, event.message_id, event.at) == (kind, detail, "<m@x>", 1788256800500)
    assert event.event_id == "evt"


@pytest.mark.parametrize(
    "payload",
    [
        {"event_type": "message.sent", "send": {**REF, "recipients": []}},
        {"event_type": "message.delivered"},
        {"event_type": "domain.verified", "domain": {"domain_id": "d"}},
    ],
)
def test_other_or_incomplete_events_map_to_nothing(payload: dict[str, Any]) -> None:
    assert delivery_event(_event(payload)) is None


def _event(payload: dict[str, Any]) -> WebhookEvent:
    return msgspec.convert({"type": "event", "event_id": "evt", **payload}, WebhookEvent)


def test_html_to_text_drops_markup_styles_and_blank_lines() -> None:
    html = "<html><head><style>p{color:red}</style></head><body><div>One<br>Two</div>\n\n<p> Three  four </p></body>"
    assert html_to_text(html) == "One\nTwo\nThree four"


@pytest.mark.parametrize(
    ("case_id", "attempt", "expected"),
    [("6f1c2d3e-aaaa-bbbb-cccc-000000000001", 2, "6f1c2d3e-aaaa-bbbb-cccc-000000000001.2"), ("case_1", 1, "case_1.1")],
)
def test_idempotency_key_is_the_case_and_attempt(case_id: str, attempt: int, expected: str) -> None:
    assert idempotency_key(case_id, attempt) == expected


def test_idempotency_key_hashes_ids_agentmail_would_refuse() -> None:
    key = idempotency_key("case:with spaces/and slashes", 1)
    assert key.startswith("sha256-")
    assert key == idempotency_key("case:with spaces/and slashes", 1)
    assert key != idempotency_key("case:with spaces/and slashes", 2)
    assert idempotency_key("x" * 300, 1).startswith("sha256-")


def test_the_attempt_label_gives_back_its_case_and_attempt_and_other_labels_give_nothing() -> None:
    case_id = "6f1c2d3e-aaaa-bbbb-cccc-000000000001"
    assert attempt_of_labels(["sent", attempt_label(case_id, 12)]) == (case_id, 12)
    assert attempt_of_labels(["sent", "unread"]) is None
    assert attempt_of_labels(["caseflow-attempt.no-attempt-number", "caseflow-attempt..3"]) is None
