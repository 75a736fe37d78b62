"""A service's shed reply carries its Retry-After to the gateway, which sends it as the HTTP header."""

from __future__ import annotations

from typing import Any, cast

import msgspec

from services.gateway.errors import ErrorResponder
from shared.contracts.rpc import Err, Ok
from shared.errors import ErrorCode, ServiceError


def test_the_wait_a_service_asks_for_survives_the_reply_and_becomes_the_retry_after_header() -> None:
    sent = Err(code=ErrorCode.SERVICE_UNAVAILABLE, message="full", kind="transient", retry_after_seconds=7)
    received = msgspec.json.decode(msgspec.json.encode(sent), type=Ok[int] | Err)
    assert isinstance(received, Err)
    error = received.to_exception()
    assert error.retry_after_seconds == 7
    response = ErrorResponder(retry_after_seconds=2).service_error(cast("Any", None), error)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"


def test_a_503_without_an_asked_wait_gets_the_gateways_own_retry_after() -> None:
    response = ErrorResponder(retry_after_seconds=2).service_error(
        cast("Any", None), ServiceError(ErrorCode.SERVICE_UNAVAILABLE)
    )
    assert response.headers["Retry-After"] == "2"
