"""OpenAPI helpers: every route documents each error status it can return, with the envelope schema."""

from __future__ import annotations

from collections import defaultdict
from typing import Final

from litestar.openapi import ResponseSpec

from services.gateway.envelope import ErrorEnvelope
from shared.errors import ERROR_SPECS, ErrorCode

# Errors any API-key route can return, whatever it does.
AUTHENTICATED: Final = (
    ErrorCode.INVALID_REQUEST,
    ErrorCode.UNAUTHORIZED,
    ErrorCode.FORBIDDEN,
    ErrorCode.RATE_LIMITED,
    ErrorCode.INTERNAL_ERROR,
    ErrorCode.SERVICE_UNAVAILABLE,
)


def error_responses(*codes: ErrorCode) -> dict[int, ResponseSpec]:
    """One response per HTTP status, describing which codes share it."""
    by_status: dict[int, list[ErrorCode]] = defaultdict(list)
    for code in dict.fromkeys(codes):
        by_status[ERROR_SPECS[code].http_status].append(code)
    return {
        status: ResponseSpec(
            data_container=ErrorEnvelope,
            description=" or ".join(f"`{code}`: {ERROR_SPECS[code].default_message}" for code in status_codes),
        )
        for status, status_codes in sorted(by_status.items())
    }
