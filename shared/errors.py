"""The one error registry: every error code a client can see, its HTTP status and default message.

Services never pick HTTP statuses: they raise or reply with a code, and the gateway maps the code to a
status through `ERROR_SPECS`. Adding a code means adding it here, nowhere else.

Each error also has a failure kind (shared.failures), so a service that asks another can tell "retry later"
from "this request will never succeed" without knowing codes: the kind travels in the reply (`Err.kind`); when a
reply does not say, it is the code's default here (`default_kind`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from shared.failures import FailureKind


class ErrorCode(StrEnum):
    INVALID_REQUEST = "INVALID_REQUEST"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    CASE_NOT_FOUND = "CASE_NOT_FOUND"
    ATTACHMENT_NOT_FOUND = "ATTACHMENT_NOT_FOUND"
    WEBHOOK_EVENT_NOT_FOUND = "WEBHOOK_EVENT_NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    CASE_NOT_WAITING_FOR_INPUT = "CASE_NOT_WAITING_FOR_INPUT"
    INPUT_REQUEST_NOT_PENDING = "INPUT_REQUEST_NOT_PENDING"
    INPUT_REQUEST_MISMATCH = "INPUT_REQUEST_MISMATCH"
    CASE_NOT_CANCELLABLE = "CASE_NOT_CANCELLABLE"
    IDEMPOTENCY_KEY_IN_USE = "IDEMPOTENCY_KEY_IN_USE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    IDEMPOTENCY_KEY_MISMATCH = "IDEMPOTENCY_KEY_MISMATCH"
    USAGE_LIMIT_REACHED = "USAGE_LIMIT_REACHED"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    http_status: int
    default_message: str
    # None: the status decides (4xx terminal); INTERNAL_ERROR has no kind (a bug, neither retryable nor final).
    kind: FailureKind | None = None


ERROR_SPECS: Final[dict[ErrorCode, ErrorSpec]] = {
    ErrorCode.INVALID_REQUEST: ErrorSpec(400, "The request is invalid."),
    ErrorCode.UNAUTHORIZED: ErrorSpec(401, "A valid API key is required in the x-api-key header."),
    ErrorCode.FORBIDDEN: ErrorSpec(403, "You are not allowed to access this resource."),
    ErrorCode.NOT_FOUND: ErrorSpec(404, "No such route."),
    ErrorCode.CASE_NOT_FOUND: ErrorSpec(404, "Case not found."),
    ErrorCode.ATTACHMENT_NOT_FOUND: ErrorSpec(404, "Attachment not found on this case."),
    ErrorCode.WEBHOOK_EVENT_NOT_FOUND: ErrorSpec(404, "No webhook event with that id on this case."),
    ErrorCode.METHOD_NOT_ALLOWED: ErrorSpec(405, "This route does not accept that method."),
    ErrorCode.CASE_NOT_WAITING_FOR_INPUT: ErrorSpec(409, "The case is not waiting for input."),
    ErrorCode.INPUT_REQUEST_NOT_PENDING: ErrorSpec(409, "The input request is no longer pending."),
    ErrorCode.INPUT_REQUEST_MISMATCH: ErrorSpec(409, "inputRequestId does not match the active input request."),
    ErrorCode.CASE_NOT_CANCELLABLE: ErrorSpec(409, "The case has finished and cannot be cancelled."),
    ErrorCode.IDEMPOTENCY_KEY_IN_USE: ErrorSpec(
        409, "A request with this Idempotency-Key is still in progress.", "transient"
    ),
    ErrorCode.PAYLOAD_TOO_LARGE: ErrorSpec(413, "The request body is too large."),
    ErrorCode.REQUEST_TIMEOUT: ErrorSpec(408, "The request did not arrive in time."),
    ErrorCode.IDEMPOTENCY_KEY_MISMATCH: ErrorSpec(
        422, "This Idempotency-Key was already used with a different request body."
    ),
    ErrorCode.USAGE_LIMIT_REACHED: ErrorSpec(429, "The plan's case limit for this month has been reached."),
    ErrorCode.RATE_LIMITED: ErrorSpec(429, "Too many requests; retry after the time in Retry-After.", "transient"),
    ErrorCode.INTERNAL_ERROR: ErrorSpec(500, "An internal error occurred."),
    ErrorCode.SERVICE_UNAVAILABLE: ErrorSpec(
        503, "The service is temporarily unavailable; retry shortly.", "transient"
    ),
}


def http_status_of(code: ErrorCode) -> int:
    return ERROR_SPECS[code].http_status


def default_kind(code: ErrorCode) -> FailureKind | None:
    """The failure kind of a code when nobody said otherwise: a client error is terminal, 503 and 429 transient,
    INTERNAL_ERROR none (a bug: counted toward parking, never turned into a final answer)."""
    spec = ERROR_SPECS[code]
    if spec.kind is not None:
        return spec.kind
    return "terminal" if 400 <= spec.http_status < 500 else None


class ServiceError(Exception):
    """A failure with a client-visible code: raised in services, carried in replies, mapped by the gateway."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        details: dict[str, object] | None = None,
        kind: FailureKind | None = None,
        retry_after_seconds: int | None = None,
    ) -> None:
        self.code = code
        self.message = message or ERROR_SPECS[code].default_message
        # Extra machine-readable context for the client (never internals).
        self.details = details
        # Whether retrying can help (shared.failures); the code's default unless the raiser knows better.
        self.kind: FailureKind | None = kind or default_kind(code)
        # The wait the failing service asked for (None: the gateway's RETRY_AFTER_SECONDS for a 503).
        self.retry_after_seconds = retry_after_seconds
        super().__init__(f"{code}: {self.message}")
