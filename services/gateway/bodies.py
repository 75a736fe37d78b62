"""Strict JSON bodies: `"maxAttempts": "3"` is a 400, as the contract says, not a silently converted 3.

Litestar decodes bodies leniently (strings are converted to numbers); this `before_request` hook decodes the
raw body strictly with msgspec first, naming the offending field path. It runs after the API-key guard and
before Litestar's own decoding, which then reuses the already-read body.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException

_PATH = re.compile(r" - at `\$\.?(.*)`$")


def strict_json_body(body_type: type[Any]) -> Callable[[Request[Any, Any, Any]], Awaitable[None]]:
    decoder = msgspec.json.Decoder(body_type)

    async def check_body(request: Request[Any, Any, Any]) -> None:
        media_type, _ = request.content_type
        if media_type != "application/json":
            raise ValidationException(
                "The request body must be JSON.",
                extra=[{"key": "", "message": "the request body must be sent as application/json"}],
            )
        try:
            decoder.decode(await request.body())
        except msgspec.ValidationError as exc:
            message = str(exc)
            match = _PATH.search(message)
            key = match.group(1) if match else ""
            raise ValidationException(
                "Invalid request body.", extra=[{"key": key, "message": _PATH.sub("", message)}]
            ) from None
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise ValidationException(
                "Invalid request body.", extra=[{"key": "", "message": "the request body is not valid JSON"}]
            ) from None

    return check_body
