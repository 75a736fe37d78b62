"""The HTTP envelope of every gateway response: `{"ok": true, "data": ...}` or `{"ok": false, "error": ...}`.

Services never build envelopes; they reply with data or a registry error, and the gateway wraps it here.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import Response

from shared.errors import ERROR_SPECS, ErrorCode


class ErrorBody(msgspec.Struct, frozen=True):
    code: ErrorCode
    message: str
    details: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class ErrorEnvelope(msgspec.Struct, frozen=True):
    ok: Literal[False]
    error: ErrorBody


class DataEnvelope[T](msgspec.Struct, frozen=True):
    ok: Literal[True]
    data: T


def ok[T](data: T) -> DataEnvelope[T]:
    return DataEnvelope(ok=True, data=data)


def error_response(
    code: ErrorCode,
    message: str | None = None,
    *,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[ErrorEnvelope]:
    spec = ERROR_SPECS[code]
    body = ErrorBody(
        code=code,
        message=message or spec.default_message,
        details=details if details is not None else msgspec.UNSET,
    )
    return Response(
        ErrorEnvelope(ok=False, error=body),
        status_code=spec.http_status,
        headers=headers,
        media_type="application/json",
    )


def error_body_bytes(code: ErrorCode, message: str | None = None) -> bytes:
    """The raw envelope, for the few places outside Litestar (the outermost ASGI guard)."""
    spec = ERROR_SPECS[code]
    body = ErrorBody(code=code, message=message or spec.default_message)
    return msgspec.json.encode(ErrorEnvelope(ok=False, error=body))
