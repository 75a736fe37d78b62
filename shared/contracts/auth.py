"""Auth service contracts: API-key verification, client webhook secrets and key-change broadcasts."""

from __future__ import annotations

from typing import Final

from shared.contracts.base import Contract

VERIFY_KEY: Final = "auth.rpc.verify_key"
WEBHOOK_SECRET: Final = "auth.rpc.webhook_secret"  # noqa: S105 (a subject name)
# Core NATS broadcast (every gateway, no queue group): evict cached identities of this client or key.
KEYS_CHANGED: Final = "auth.evt.keys_changed"


class VerifyKey(Contract, frozen=True):
    """Replies Ok[KeyIdentity], or Err UNAUTHORIZED (no key with that hash, or the key is revoked, or its client
    no longer exists) / FORBIDDEN (key deactivated)."""

    api_key: str


class KeyIdentity(Contract, frozen=True):
    client_id: str
    key_id: str
    plan: str


class GetWebhookSecret(Contract, frozen=True):
    """Replies Ok[WebhookSecret], or Err UNAUTHORIZED when no such client exists (nothing may be signed for it)."""

    client_id: str


class WebhookSecret(Contract, frozen=True):
    """The client's current `whsec_...` signing secret (Standard Webhooks format)."""

    client_id: str
    secret: str


class KeysChanged(Contract, frozen=True):
    """A key was revoked, deactivated or activated, or the client's plan changed."""

    client_id: str
    key_id: str | None = None
