"""Console sessions and CSRF tokens: what the `/console` cookie holds and how a form proves it came from the page.

The design decision: a session is a Fernet token (AES-CBC + HMAC-SHA256, from `cryptography`) sealed with
CONSOLE_SESSION_KEYS, holding the API key the person signed in with and the session's CSRF token. It is
encrypted, so the key never travels in clear; signed, so it cannot be forged or edited; and self-contained, so
every gateway replica holding the keys reads every session with no shared store. The API key inside is verified
again on every request through the same `authenticate` as the JSON API, so revoking the key ends its console
sessions too (within the key cache's eviction broadcast), and throttling is the key's own. The price of no store:
sign-out expires the cookie in the browser but cannot revoke a copy of it before CONSOLE_SESSION_SECONDS; revoking
the key (or dropping a CONSOLE_SESSION_KEYS key) can (docs/api.md).

CSRF is a synchronizer token: the value sealed in the session must come back in every form's `csrf` field.
Before sign-in there is no session, so the sign-in form is guarded by a double-submit cookie instead.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any, Final

import msgspec
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from litestar import Request
from litestar.datastructures import Cookie

from services.gateway.context import GatewayContext

SESSION_COOKIE: Final = "caseflow_console"
# The sign-in form's double-submit token, before any session exists.
SIGN_IN_COOKIE: Final = "caseflow_console_sign_in"
COOKIE_PATH: Final = "/console"
CSRF_FIELD: Final = "csrf"
FORWARDED_PROTO: Final = "x-forwarded-proto"


class ConsoleSession(msgspec.Struct, frozen=True):
    api_key: str
    csrf: str


def new_token() -> str:
    return secrets.token_urlsafe(32)


class SessionSealer:
    """Seals sessions with the first key of the ring and opens them with any, within their lifetime."""

    def __init__(self, keys: list[str], *, lifetime_seconds: int) -> None:
        self._ring = MultiFernet([Fernet(key.encode()) for key in keys])
        self.lifetime_seconds = lifetime_seconds

    def seal(self, session: ConsoleSession) -> str:
        return self._ring.encrypt(msgspec.json.encode(session)).decode("ascii")

    def open(self, token: str | None) -> ConsoleSession | None:
        """The session, or None when the token is missing, forged, sealed with an unknown key, or expired."""
        if not token:
            return None
        try:
            raw = self._ring.decrypt(token.encode("ascii"), ttl=self.lifetime_seconds)
            return msgspec.json.decode(raw, type=ConsoleSession)
        except (InvalidToken, UnicodeEncodeError, msgspec.ValidationError, msgspec.DecodeError):
            return None


def tokens_match(sent: str | None, expected: str) -> bool:
    return bool(sent) and hmac.compare_digest(str(sent).encode(), expected.encode())


def is_https(request: Request[Any, Any, Any], gateway: GatewayContext) -> bool:
    """Whether the browser reached us over https: directly, or through a TRUSTED_PROXIES proxy that says so."""
    if request.url.scheme == "https":
        return True
    peer = request.client.host if request.client else None
    forwarded = request.headers.get(FORWARDED_PROTO, "")
    if peer is None or peer not in gateway.trusted_proxies:
        return False
    return forwarded.split(",")[0].strip().lower() == "https"


def console_cookie(name: str, value: str, *, secure: bool, max_age: int | None) -> Cookie:
    """HttpOnly (no script reads it) and SameSite=Strict (no other site's page sends it), scoped to /console."""
    return Cookie(
        key=name,
        value=value,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=secure,
        max_age=max_age,
    )


def expired_cookie(name: str, *, secure: bool) -> Cookie:
    return Cookie(
        key=name, value="", path=COOKIE_PATH, httponly=True, samesite="strict", secure=secure, max_age=0, expires=0
    )
