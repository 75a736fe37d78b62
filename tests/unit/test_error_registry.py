"""The error registry matches the public contract (docs/api.md, "Error codes") code for code."""

from __future__ import annotations

import msgspec
import pytest

from shared.contracts.rpc import Err, Ok
from shared.errors import ERROR_SPECS, ErrorCode, ServiceError, default_kind, http_status_of

CONTRACT = {
    "INVALID_REQUEST": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "CASE_NOT_FOUND": 404,
    "ATTACHMENT_NOT_FOUND": 404,
    "WEBHOOK_EVENT_NOT_FOUND": 404,  # ours: redeliver names an event the case's delivery log does not have
    "METHOD_NOT_ALLOWED": 405,
    "CASE_NOT_WAITING_FOR_INPUT": 409,
    "INPUT_REQUEST_NOT_PENDING": 409,
    "INPUT_REQUEST_MISMATCH": 409,
    "CASE_NOT_CANCELLABLE": 409,
    "IDEMPOTENCY_KEY_IN_USE": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "IDEMPOTENCY_KEY_MISMATCH": 422,
    "USAGE_LIMIT_REACHED": 429,
    "RATE_LIMITED": 429,
    "INTERNAL_ERROR": 500,
    "SERVICE_UNAVAILABLE": 503,
}


def test_registry_has_exactly_the_contract_codes() -> None:
    assert {code.value for code in ErrorCode} == set(CONTRACT)
    assert set(ERROR_SPECS) == set(ErrorCode)


@pytest.mark.parametrize(("code", "status"), sorted(CONTRACT.items()))
def test_code_maps_to_contract_status(code: str, status: int) -> None:
    assert http_status_of(ErrorCode(code)) == status


def test_service_error_uses_default_message_unless_given() -> None:
    assert ServiceError(ErrorCode.CASE_NOT_FOUND).message == "Case not found."
    assert ServiceError(ErrorCode.CASE_NOT_FOUND, "gone").message == "gone"


def test_every_code_has_a_failure_kind_by_default_and_a_reply_carries_an_explicit_one() -> None:
    assert default_kind(ErrorCode.SERVICE_UNAVAILABLE) == "transient"
    assert default_kind(ErrorCode.RATE_LIMITED) == "transient"
    assert default_kind(ErrorCode.INVALID_REQUEST) == "terminal"
    assert default_kind(ErrorCode.CASE_NOT_FOUND) == "terminal"
    assert default_kind(ErrorCode.INTERNAL_ERROR) is None
    refused = ServiceError(ErrorCode.INTERNAL_ERROR, "AgentMail refused the request", kind="terminal")
    wire = msgspec.json.encode(Err.of(refused))
    decoded = msgspec.json.decode(wire, type=Ok[int] | Err)
    assert isinstance(decoded, Err)
    assert decoded.to_exception().kind == "terminal"
    # A reply from a service that does not send a kind gets the code's default.
    legacy = msgspec.json.decode(b'{"type":"err","code":"SERVICE_UNAVAILABLE","message":"x"}', type=Ok[int] | Err)
    assert isinstance(legacy, Err)
    assert legacy.to_exception().kind == "transient"
