"""Pure webhook rules: the body matches Offload's documented examples, the signature is Standard Webhooks', and
each attempt's outcome moves the delivery along the retry schedule."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from services.webhook.domain import AttemptResult, NextStep, after_attempt, delay_before_attempt, verdict, webhook_body
from services.webhook.signing import signature_headers
from shared.contracts.case import EventType
from tests.support.webhook import DOCUMENTED_CASE_ID, documented_bodies, documented_events

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SCHEDULE = (0.0, 5.0, 300.0)


@pytest.mark.parametrize("event_type", ["case.completed", "case.failed", "case.input_needed", "case.cancelled"])
def test_the_body_is_field_for_field_the_documented_example(event_type: EventType) -> None:
    event = documented_events("client-1", "https://hooks.example.com/x", case_id=DOCUMENTED_CASE_ID)[event_type]
    body = json.loads(webhook_body(event))
    expected = documented_bodies(DOCUMENTED_CASE_ID)[event_type]
    assert list(body) == ["event_id", "event_type", "timestamp", "data"]
    assert body == expected
    # Field for field, so a failure names the field.
    for field, value in expected["data"].items():
        assert body["data"][field] == value, field
    assert set(body["data"]) == set(expected["data"])


def test_the_documented_event_id_is_built_from_case_type_and_updated_at() -> None:
    event = documented_events("client-1", None, case_id=DOCUMENTED_CASE_ID)["case.completed"]
    assert event.event_id == "evt_4fc5904d-0e44-4ed3-aa57-c4a47ad0ae4f_case_completed_1774131900000"
    assert event.timestamp == 1_774_131_900_000


def test_the_body_bytes_are_minified_json_and_never_carry_internal_fields() -> None:
    event = documented_events("client-1", "https://hooks.example.com/secret-path")["case.completed"]
    body = webhook_body(event)
    assert b": " not in body
    assert b"https://hooks.example.com" not in body
    assert b"client-1" not in body


def test_signature_headers_verify_with_the_standard_webhooks_library() -> None:
    body = b'{"event_id":"evt_1","data":{}}'
    at = dt.datetime.now(dt.UTC)
    headers = signature_headers(SECRET, event_id="evt_1", body=body, at=at)
    assert headers["webhook-id"] == "evt_1"
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers) == {"event_id": "evt_1", "data": {}}
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY").verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body + b" ", headers)


def test_another_attempt_second_gets_another_signature_for_the_same_id() -> None:
    body = b"{}"
    at = dt.datetime.now(dt.UTC)
    first = signature_headers(SECRET, event_id="evt_1", body=body, at=at)
    later = signature_headers(SECRET, event_id="evt_1", body=body, at=at + dt.timedelta(seconds=1))
    assert first["webhook-id"] == later["webhook-id"]
    assert first["webhook-signature"] != later["webhook-signature"]


def result(status: int | None, *, refused: bool = False) -> AttemptResult:
    return AttemptResult(status=status, error=None if status else "boom", latency_ms=3, refused=refused)


@pytest.mark.parametrize(
    ("status", "refused", "expected"),
    [
        (200, False, "delivered"),
        (201, False, "delivered"),
        (204, False, "delivered"),
        (299, False, "delivered"),
        (410, False, "gone"),
        (None, True, "refused"),
        (None, False, "retry"),  # network error or timeout
        (199, False, "retry"),
        (301, False, "retry"),  # 3xx is a failure: redirects are never followed
        (302, False, "retry"),
        (304, False, "retry"),
        (400, False, "retry"),
        (404, False, "retry"),
        (429, False, "retry"),
        (500, False, "retry"),
        (503, False, "retry"),
    ],
)
def test_what_an_attempt_outcome_means(status: int | None, refused: bool, expected: str) -> None:
    assert verdict(result(status, refused=refused)) == expected


@pytest.mark.parametrize(
    ("attempt", "status", "refused", "expected"),
    [
        (1, 500, False, NextStep("pending", 5.0)),
        (2, None, False, NextStep("pending", 300.0)),
        (3, 500, False, NextStep("failed", None)),  # the schedule is exhausted
        (1, 200, False, NextStep("delivered", None)),
        (3, 204, False, NextStep("delivered", None)),
        (1, 410, False, NextStep("gone", None)),
        (1, None, True, NextStep("failed", None)),  # refused destinations are never retried
        (2, 302, False, NextStep("pending", 300.0)),
    ],
)
def test_the_delivery_moves_along_the_schedule(
    attempt: int, status: int | None, refused: bool, expected: NextStep
) -> None:
    assert after_attempt(SCHEDULE, attempt=attempt, result=result(status, refused=refused)) == expected


def test_the_default_schedule_reads_as_documented() -> None:
    from shared.settings import WebhookSettings, load_settings

    schedule = load_settings(WebhookSettings, {}).webhook_retry_schedule_seconds
    # immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (docs/api.md, Svix's schedule).
    assert [delay_before_attempt(schedule, n) for n in range(1, 10)] == [
        0,
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        36000,
        None,
    ]
