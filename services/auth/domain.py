"""Auth's pure rules: API key material, the keyed hash a key is stored as, webhook secrets and key states.

Design decision: an API key is never stored, only HMAC-SHA256(KEY_HASH_SECRET, key). The keyed hash means a
copy of the database alone cannot even confirm a guessed key, and since a key carries 256 random bits the
hash needs no salt and can itself be the unique lookup index. The `cf_live_` prefix lets people and secret
scanners recognise a Caseflow key; nothing of the key, prefix included, is stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from enum import StrEnum
from typing import Final

from shared.errors import ErrorCode, ServiceError

API_KEY_PREFIX: Final = "cf_live_"
_API_KEY_RANDOM_BYTES: Final = 32
# The longest key we issue is well under this; anything longer is rejected without a database lookup.
MAX_API_KEY_LENGTH: Final = 128
WEBHOOK_SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (Standard Webhooks' marker, not a secret)
# Standard Webhooks asks for 24 to 64 random bytes.
_WEBHOOK_SECRET_BYTES: Final = 32


class KeyStatus(StrEnum):
    ACTIVE = "active"
    # Switched off by an operator and can be switched on again (the gateway answers 403).
    INACTIVE = "inactive"
    # Final: the key no longer exists as far as clients can tell (401), and can never be activated again.
    REVOKED = "revoked"


# For each target status, the statuses a key may move from. Moving to the status it already has is allowed
# (a repeated command is harmless); nothing leaves REVOKED.
_KEY_STATUS_SOURCES: Final[dict[KeyStatus, frozenset[KeyStatus]]] = {
    KeyStatus.ACTIVE: frozenset({KeyStatus.ACTIVE, KeyStatus.INACTIVE}),
    KeyStatus.INACTIVE: frozenset({KeyStatus.ACTIVE, KeyStatus.INACTIVE}),
    KeyStatus.REVOKED: frozenset({KeyStatus.ACTIVE, KeyStatus.INACTIVE, KeyStatus.REVOKED}),
}


def new_api_key() -> str:
    """A fresh key, shown to the operator once."""
    return API_KEY_PREFIX + secrets.token_urlsafe(_API_KEY_RANDOM_BYTES)


def hash_api_key(api_key: str, *, secret: str) -> str:
    """The only form in which a key is stored and looked up."""
    return hmac.new(secret.encode(), api_key.encode(), hashlib.sha256).hexdigest()


def is_well_formed_api_key(candidate: str) -> bool:
    """Cheap filter so that garbage in the x-api-key header never reaches the database."""
    return candidate.startswith(API_KEY_PREFIX) and len(candidate) <= MAX_API_KEY_LENGTH


def new_client_id() -> str:
    return f"cli_{secrets.token_hex(12)}"


def new_key_id() -> str:
    """The public id of a key: safe to print, log and pass to the admin CLI."""
    return f"key_{secrets.token_hex(12)}"


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` followed by base64 random bytes."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_WEBHOOK_SECRET_BYTES)).decode()


def key_status_sources(target: KeyStatus) -> frozenset[KeyStatus]:
    """The statuses from which a key may be set to `target`."""
    return _KEY_STATUS_SOURCES[target]


def require_usable_key(status: KeyStatus) -> None:
    """A revoked key is treated as unknown (401); an inactive one is known but refused (403)."""
    if status is KeyStatus.REVOKED:
        raise ServiceError(ErrorCode.UNAUTHORIZED)
    if status is KeyStatus.INACTIVE:
        raise ServiceError(ErrorCode.FORBIDDEN, "This API key is inactive.")
