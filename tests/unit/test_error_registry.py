"""The error registry matches the public contract (docs/api.md, "Error codes") code for code."""

from __future__ import annotations

import pytest

from shared.errors import ERROR_SPECS, ErrorCode, ServiceError, http_status_of

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
