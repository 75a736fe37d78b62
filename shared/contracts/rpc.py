"""The shape of every request/reply answer: `Ok[T]` carrying data, or `Err` carrying a registry code.

Replies are a tagged union (`{"type": "ok", "data": ...}` / `{"type": "err", "code": ..., "message": ...}`)
so the gateway decodes them in one call and never guesses from the payload. An `Err` also carries the failure
`kind` (transient, misconfigured, terminal; shared.failures) when the service knows it, so a caller retries or
gives up without reading codes; absent, it is the code's default (`shared.errors.default_kind`).
"""

from __future__ import annotations

import msgspec

from shared.errors import ErrorCode, ServiceError
from shared.failures import FailureKind


class Ok[T](msgspec.Struct, frozen=True, tag="ok"):
    data: T


class Err(msgspec.Struct, frozen=True, tag="err"):
    code: ErrorCode
    message: str
    kind: FailureKind | None = None
    # How long the asker should wait before retrying (a handler at its in-flight bound says so); the gateway
    # sends it as the HTTP Retry-After.
    retry_after_seconds: int | None = None

    @classmethod
    def of(cls, error: ServiceError) -> Err:
        return cls(
            code=error.code, message=error.message, kind=error.kind, retry_after_seconds=error.retry_after_seconds
        )

    def to_exception(self) -> ServiceError:
        return ServiceError(self.code, self.message, kind=self.kind, retry_after_seconds=self.retry_after_seconds)


class Empty(msgspec.Struct, frozen=True):
    """A request or reply with no fields."""
