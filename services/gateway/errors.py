"""Exception → envelope mapping for the gateway. Every failure a client can see passes through here.

Messages never carry internals: unexpected exceptions are logged with their trace (and the request id) and
answered with the registry's generic INTERNAL_ERROR message.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from services.gateway.envelope import ErrorEnvelope, error_response
from services.gateway.guards import RateLimited
from services.gateway.request_id import BodyTooSlow
from shared.errors import ErrorCode, ServiceError

log = logging.getLogger("caseflow.gateway")

# Litestar raises HTTPExceptions for routing and body problems; their status picks our code.
_CODE_FOR_STATUS: Final = {
    400: ErrorCode.INVALID_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.SERVICE_UNAVAILABLE,
}


class ErrorResponder:
    def __init__(self, *, retry_after_seconds: int) -> None:
        self.retry_after_seconds = retry_after_seconds

    def _retry_headers(self, code: ErrorCode, asked_seconds: int | None = None) -> dict[str, str] | None:
        """Retry-After for a 503: the wait the service asked for (a handler at its bound), else ours; for any
        other code, the wait its service asked for (409 IDEMPOTENCY_KEY_IN_USE: until the key may be taken over)."""
        if code is ErrorCode.SERVICE_UNAVAILABLE:
            return {"Retry-After": str(asked_seconds or self.retry_after_seconds)}
        if asked_seconds:
            return {"Retry-After": str(asked_seconds)}
        return None

    def service_error(self, _: Request[Any, Any, Any], exc: ServiceError) -> Response[ErrorEnvelope]:
        if exc.code is ErrorCode.INTERNAL_ERROR:
            log.error("service reported an internal error", extra={"error": exc.message})
        return error_response(
            exc.code, exc.message, details=exc.details, headers=self._retry_headers(exc.code, exc.retry_after_seconds)
        )

    def rate_limited(self, _: Request[Any, Any, Any], exc: RateLimited) -> Response[ErrorEnvelope]:
        return error_response(ErrorCode.RATE_LIMITED, headers=exc.decision.headers())

    def body_too_slow(self, _: Request[Any, Any, Any], __: BodyTooSlow) -> Response[ErrorEnvelope]:
        return error_response(ErrorCode.REQUEST_TIMEOUT, headers={"connection": "close"})

    def validation_error(self, _: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorEnvelope]:
        return error_response(ErrorCode.INVALID_REQUEST, describe_validation_error(exc))

    def http_error(self, request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorEnvelope]:
        code = _CODE_FOR_STATUS.get(exc.status_code)
        if code is None:
            return self.unexpected(request, exc)
        headers = dict(exc.headers or {})
        headers.update(self._retry_headers(code) or {})
        # Litestar's details are its own phrasing; clients get the registry's message for the code.
        return error_response(code, headers=headers or None)

    def unexpected(self, request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorEnvelope]:
        log.error(
            "unhandled exception",
            exc_info=exc,
            extra={"method": request.method, "path": request.url.path},
        )
        return error_response(ErrorCode.INTERNAL_ERROR)

    def handlers(self) -> ExceptionHandlersMap:
        return {
            ServiceError: self.service_error,
            RateLimited: self.rate_limited,
            BodyTooSlow: self.body_too_slow,
            ValidationException: self.validation_error,
            HTTPException: self.http_error,
            Exception: self.unexpected,
        }


_MISSING_FIELD = re.compile(r"^Object missing required field `([^`]+)`")
# Litestar names invalid parameters by their Python name; clients know them by their wire name.
_WIRE_NAMES: Final = {
    "idempotency_key": "Idempotency-Key",
    "client_reference_id": "clientReferenceId",
    "updated_after": "updatedAfter",
    "include_transcript": "includeTranscript",
    "case_id": "caseId",
    "attachment_id": "attachmentId",
    "event_id": "eventId",
}


def describe_validation_error(exc: ValidationException) -> str:
    """`field.path: problem` from Litestar/msgspec validation details (a missing field is named itself)."""
    extra = exc.extra
    if isinstance(extra, list) and extra:
        first = extra[0]
        if isinstance(first, dict):
            key = str(first.get("key") or "").removeprefix("$").removeprefix(".")
            key = _WIRE_NAMES.get(key, key)
            problem = str(first.get("message") or "is invalid")
            missing = _MISSING_FIELD.match(problem)
            if missing:
                key = f"{key}.{missing.group(1)}" if key else missing.group(1)
                problem = "is required"
            return f"{key}: {problem}" if key else problem
    return exc.detail or "The request is invalid."
