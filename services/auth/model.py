"""The auth service's records: clients and their API keys, as stored in `clients` and `api_keys`.

Design decision: a key is never stored, only its keyed hash (`key_hash`); a client's webhook secret is held
here in plaintext and encrypted only in its document (services.auth.secrets).
"""

from __future__ import annotations

import msgspec

from services.auth.domain import KeyStatus
from shared.records import Record


class Client(Record, frozen=True):
    """A client. `webhook_secret` is the plaintext `whsec_` secret here; its document holds it encrypted
    (services.auth.secrets), because the webhook service must sign with the secret itself."""

    client_id: str = msgspec.field(name="_id")
    name: str
    plan: str
    webhook_secret: str
    created_at: int  # Unix ms
    updated_at: int


class ApiKey(Record, frozen=True):
    """An `api_keys` document: the key itself is never stored, only its keyed hash."""

    key_id: str = msgspec.field(name="_id")
    client_id: str
    key_hash: str
    status: KeyStatus
    created_at: int
    updated_at: int
